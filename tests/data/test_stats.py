"""Class statistics: counts, the paper's weights count(max)/count(c), JSON, plot, CLI."""

import json
import subprocess
import sys

import pytest

import dataset_trees
from fer_tf.data import stats

REPO = dataset_trees.pathlib.Path(__file__).resolve().parents[2]


def test_json_numbers_on_generated_tree(tmp_path):
    root = dataset_trees.write_affwild2_2020(tmp_path / "aff")
    out = tmp_path / "stats.json"
    result = stats.run("affwild2", root, "train", output_json=out, plot=tmp_path / "p.png")
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    # Hand counts of the tree (see test_affwild2): N 2, A 1, D 0, F 1, H 4, Sa 1, Su 2.
    assert written["total"] == 11
    assert written["counts"] == {"Neutral": 2, "Anger": 1, "Disgust": 0, "Fear": 1,
                                 "Happiness": 4, "Sadness": 1, "Surprise": 2}
    assert written["class_weights"] == {"Neutral": 2.0, "Anger": 4.0, "Disgust": None,
                                        "Fear": 4.0, "Happiness": 1.0, "Sadness": 4.0,
                                        "Surprise": 2.0}
    assert written["fractions"]["Happiness"] == pytest.approx(4 / 11, abs=1e-12)
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # A second run replaces the outputs only when asked; an input is never an output.
    with pytest.raises(FileExistsError, match="--output_json=.*exists; pass --overwrite"):
        stats.run("affwild2", root, "train", output_json=out)
    stats.run("affwild2", root, "train", output_json=out, plot=tmp_path / "p.png",
              overwrite=True)
    annotation = next(root.rglob("*.txt"))
    with pytest.raises(ValueError, match="--plot=.*is also an input"):
        stats.run("affwild2", root, "train", plot=root, overwrite=True)
    assert annotation.read_bytes()  # untouched


def test_paper_weights_from_paper_counts():
    # Aff-Wild2 2020 train counts (docs/datasets.md): the formula gives Neutral 1 and e.g.
    # Fear 583277 / 11155 = 52.29 (exact arithmetic, tolerance 1e-9).
    counts = [583277, 23704, 12588, 11155, 148100, 100174, 38837]
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    images = stats.examples.LabelledImages([""] * len(labels), labels)
    weights = stats.class_statistics(images)["class_weights"]
    assert weights["Neutral"] == 1.0
    assert weights["Fear"] == pytest.approx(583277 / 11155, rel=1e-9)


def test_table_lists_every_class(tmp_path):
    root = dataset_trees.write_affwild2_2020(tmp_path)
    table = stats.format_table(stats.class_statistics(
        stats.sources.load_source("affwild2", root, "validation"), "affwild2", "validation"))
    assert "affwild2 validation: 3 images" in table
    assert table.count("\n") == 1 + 7
    assert "Sadness" in table and "-" in table.splitlines()[4]  # Disgust: no weight


def test_command_line(tmp_path):
    root = dataset_trees.write_expw(tmp_path / "expw")
    out = tmp_path / "s.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fer_tf.data.stats", "--dataset=expw", f"--data_dir={root}",
         "--split=train", f"--output_json={out}", "--min_confidence=0.5",
         f"--cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "expw train: 7 images" in proc.stdout
    assert json.loads(out.read_text())["counts"]["Neutral"] == 1
