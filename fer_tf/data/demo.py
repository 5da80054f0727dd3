"""A small synthetic expression dataset in the exact Aff-Wild2 (ABAW 2020) layout.

    python -m fer_tf.data.demo --out_dir=DIR

writes

    DIR/annotations/EXPR_Set/Training_Set/<video>.txt     header + one label per frame
    DIR/annotations/EXPR_Set/Validation_Set/<video>.txt
    DIR/cropped_aligned/<video>/00001.jpg ...              112x112 JPEG face crops

with the real dataset's quirks: unannotated frames (-1), frames whose crop is
missing (no face found), and a two-person video split into ``<video>_left`` and
``<video>_right``. Faces are drawn procedurally; mouth, brows and eyes change
with the expression (smile, O mouth and raised brows, frown, V brows, wrinkled
asymmetric face, wide eyes, flat face), under random identity, pose, scale,
colour, lighting and noise. Labels come in segments, so they change smoothly
within a video, and classes are mildly imbalanced (Neutral most frequent) like
the real data. The output is deterministic given the seed, and the function is
idempotent: a marker file is written last, and a complete folder is left alone.
"""

import json
import math
import os

import cv2
import numpy as np
from absl import app, flags, logging

from fer_tf import atomic, classes, cli

MARKER = ".demo_complete.json"
CROP_SIZE = 112
_SCALE = 2  # draw at 2x and shrink: anti-aliased strokes
# Segments per class in each shuffled "deck" of (Neutral, Anger, Disgust, Fear,
# Happiness, Sadness, Surprise): imbalanced like Aff-Wild2, mildly, so class weights
# matter but every class is learnable. Drawing segments from a deck shared by a
# split's videos keeps every class present even in the small validation split.
_SEGMENTS_PER_DECK = (6, 2, 2, 2, 4, 3, 2)
NEUTRAL, ANGER, DISGUST, FEAR, HAPPINESS, SADNESS, SURPRISE = range(7)


def _identity(rng):
    """Per-video constants: face shape, colours, background."""
    skin = rng.uniform([60, 80, 120], [200, 210, 245])  # BGR
    return {
        "face_w": rng.uniform(62, 76), "face_h": rng.uniform(80, 94),
        "eye_dx": rng.uniform(26, 33), "eye_y": rng.uniform(-22, -14),
        "mouth_y": rng.uniform(36, 46), "skin": skin,
        "feature": rng.uniform(10, 60, 3), "iris": rng.uniform(20, 120, 3),
        "lip": np.clip(skin * rng.uniform(0.45, 0.7), 0, 255),
        "bg1": rng.uniform(0, 255, 3), "bg2": rng.uniform(0, 255, 3),
        "hair": rng.uniform(0, 90, 3) if rng.uniform() < 0.7 else None,
    }


def _pt(cx, cy, x, y):
    return (int(round((cx + x) * 4)), int(round((cy + y) * 4)))  # 2 bits of sub-pixel shift


def _line(img, cx, cy, p, q, color, th):
    cv2.line(img, _pt(cx, cy, *p), _pt(cx, cy, *q), color, th, cv2.LINE_AA, shift=2)


def _arc(img, cx, cy, center, axes, start, end, color, th, angle=0.0):
    cv2.ellipse(img, _pt(cx, cy, *center), (int(axes[0] * 4), int(axes[1] * 4)), angle, start,
                end, color, th, cv2.LINE_AA, shift=2)


def _draw_eye(img, cx, cy, x, y, open_h, ident, squint_up=False):
    width = 12.0
    if open_h <= 3.0 or squint_up:
        # A closed/smiling eye: an arc.
        start, end = (180, 360) if squint_up else (0, 180)
        _arc(img, cx, cy, (x, y + (3 if squint_up else 0)), (width, max(open_h, 3)), start, end,
             ident["feature"].tolist(), 4)
        return
    _arc(img, cx, cy, (x, y), (width, open_h), 0, 360, (245, 245, 245), -1)
    r = min(6.5, open_h * 0.8)
    _arc(img, cx, cy, (x, y), (r, r), 0, 360, ident["iris"].tolist(), -1)
    _arc(img, cx, cy, (x, y), (r * 0.45, r * 0.45), 0, 360, (15, 15, 15), -1)
    _arc(img, cx, cy, (x, y), (width, open_h), 0, 360, ident["feature"].tolist(), 2)


