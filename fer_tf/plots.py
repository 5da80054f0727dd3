"""Report figures as PNG bytes: confusion matrices and per-class F1 bars.

Shared by evaluation (files) and training (TensorBoard images). matplotlib runs
with the Agg backend: no display on servers and CI.
"""

import io
from typing import Dict, Sequence

import numpy as np


def _figure_bytes(fig) -> bytes:
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def confusion_png(cm, class_names: Sequence[str], title: str) -> bytes:
    """PNG of a confusion matrix: row-normalised colours, counts and row shares written."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

    cm = np.asarray(cm, np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.5, 6), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _figure_bytes(fig)


def f1_bar_png(result: Dict) -> bytes:
    """PNG bar chart of per-class F1, raw and (if present) smoothed side by side."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

    names = result["class_names"]
    series = [("raw", result["raw"])]
    if "smoothed" in result:
        series.append((f"smoothed K={result['smooth_window']}", result["smoothed"]))
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for k, (label, s) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, [s["per_class_f1"][n] for n in names], width,
               label=f"{label} (macro F1 {s['f1']:.3f})")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.legend()
    fig.tight_layout()
    return _figure_bytes(fig)
