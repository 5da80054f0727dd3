"""Records golden ColorJitter outputs from real torchvision into tests/data/golden/.

Run with an interpreter that has torch + torchvision (kept out of the project's env):
    python3 -m venv /work/tv_venv
    /work/tv_venv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
    /work/tv_venv/bin/python tests/data/record_torchvision_golden.py

tests/test_augment.py compares fer_tf.augment against these files
without needing torch. Inputs are float32 RGB in [0, 1], stored channels-last.
"""

import os
import pathlib
import tempfile

import numpy as np
import torch
import torchvision
from torchvision.transforms import functional as F1
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F2

OUT_DIR = pathlib.Path(__file__).resolve().parent / "golden"
OPS = ("brightness", "contrast", "saturation", "hue")


def _inputs(rng):
    """8 small images: uniform noise (all hue sectors), gray pixels, extremes, smooth ramps."""
    h, w = 12, 16
    imgs = rng.uniform(0.0, 1.0, size=(8, h, w, 3)).astype(np.float32)
    imgs[1, :, :, 1] = imgs[1, :, :, 0]  # r == g ties
    imgs[1, :, :, 2] = imgs[1, :, :, 0]  # fully gray (maxc == minc)
    imgs[2] = np.round(imgs[2])  # only 0 and 1: ties and clamping
    imgs[3] = np.clip(imgs[3] * 0.2, 0, 1)  # dark
    imgs[4] = np.clip(0.8 + imgs[4] * 0.2, 0, 1)  # bright, low saturation
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h - 1, w - 1])[:, None, None]
    imgs[5] = np.stack([xx, yy, 1 - xx], -1).astype(np.float32)  # smooth ramps
    imgs[6, :, :, 0] = imgs[6, :, :, 2]  # r == b ties
    return imgs


def _apply(fns, img, order, factors):
    out = img
    for op in order:
        out = getattr(fns, f"adjust_{OPS[op]}")(out, float(factors[op]))
    return out


def _atomic_savez(path, **arrays):
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmp, **arrays)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main():
    rng = np.random.default_rng(0)
    images = _inputs(rng)
    n = len(images)
    # Per-image factors within the paper's ranges (float32-exact), incl. the range ends.
    factors = np.stack([
        rng.uniform(0.6, 1.4, n), rng.uniform(0.7, 1.3, n),
        rng.uniform(0.75, 1.25, n), rng.uniform(-0.5, 0.5, n)], axis=1).astype(np.float32)
    factors[0] = (1.4, 0.7, 1.25, 0.5)
    factors[1] = (0.6, 1.3, 0.75, -0.5)
    orders = np.stack([rng.permutation(4) for _ in range(n)]).astype(np.int32)
    orders[0] = (0, 1, 2, 3)
    orders[1] = (3, 2, 1, 0)

    chw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    single = {}
    for k, op in enumerate(OPS):
        for name, fns in (("v2", F2), ("v1", F1)):
            outs = [getattr(fns, f"adjust_{op}")(chw[i], float(factors[i, k])) for i in range(n)]
            single[f"{name}_{op}"] = torch.stack(outs).permute(0, 2, 3, 1).numpy()
    jitter_v2 = torch.stack([_apply(F2, chw[i], orders[i], factors[i]) for i in range(n)])
    jitter_v1 = torch.stack([_apply(F1, chw[i], orders[i], factors[i]) for i in range(n)])

    # The real transform module: draw its own params, record them and its output.
    torch.manual_seed(0)
    module = v2.ColorJitter(brightness=0.4, contrast=0.3, saturation=0.25, hue=0.5)
    m_factors, m_orders, m_out = [], [], []
    for i in range(n):
        params = module.make_params([chw[i]])
        m_factors.append([params["brightness_factor"], params["contrast_factor"],
                          params["saturation_factor"], params["hue_factor"]])
        m_orders.append(params["fn_idx"].numpy())
        m_out.append(module.transform(chw[i], params))
    m_out = torch.stack(m_out).permute(0, 2, 3, 1).numpy()

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    _atomic_savez(
        OUT_DIR / "color_jitter.npz", images=images, factors=factors, orders=orders,
        jitter_v2=jitter_v2.permute(0, 2, 3, 1).numpy(),
        jitter_v1=jitter_v1.permute(0, 2, 3, 1).numpy(),
        module_factors=np.asarray(m_factors, np.float64), module_orders=np.stack(m_orders),
        module_output=m_out,
        versions=np.asarray([torch.__version__, torchvision.__version__]), **single)
    print(f"wrote {OUT_DIR / 'color_jitter.npz'} (torch {torch.__version__}, "
          f"torchvision {torchvision.__version__})")


if __name__ == "__main__":
    main()