def _draw_face(expression, k, ident, rng):
    """One face, 224x224 BGR, canonical pose; k in [0.6, 1] is the expression intensity."""
    s = CROP_SIZE * _SCALE
    yy, xx = np.mgrid[0:s, 0:s] / s
    a = rng.uniform(0, 1)
    mix = (a * xx + (1 - a) * yy)[..., None]
    img = (ident["bg1"] * (1 - mix) + ident["bg2"] * mix).astype(np.uint8)
    cx, cy = s / 2, s / 2 + 6
    fw, fh = ident["face_w"], ident["face_h"]
    if ident["hair"] is not None:
        _arc(img, cx, cy, (0, -fh * 0.25), (fw * 1.08, fh * 0.85), 180, 360,
             ident["hair"].tolist(), -1)
    _arc(img, cx, cy, (0, 0), (fw, fh), 0, 360, ident["skin"].tolist(), -1)
    feat = ident["feature"].tolist()
    dark = (25, 20, 30)
    ex, ey, my = ident["eye_dx"], ident["eye_y"], ident["mouth_y"]

    # Eyes: opening height per expression (and a smile squint for happiness).
    eye_h = {NEUTRAL: 7, ANGER: 4.5, DISGUST: 4, FEAR: 12, HAPPINESS: 3, SADNESS: 5.5,
             SURPRISE: 11}[expression]
    eye_h = 7 + (eye_h - 7) * k
    left_h, right_h = eye_h, eye_h
    if expression == DISGUST:
        right_h = 2.5  # one eye squeezed
    for side, h in ((-1, left_h), (1, right_h)):
        _draw_eye(img, cx, cy, side * ex, ey, h, ident, squint_up=expression == HAPPINESS)

    # Brows: (inner dy, outer dy) from the neutral height; negative is up.
    brow = {NEUTRAL: (0, 0), ANGER: (11, -7), DISGUST: (9, 2), FEAR: (-14, -5),
            HAPPINESS: (-3, -3), SADNESS: (-12, 5), SURPRISE: (-17, -15)}[expression]
    by = ey - 16
    for side in (-1, 1):
        inner, outer = brow[0] * k, brow[1] * k
        if expression == DISGUST and side == 1:
            inner, outer = -4 * k, -2 * k  # asymmetric: one brow down, one up
        p = (side * (ex - 12), by + inner)
        q = (side * (ex + 14), by + outer)
        if expression == SURPRISE:
            _arc(img, cx, cy, (side * ex, by + inner + 6), (15, 9), 200, 340, feat, 5)
        else:
            _line(img, cx, cy, p, q, feat, 5)

    # Nose, and wrinkles for disgust.
    _line(img, cx, cy, (0, ey + 6), (-4, my - 20), feat, 2)
    _line(img, cx, cy, (-4, my - 20), (5, my - 19), feat, 2)
    if expression == DISGUST:
        for d in (-1, 1):
            _line(img, cx, cy, (d * 8, my - 28), (d * 14, my - 20), feat, 2)
            _line(img, cx, cy, (d * 10, my - 32), (d * 17, my - 25), feat, 2)

    lip = ident["lip"].tolist()
    if expression == NEUTRAL:
        _line(img, cx, cy, (-20, my), (20, my), lip, 5)
    elif expression == HAPPINESS:
        _arc(img, cx, cy, (0, my - 8 * k), (26, 18 * k), 0, 180, (250, 250, 250), -1)
        _arc(img, cx, cy, (0, my - 8 * k), (26, 18 * k), 0, 180, lip, 4)
        _line(img, cx, cy, (-26, my - 8 * k), (26, my - 8 * k), lip, 3)
    elif expression == SADNESS:
        _arc(img, cx, cy, (0, my + 10 * k), (22, 12 * k), 180, 360, lip, 5)
    elif expression == SURPRISE:
        _arc(img, cx, cy, (0, my + 2), (11, 9 + 10 * k), 0, 360, dark, -1)
        _arc(img, cx, cy, (0, my + 2), (11, 9 + 10 * k), 0, 360, lip, 4)
    elif expression == FEAR:
        _arc(img, cx, cy, (0, my), (24, 5 + 6 * k), 0, 360, dark, -1)
        _line(img, cx, cy, (-18, my - 2 - 2 * k), (18, my - 2 - 2 * k), (235, 235, 235), 3)
        _arc(img, cx, cy, (0, my), (24, 5 + 6 * k), 0, 360, lip, 3)
    elif expression == ANGER:
        w, h = 19, 4 + 3 * k
        cv2.rectangle(img, _pt(cx, cy, -w, my - h), _pt(cx, cy, w, my + h), (235, 235, 235), -1,
                      cv2.LINE_AA, shift=2)
        for t in range(-12, 13, 8):
            _line(img, cx, cy, (t, my - h), (t, my + h), (120, 120, 120), 1)
        cv2.rectangle(img, _pt(cx, cy, -w, my - h), _pt(cx, cy, w, my + h), lip, 3, cv2.LINE_AA,
                      shift=2)
    elif expression == DISGUST:
        pts = np.array([_pt(cx, cy, x, my + y) for x, y in
                        ((-20, 4), (-10, 2), (-2, -2), (6, -6 * k), (14, -10 * k), (20, -4))])
        cv2.polylines(img, [pts], False, lip, 5, cv2.LINE_AA, shift=2)
    return img


