r"""Per-class counts, the paper's class weights and a distribution plot of a dataset split.

Usage::

    python -m fer_tf.data.stats --dataset=affwild2+expw --data_dir=/data/aff,/data/expw \
        --split=train --output_json=stats.json --plot=classes.png

Class weights follow the paper: count(majority class) / count(class), from the counts
of the split itself (the paper's Figures 1 and 2 show these distributions).
"""

from typing import Optional

from absl import app, flags

from fer_tf import atomic, cli
from fer_tf.data import examples, sources

FLAGS = flags.FLAGS


def class_statistics(images: examples.LabelledImages, name: str = "", split: str = "") -> dict:
    """Counts, fractions and class weights count(max)/count(c) per class.

    Classes without any image get weight None (no finite weight exists).
    """
    counts = [int(c) for c in images.class_counts()]
    total = sum(counts)
    largest = max(counts) if counts else 0
    return {
        "dataset": name,
        "split": split,
        "total": total,
        "class_names": list(images.class_names),
        "counts": dict(zip(images.class_names, counts)),
        "fractions": {c: (n / total if total else 0.0) for c, n in zip(images.class_names, counts)},
        "class_weights": {c: (largest / n if n else None) for c, n in zip(images.class_names, counts)},
    }


def format_table(stats: dict) -> str:
    """A plain-text table: class, count, percentage, class weight."""
    rows = [f"{stats['dataset']} {stats['split']}: {stats['total']} images",
            f"{'class':<12}{'count':>10}{'share':>9}{'weight':>10}"]
    for c in stats["class_names"]:
        weight = stats["class_weights"][c]
        rows.append(f"{c:<12}{stats['counts'][c]:>10}{100 * stats['fractions'][c]:>8.2f}%"
                    f"{(f'{weight:.2f}' if weight is not None else '-'):>10}")
    return "\n".join(rows)


def write_json(stats: dict, path) -> None:
    """Writes the statistics atomically."""
    atomic.write_json(path, stats)


def plot_distribution(stats: dict, path) -> None:
    """Bar chart of images per class (linear scale, counts on the bars), written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    from matplotlib import pyplot as plt

    names = stats["class_names"]
    counts = [stats["counts"][c] for c in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
    bars = ax.bar(names, counts, color="tab:blue")
    ax.bar_label(bars, labels=[f"{n:,}" for n in counts], fontsize=8)
    ax.set_ylabel("images")
    ax.set_title(f"{stats['dataset']} {stats['split']}: {stats['total']:,} images")
    fig.tight_layout()
    with atomic.output_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def run(dataset: str, data_dir, split: str, output_json: Optional[str] = None,
        plot: Optional[str] = None, overwrite: bool = False, **options) -> dict:
    """Reads the split, prints the table, writes the optional JSON and plot.

    Both outputs are checked first (`fer_tf.atomic.check_output`): never the dataset's
    own files; an existing file is replaced only with ``overwrite``.
    """
    inputs = str(data_dir).split(",")
    for path, flag in ((output_json, "--output_json"), (plot, "--plot")):
        if path:
            atomic.check_output(path, inputs, overwrite, flag=flag)
    images = sources.load_source(dataset, data_dir, split, **options)
    stats = class_statistics(images, dataset, split)
    print(format_table(stats))
    if output_json:
        write_json(stats, output_json)
    if plot:
        plot_distribution(stats, plot)
    return stats


def define_flags():
    """Flags live here, defined only when run as a program (library code never reads them)."""
    flags.DEFINE_string("dataset", None, "affwild2, expw, fer2013, image_folder, demo or a '+' merge.")
    flags.DEFINE_string("data_dir", None, "Dataset root (comma-separated roots for a merge).")
    flags.DEFINE_string("split", "train", "train, validation or test.")
    flags.DEFINE_string("output_json", None, "Write the statistics here.")
    flags.DEFINE_string("plot", None, "Write a bar plot (PNG) here.")
    flags.DEFINE_bool("overwrite", False, "Replace existing --output_json / --plot files.")
    flags.DEFINE_bool("keep_other", None, "affwild2/demo: keep the 'Other' class.")
    flags.DEFINE_string("cache_dir", None, "expw: crop cache (default <data_dir>/fer_tf_crops).")
    flags.DEFINE_float("margin", None, "expw: box margin.")
    flags.DEFINE_float("min_confidence", None, "expw: minimum box confidence.")
    flags.mark_flags_as_required(["dataset", "data_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Pass only the reader options the user gave: others do not apply to every dataset.
    options = {name: FLAGS[name].value
               for name in ("keep_other", "cache_dir", "margin", "min_confidence")
               if FLAGS[name].value is not None}
    run(FLAGS.dataset, FLAGS.data_dir, FLAGS.split, FLAGS.output_json, FLAGS.plot,
        FLAGS.overwrite, **options)


if __name__ == "__main__":
    define_flags()
    cli.run(main, "fer_tf.data.stats")
