"""Report figures as PNG bytes: confusion matrices, per-class F1 bars, video timelines
and label counts.

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


# One colour per class, the same in every figure (matplotlib's tab10 order).
_CLASS_COLOURS = ("#7f7f7f", "#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e",
                  "#e377c2")


def timeline_png(tracks: Dict, class_names: Sequence[str], title: str, max_tracks: int = 4) -> bytes:
    """PNG of a video's expressions over time: per track, the smoothed probabilities of
    each class as lines, and under them a strip of the predicted label.

    Args:
      tracks: track id -> (times in seconds [N], probabilities [N, C], labels [N]) in
        frame order; the ``max_tracks`` longest are drawn, longest first.
      class_names: the C class names.
      title: the figure's title (the video's name).
    """
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
    from matplotlib.colors import ListedColormap  # pylint: disable=import-outside-toplevel

    shown = sorted(tracks, key=lambda t: (-len(tracks[t][0]), t))[:max_tracks]
    colours = _CLASS_COLOURS[:len(class_names)]
    fig, axes = plt.subplots(2 * len(shown), 1, figsize=(10, 2.6 * len(shown)), dpi=100,
                             squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [4, 1] * len(shown)})
    for k, track in enumerate(shown):
        times, probs, labels = (np.asarray(a) for a in tracks[track])
        lines, strip = axes[2 * k, 0], axes[2 * k + 1, 0]
        for c, name in enumerate(class_names):
            lines.plot(times, probs[:, c], color=colours[c], label=name, linewidth=1.2)
        lines.set_ylim(0, 1)
        lines.set_ylabel("probability")
        lines.set_title(f"track {track} ({len(times)} frames)", fontsize=9, loc="left")
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
        strip.imshow(labels[None, :], aspect="auto", interpolation="nearest",
                     cmap=ListedColormap(colours), vmin=-0.5, vmax=len(class_names) - 0.5,
                     extent=(times[0] - step / 2, times[-1] + step / 2, 0, 1))
        strip.set_yticks([])
        strip.set_ylabel("label", rotation=0, ha="right", va="center")
    axes[0, 0].legend(ncol=len(class_names), fontsize=7, loc="upper center",
                      bbox_to_anchor=(0.5, 1.35), frameon=False)
    axes[-1, 0].set_xlabel("time (s)")
    if len(shown) < len(tracks):
        title = f"{title} (the {len(shown)} longest of {len(tracks)} tracks)"
    fig.suptitle(title, y=0.995, fontsize=10)
    fig.tight_layout()
    return _figure_bytes(fig)


def label_counts_png(counts: Sequence[int], class_names: Sequence[str], title: str) -> bytes:
    """PNG bar chart of how many faces got each label."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    x = np.arange(len(class_names))
    bars = ax.bar(x, counts, color=_CLASS_COLOURS[:len(class_names)])
    ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set_ylabel("faces")
    ax.set_title(title)
    fig.tight_layout()
    return _figure_bytes(fig)