def _render(expression, k, ident, pose, rng):
    """Draws, poses, lights, adds noise and shrinks to a 112x112 BGR crop."""
    img = _draw_face(expression, k, ident, rng)
    s = CROP_SIZE * _SCALE
    m = cv2.getRotationMatrix2D((s / 2, s / 2), pose["angle"], pose["scale"])
    m[:, 2] += (pose["dx"] * _SCALE, pose["dy"] * _SCALE)
    img = cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    img = cv2.resize(img, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    yy, xx = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE] / CROP_SIZE - 0.5
    light = pose["light"] + pose["light_slope"] * (math.cos(pose["light_dir"]) * xx
                                                   + math.sin(pose["light_dir"]) * yy)
    img = img * light[..., None] * pose["cast"]
    img += rng.normal(0, pose["noise"], img.shape)
    if pose["blur"] > 0.4:
        img = cv2.GaussianBlur(img, (0, 0), pose["blur"])
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


class _Deck:
    """Expression classes for consecutive segments: shuffled decks, refilled when empty."""

    def __init__(self, rng):
        self._rng = rng
        self._cards = []

    def draw(self, avoid):
        if not self._cards:
            self._cards = [c for c, n in enumerate(_SEGMENTS_PER_DECK) for _ in range(n)]
            self._rng.shuffle(self._cards)
        for i, c in enumerate(self._cards):
            if c != avoid:
                return self._cards.pop(i)
        self._cards = []  # only `avoid` is left: start a fresh deck
        return self.draw(avoid)


def _segments(rng, n, deck):
    """Per-frame labels as segments of 12..40 frames of one expression each."""
    labels = np.empty(n, np.int64)
    i, prev = 0, -1
    while i < n:
        prev = deck.draw(avoid=prev)
        length = int(rng.integers(12, 41))
        labels[i:i + length] = prev
        i += length
    return labels


def _poses(rng, n):
    """A smooth random walk of head pose and lighting over a video."""
    def walk(lo, hi, step):
        x = np.empty(n)
        x[0] = rng.uniform(lo, hi)
        for t in range(1, n):
            x[t] = np.clip(x[t - 1] + rng.normal(0, step), lo, hi)
        return x

    angle, scale = walk(-15, 15, 1.5), walk(0.85, 1.1, 0.01)
    dx, dy = walk(-7, 7, 0.7), walk(-7, 7, 0.7)
    light, slope = walk(0.65, 1.25, 0.02), walk(0.0, 0.6, 0.03)
    light_dir = rng.uniform(0, 2 * math.pi)
    cast = rng.uniform(0.85, 1.15, 3)
    noise, blur = rng.uniform(1, 7), rng.uniform(0, 1.0)
    return [dict(angle=angle[t], scale=scale[t], dx=dx[t], dy=dy[t], light=light[t],
                 light_slope=slope[t], light_dir=light_dir, cast=cast, noise=noise, blur=blur)
            for t in range(n)]


def _write_video(out_dir, split_dir, name, labels, crops, ident, rng):
    """Writes one annotation file and the crops for frames where ``crops`` is True."""
    ann = os.path.join(out_dir, "annotations", "EXPR_Set", split_dir, f"{name}.txt")
    os.makedirs(os.path.dirname(ann), exist_ok=True)
    crop_dir = os.path.join(out_dir, "cropped_aligned", name)
    os.makedirs(crop_dir, exist_ok=True)
    poses = _poses(rng, len(labels))
    intensity = np.clip(0.8 + 0.1 * np.cumsum(rng.normal(0, 0.3, len(labels))) / 5, 0.6, 1.0)
    for t, (label, has_crop) in enumerate(zip(labels, crops)):
        # Unannotated frames still show a face (the expression of the segment it cuts).
        expression = int(label) if label >= 0 else int(rng.integers(0, 7))
        img = _render(expression, intensity[t], ident, poses[t], rng)
        if has_crop:
            quality = int(rng.integers(80, 96))
            ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {name} frame {t + 1}")
            atomic.write_bytes(os.path.join(crop_dir, f"{t + 1:05d}.jpg"), data.tobytes())
    text = ",".join(classes.CLASS_NAMES) + "\n" + "".join(f"{int(v)}\n" for v in labels)
    atomic.write_bytes(ann, text.encode())


