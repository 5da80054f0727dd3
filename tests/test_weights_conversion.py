"""Converting the VGGFace2 releases: exact parity with PyTorch, strict errors, atomic output.

Files are written in each release's exact on-disk format from a randomly initialised
PyTorch reference with non-trivial BatchNorm statistics. Tolerance: relative error
max|keras - torch| / max|torch| <= 1e-5 for every stage (float32; measured ~2e-6).
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is needed to build reference checkpoints")

from fer_tf import senet  # noqa: E402
from fer_tf.preprocessing import VGGFACE2_MEAN_BGR  # noqa: E402
from weights_conversion import checkpoints, convert, torch_senet, verify  # noqa: E402

TOLERANCE = 1e-5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference(blocks=(3, 4, 6, 3), width=64, classes=8631, seed=0):
    torch.manual_seed(seed)
    model = torch_senet.SENet(blocks, width, classes)
    torch_senet.randomize_batchnorm(model, torch.Generator().manual_seed(seed))
    return model.eval()


def _run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "weights_conversion", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def full_reference(tmp_path_factory):
    """SENet-50 with random weights, written as both releases and converted by the CLI."""
    root = tmp_path_factory.mktemp("releases")
    model = _reference()
    arrays = checkpoints.torch_state_to_arrays(model)
    files = {"pkl": root / "senet50_ft_weight.pkl", "dag": root / "senet50_ft_dag.pth"}
    checkpoints.write_pkl(arrays, files["pkl"])
    checkpoints.write_dag(arrays, files["dag"])
    converted = {}
    for fmt, path in files.items():
        dst = root / f"{fmt}.weights.h5"
        result = _run_cli("--src", str(path), "--dst", str(dst))
        assert result.returncode == 0, result.stderr[-3000:]
        converted[fmt] = dst
    return model, arrays, files, converted


def _random_batch(size=224, batch=2, seed=1):
    rgb = np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    return rgb[..., ::-1] - np.asarray(VGGFACE2_MEAN_BGR, np.float32)  # project convention


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pkl", "dag"])
def test_converted_release_gives_pytorch_outputs_per_stage(full_reference, fmt):
    model, _, _, converted = full_reference
    keras_model = senet.se_resnet50(weights=str(converted[fmt]))
    x = _random_batch()
    # The torch reference was built in the pkl convention (BGR); the dag file holds the
    # same network with an RGB conv1, so after conversion both must agree on BGR input.
    with torch.no_grad():
        expected = model.stages(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    actual = verify.keras_stage_model(keras_model).predict(x, verbose=0)
    for stage in ("stem", "layer1", "layer2", "layer3", "layer4", "pooled", "logits"):
        ref = expected[stage].numpy()
        ref = ref.transpose(0, 2, 3, 1) if ref.ndim == 4 else ref
        error = verify.relative_error(actual[stage], ref)
        assert error <= TOLERANCE, f"{fmt}: stage {stage} relative error {error:.2e}"
    # Different images must give different logits (no batch mixing, no constant output).
    assert verify.relative_error(actual["logits"][0], actual["logits"][1]) > 1e-2


@pytest.mark.slow
def test_metadata_and_parameter_count(full_reference):
    _, arrays, files, converted = full_reference
    meta = json.loads(open(senet.metadata_path(str(converted["pkl"]))).read())
    assert meta["format"] == "pkl" and meta["classes"] == 8631
    assert meta["source_sha256"] == checkpoints.sha256(files["pkl"])
    assert "BGR" in meta["input_convention"]
    keras_model = senet.se_resnet50(weights=str(converted["pkl"]))
    keras_values = sum(int(np.prod(w.shape)) for w in keras_model.weights)
    assert keras_values == sum(a.size for a in arrays.values()) == meta["num_values"]
    dag_meta = json.loads(open(senet.metadata_path(str(converted["dag"]))).read())
    assert dag_meta["format"] == "dag"


@pytest.mark.slow
def test_save_reload_same_outputs_and_headless_load(full_reference, tmp_path):
    _, _, _, converted = full_reference
    model = senet.se_resnet50(weights=str(converted["pkl"]))
    x = _random_batch(batch=2, seed=3)
    path = tmp_path / "again.weights.h5"
    model.save_weights(str(path))
    reloaded = senet.se_resnet50(weights=str(converted["pkl"]))
    reloaded.load_weights(str(path))
    np.testing.assert_array_equal(model.predict(x, verbose=0), reloaded.predict(x, verbose=0))
    # Without the top, the backbone gives the pooled feature of the same network.
    features = senet.se_resnet50(include_top=False, weights=str(converted["pkl"])).predict(x, verbose=0)
    pooled = verify.keras_stage_model(model).predict(x, verbose=0)["pooled"]
    np.testing.assert_allclose(features, pooled, rtol=0, atol=1e-6 * np.abs(pooled).max())


def test_pkl_needs_latin1_like_the_release(tmp_path):
    arrays = checkpoints.torch_state_to_arrays(_reference((1,), 8, 3))
    path = tmp_path / "w.pkl"
    checkpoints.write_pkl(arrays, path)
    with pytest.raises(UnicodeDecodeError):
        pickle.load(open(path, "rb"))
    loaded = pickle.load(open(path, "rb"), encoding="latin1")
    assert set(loaded) == set(arrays)
    np.testing.assert_array_equal(loaded["layer1.0.conv4.bias"], arrays["layer1.0.conv4.bias"])


def test_small_variant_and_ferplus_style_dag_with_verify(tmp_path):
    """A dag file with an 8-way 1x1-conv classifier (like senet50_ferplus_dag) verifies."""
    model = _reference((1, 1), 16, 8, seed=5)
    arrays = checkpoints.torch_state_to_arrays(model)
    src = tmp_path / "senet_ferplus_dag.pth"
    checkpoints.write_dag(arrays, src)
    dag = torch.load(src)
    assert dag["classifier.weight"].shape == (8, 128, 1, 1)
    assert "conv2_1_1x1_reduce.weight" in dag and "conv1_7x7_s2_bn.running_var" in dag
    meta = convert.convert(src, tmp_path / "fp.weights.h5", verify=True)
    assert meta["classes"] == 8 and meta["blocks"] == [1, 1]
    assert max(meta["verification_relative_error"].values()) <= TOLERANCE
    # An existing output is replaced only with overwrite; the source never is.
    written = (tmp_path / "fp.weights.h5").read_bytes()
    with pytest.raises(FileExistsError, match="--dst=.*fp.weights.h5 exists; pass --overwrite"):
        convert.convert(src, tmp_path / "fp.weights.h5")
    assert convert.convert(src, tmp_path / "fp.weights.h5", overwrite=True)["classes"] == 8
    assert (tmp_path / "fp.weights.h5").read_bytes()[:8] == written[:8]


def _small_pkl(tmp_path, mutate):
    arrays = checkpoints.torch_state_to_arrays(_reference((1, 1), 8, 3))
    mutate(arrays)
    src = tmp_path / "bad.pkl"
    checkpoints.write_pkl(arrays, src)
    return src


def test_every_mismatch_is_listed_in_one_error_and_nothing_is_written(tmp_path):
    def mutate(a):
        del a["layer1.0.bn2.running_var"]
        a["layer1.0.extra.weight"] = np.zeros(3, np.float32)
        a["layer2.0.conv5.bias"] = np.zeros(7, np.float32)

    dst = tmp_path / "out.weights.h5"
    with pytest.raises(convert.ConversionError) as info:
        convert.convert(_small_pkl(tmp_path, mutate), dst)
    message = str(info.value)
    assert "1 missing" in message and "layer1.0.bn2.running_var" in message
    assert "1 unused" in message and "layer1.0.extra.weight" in message
    assert "1 mis-shaped" in message and "layer2.0.conv5.bias: source (7,)" in message
    assert "expects (64,)" in message
    assert os.listdir(tmp_path) == ["bad.pkl"]


@pytest.mark.parametrize(
    "name,mutate,expected",
    [
        ("missing", lambda a: a.pop("layer2.0.downsample.1.weight"), "missing"),
        ("extra", lambda a: a.update({"fc.extra": np.ones(2, np.float32)}), "unused"),
        ("shape", lambda a: a.update({"conv1.weight": np.ones((8, 3, 5, 5), np.float32)}), "mis-shaped"),
    ],
)
def test_cli_reports_mismatch_and_leaves_no_output(tmp_path, name, mutate, expected):
    dst = tmp_path / "out.weights.h5"
    result = _run_cli("--src", str(_small_pkl(tmp_path, mutate)), "--dst", str(dst))
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-2000:]
    assert not dst.exists() and not os.path.exists(senet.metadata_path(str(dst)))
    assert [p for p in os.listdir(tmp_path) if p != "bad.pkl"] == []


@pytest.mark.parametrize(
    "content",
    [b"definitely not a checkpoint\n", pickle.dumps([1, 2, 3], protocol=2),
     pickle.dumps({"a": np.zeros(2)}, protocol=2), b"\x80\x02truncated"],
)
def test_non_checkpoint_files_are_rejected_clearly(tmp_path, content):
    src = tmp_path / "weights.pkl"
    src.write_bytes(content)
    dst = tmp_path / "out.weights.h5"
    with pytest.raises(checkpoints.NotACheckpointError, match="weights.pkl"):
        convert.convert(src, dst)
    assert not dst.exists()


def test_truncated_torch_save_is_called_truncated(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, whole)
    cut = tmp_path / "senet50_ft_dag.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(checkpoints.NotACheckpointError,
                       match="senet50_ft_dag.pth: a truncated or damaged torch.save"):
        convert.convert(cut, tmp_path / "out.weights.h5")


def test_missing_source_and_bad_destination(tmp_path):
    with pytest.raises(FileNotFoundError, match="senet50_ft_weight.pkl"):
        convert.convert(tmp_path / "absent.pkl", tmp_path / "o.weights.h5")
    with pytest.raises(ValueError, match=".weights.h5"):
        convert.convert(tmp_path / "absent.pkl", tmp_path / "o.h5")


class _RunsAShellCommand:
    """What a crafted "weights" file pickles: unpickling it would call os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pkl_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "senet50_ft_weight.pkl"
    src.write_bytes(pickle.dumps({"conv1.weight": _RunsAShellCommand(marker)}, protocol=2))
    dst = tmp_path / "out.weights.h5"
    with pytest.raises(checkpoints.UnsafeCheckpointError,
                       match=r"senet50_ft_weight.pkl: refused: .*(posix|os)\.system"):
        convert.convert(src, dst)
    assert not marker.exists() and not dst.exists()


def test_crafted_pth_is_refused_by_weights_only_load(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "senet50_ft_dag.pth"
    torch.save({"conv1.weight": _RunsAShellCommand(marker)}, src)
    with pytest.raises(checkpoints.NotACheckpointError, match="senet50_ft_dag.pth: torch.load failed"):
        convert.convert(src, tmp_path / "out.weights.h5")
    assert not marker.exists()