def write_demo_dataset(out_dir, train_videos: int = 16, val_videos: int = 5,
                       frames_per_video: int = 125, seed: int = 0) -> dict:
    """Writes the synthetic dataset (see module docstring); skips a complete one.

    Default size: 16 train videos (~1,900 labelled crops) and 5 validation videos
    (~600), about 20 s to write on 2 CPU cores.

    Args:
      out_dir: root folder (created).
      train_videos: training videos; one of them is a ``_left``/``_right`` pair.
      val_videos: validation videos.
      frames_per_video: frames (annotation lines) per video.
      seed: everything written is a function of the arguments.

    Returns:
      The summary stored in the marker file: arguments, per-split video names,
      labelled / unannotated / missing-crop frame counts and per-class counts.

    Raises:
      ValueError: bad sizes, ``out_dir`` holds a complete demo dataset written
        with different arguments, or other files than a demo dataset's.
    """
    if train_videos < 2 or val_videos < 1 or frames_per_video < 20:
        raise ValueError("need train_videos >= 2, val_videos >= 1, frames_per_video >= 20; got "
                         f"{train_videos}, {val_videos}, {frames_per_video}")
    out_dir = os.fspath(out_dir)
    args = dict(train_videos=train_videos, val_videos=val_videos,
                frames_per_video=frames_per_video, seed=seed)
    marker = os.path.join(out_dir, MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            summary = json.load(f)
        if summary.get("args") != args:
            raise ValueError(f"{out_dir} already holds a demo dataset written with "
                             f"{summary.get('args')}, not {args}; use another --out_dir "
                             "or delete it")
        logging.info("demo dataset already complete in %s; not rewritten", out_dir)
        return summary
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        # An unfinished demo write leaves its split folders only; anything else is not ours.
        foreign = sorted(name for name in os.listdir(out_dir)
                         if name not in ("annotations", "cropped_aligned")
                         and not name.startswith(MARKER + "."))
        if foreign:
            raise ValueError(f"--out_dir={out_dir} is not empty and holds no demo dataset "
                             f"(found {foreign[0]}); choose a new or empty folder")
    atomic.check_output_dir(out_dir, flag="--out_dir")

    rng = np.random.default_rng(seed)
    summary = {"args": args, "splits": {}}
    for split_dir, n_videos, prefix in (("Training_Set", train_videos, "train"),
                                        ("Validation_Set", val_videos, "val")):
        names = [f"demo_{prefix}_{i:03d}" for i in range(n_videos)]
        if split_dir == "Training_Set":
            # A two-person video: split per subject, as Aff-Wild2 does.
            names[-1] = names[-1] + "_left"
            names.append(names[-1][:-len("_left")] + "_right")
        deck = _Deck(np.random.default_rng(rng.integers(2**63)))
        stats = {"videos": names, "labelled": 0, "unannotated": 0, "no_crop": 0,
                 "per_class": [0] * classes.NUM_CLASSES}
        for name in names:
            vrng = np.random.default_rng(rng.integers(2**63))
            labels = _segments(vrng, frames_per_video, deck)
            # A run of unannotated frames (-1) and a few frames without a face crop.
            start = int(vrng.integers(0, frames_per_video - 8))
            labels[start:start + int(vrng.integers(3, 8))] = -1
            crops = vrng.uniform(size=frames_per_video) > 0.03
            crops[int(vrng.integers(0, frames_per_video))] = False  # at least one per video
            _write_video(out_dir, split_dir, name, labels, crops, _identity(vrng), vrng)
            keep = (labels >= 0) & crops
            stats["labelled"] += int(keep.sum())
            stats["unannotated"] += int((labels < 0).sum())
            stats["no_crop"] += int(((labels >= 0) & ~crops).sum())
            for c in labels[keep]:
                stats["per_class"][int(c)] += 1
        summary["splits"][split_dir] = stats
        logging.info("demo %s: %d videos, %d labelled crops, %d unannotated, %d without crop",
                     split_dir, len(names), stats["labelled"], stats["unannotated"],
                     stats["no_crop"])
    atomic.write_bytes(marker, json.dumps(summary, indent=1).encode())  # last: marks completion
    return summary


def define_flags():
    """The command's flags: --out_dir and the dataset's sizes."""
    flags.DEFINE_string("out_dir", None, "Folder to write the demo dataset into.")
    flags.DEFINE_integer("train_videos", 16, "Training videos (one is a _left/_right pair).")
    flags.DEFINE_integer("val_videos", 5, "Validation videos.")
    flags.DEFINE_integer("frames_per_video", 125, "Annotated frames per video.")
    flags.DEFINE_integer("seed", 0, "Random seed; the output is a function of the flags.")
    flags.mark_flag_as_required("out_dir")


def main(argv):
    """Writes the demo dataset the flags describe and prints its summary."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    summary = write_demo_dataset(f.out_dir, f.train_videos, f.val_videos, f.frames_per_video,
                                 f.seed)
    for split, stats in summary["splits"].items():
        print(f"{split}: {len(stats['videos'])} videos, {stats['labelled']} labelled crops, "
              f"per class {dict(zip(classes.CLASS_NAMES, stats['per_class']))}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, "fer_tf.data.demo")
