r"""Images/s of the training input path, fer_tf against the paper's PyTorch pipeline.

    python benchmarks/input_pipeline.py [--images=demo|fer2013] [--num_images=2000]
        [--workers=2] [--torch_python=PATH/TO/bin/python]

One run, same CPU, same ~2,000 JPEG files, batch 64. Rows:
- decode only (tf.data read + decode + batch uint8);
- fer_tf default: tf.data decodes and batches uint8 at the storage size; flip,
  ColorJitter, resize to 224 run batched inside the train step (on the
  accelerator; rated here by what the CPU side must deliver);
- fer_tf, everything on this CPU: the same pipeline feeding the in-step
  augmentation (XLA-compiled) executed on the CPU, like-for-like with PyTorch;
- fer_tf aug in tf.data: resize 224 + flip + jitter inside tf.data on the CPU
  (built here: the library keeps augmentation in the model);
- Keras preprocessing layers (Resizing, RandomFlip, RandomColorJitter) in tf.data;
- TFDS records (built from the demo data with fer_tf.data.tfds_builders);
- the paper's PyTorch pipeline: PIL decode, Resize(224), RandomHorizontalFlip,
  ColorJitter(0.4, 0.3, 0.25, 0.5), ToTensor, DataLoader(batch 64, same number
  of workers), run in a subprocess with --torch_python (torchvision lives in its
  own venv); the row is skipped with a message if unavailable.
Prints a table, a like-for-like ratio and ``ratio fer_tf / pytorch: X.XX`` for
the default path.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_enum("images", "demo", ["demo", "fer2013"],
                  "Input files: demo (112x112 colour crops, Aff-Wild2-like; written to "
                  "--work_dir) or fer2013 (48x48 gray, from --fer2013_dir).")
flags.DEFINE_string("fer2013_dir", str(pathlib.Path(__file__).resolve().parents[2] / "shared"
                                       / "data" / "fer2013"), "FER2013 image folders.")
flags.DEFINE_string("work_dir", os.path.join(tempfile.gettempdir(), "fer_tf_input_bench"),
                    "Where demo data and TFDS records are written (reused between runs).")
flags.DEFINE_integer("num_images", 2000, "Images per pass.")
flags.DEFINE_integer("batch_size", 64, "Batch size (the paper's micro-batch).")
flags.DEFINE_integer("workers", 2, "PyTorch DataLoader workers; tf.data gets the same CPU.")
flags.DEFINE_integer("passes", 2, "Timed passes over the images (after one warm-up pass).")
flags.DEFINE_string("torch_python", None,
                    "Interpreter with torch + torchvision for the PyTorch row (default: this "
                    "one, if it has torchvision; '' skips the row).")
FLAGS = flags.FLAGS

_TORCH_SCRIPT = r"""
import json, resource, sys, time
import torch
from PIL import Image
from torchvision import transforms
with open(sys.argv[1]) as f:
    paths, batch, workers, passes = json.load(f)
torch.set_num_threads(1)
tf = transforms.Compose([transforms.Resize(224), transforms.RandomHorizontalFlip(),
                         transforms.ColorJitter(brightness=0.4, contrast=0.3, saturation=0.25,
                                                hue=0.5),
                         transforms.ToTensor()])
class Files(torch.utils.data.Dataset):
    def __len__(self):
        return len(paths)
    def __getitem__(self, i):
        return tf(Image.open(paths[i]).convert("RGB")), i % 7
# Workers exit (and are reaped) after each pass, so their CPU time lands in RUSAGE_CHILDREN.
loader = torch.utils.data.DataLoader(Files(), batch_size=batch, shuffle=True, num_workers=workers)
def cpu():
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
for _ in loader:  # warm-up pass: file cache
    pass
n, start, cpu0 = 0, time.perf_counter(), cpu()
for _ in range(passes):
    for x, y in loader:
        n += x.shape[0]
print(json.dumps({"images_per_s": n / (time.perf_counter() - start),
                  "images_per_cpu_s": n / (cpu() - cpu0), "shape": list(x.shape),
                  "torch": torch.__version__}))
"""


def _input_files():
    from fer_tf.data import demo
    from fer_tf.data.examples import LabelledImages
    if FLAGS.images == "fer2013":
        root = pathlib.Path(FLAGS.fer2013_dir) / "train"
        paths = sorted(root.glob("*/*.jpg"))
        if not paths:
            raise FileNotFoundError(f"no FER2013 jpgs under {root}")
        step = max(1, len(paths) // FLAGS.num_images)
        paths = paths[::step][:FLAGS.num_images]
        return LabelledImages(paths, [i % 7 for i in range(len(paths))]), None
    root = pathlib.Path(FLAGS.work_dir) / "demo"
    demo.write_demo_dataset(root)  # idempotent: reused between runs
    paths = sorted((root / "cropped_aligned").glob("*/*.jpg"))[:FLAGS.num_images]
    return LabelledImages(paths, [i % 7 for i in range(len(paths))]), root


def _rate(ds, step=None, passes=None):
    """(images/s, images per CPU-second) over `passes` passes of ds, after a warm-up pass.

    CPU time (all threads of this process) makes the per-core comparison robust
    to other processes sharing the machine, which skew wall-clock rates.
    """
    passes = passes or FLAGS.passes
    for batch in ds:
        if step is not None:
            step(batch[0]).numpy()
    n, start, cpu0 = 0, time.perf_counter(), time.process_time()
    for _ in range(passes):
        for batch in ds:
            if step is not None:
                step(batch[0]).numpy()  # .numpy(): wait for the result, as a train step would
            else:
                batch[0].numpy()
            n += int(batch[0].shape[0])
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu0)


_NO_TORCHVISION = ("skipped: no torchvision in this interpreter; make an environment with "
                   "`python -m venv tv && tv/bin/pip install torch torchvision pillow` and pass "
                   "--torch_python=tv/bin/python")


def _torch_interpreter():
    """--torch_python, else this interpreter if torchvision imports in it, else None."""
    if FLAGS.torch_python is not None:
        return FLAGS.torch_python or None
    found = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
    return sys.executable if found.returncode == 0 else None


def _torch_rate(paths):
    python = _torch_interpreter()
    if python is None:
        return None, ("skipped (--torch_python='')" if FLAGS.torch_python == ""
                      else _NO_TORCHVISION)
    if not os.path.exists(python):
        return None, f"skipped: no interpreter at --torch_python={python!r}"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([list(paths), FLAGS.batch_size, FLAGS.workers, FLAGS.passes], f)
    try:
        out = subprocess.run([python, "-c", _TORCH_SCRIPT, f.name],
                             capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"skipped: {e}"
    finally:
        os.remove(f.name)
    if out.returncode != 0:
        return None, "skipped: " + (out.stderr.strip().splitlines() or ["failed"])[-1]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return ((result["images_per_s"], result["images_per_cpu_s"]),
            f"torch {result['torch']}, {FLAGS.workers} workers")


def _tfds_rate(demo_root):
    import tensorflow_datasets as tfds
    from fer_tf.data import pipeline, tfds_builders
    if demo_root is None:
        return None, "omitted: TFDS records are built from the demo data (--images=demo)"
    data_dir = pathlib.Path(FLAGS.work_dir) / "tfds"
    builder = tfds_builders.make_builder("affwild2", data_dir)
    if not builder.is_prepared():
        builder = tfds_builders.build("affwild2", demo_root, data_dir)
    records = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    records = records.take(FLAGS.num_images).cache()  # same count as the file rows
    ds = pipeline.make_dataset_from_records(records, FLAGS.batch_size, seed=0)
    return _rate(ds), "records -> decode -> batch uint8 112"


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")  # a CPU benchmark even on a GPU machine
    from fer_tf import augment, preprocessing
    from fer_tf.data import pipeline

    files, demo_root = _input_files()
    n, bs = len(files), FLAGS.batch_size
    print(f"{n} {FLAGS.images} images, batch {bs}, {os.cpu_count()} CPUs, "
          f"{FLAGS.workers} PyTorch workers, tf {tf.__version__}")
    rows = []

    def add(name, rate, note):
        rows.append((name, rate, note))
        print(f"  measured {name}: {rate}", flush=True)

    decode_only = tf.data.Dataset.from_tensor_slices(files.paths).map(
        lambda p: tf.io.decode_jpeg(tf.io.read_file(p), channels=3),
        num_parallel_calls=tf.data.AUTOTUNE).batch(bs).prefetch(tf.data.AUTOTUNE)
    add("decode only (tf.data, uint8)", _rate(decode_only), "read + decode + batch")

    default = pipeline.make_dataset(files, bs, image_size=112, seed=0)
    default_rate = _rate(default)
    add("fer_tf default: CPU side", default_rate,
        "decode + shuffle + batch uint8 112; augmentation in the step")

    counter = tf.Variable(0, dtype=tf.int64)
    # XLA for flip + jitter only: XLA's CPU bilinear resize is 10x slower than TF's.
    flip_and_jitter = tf.function(augment.random_flip_and_jitter, jit_compile=True)

    @tf.function
    def in_step(images):
        x = preprocessing.resize(images, 224) / 255.0
        seed = tf.stack([tf.constant(0, tf.int64), counter.assign_add(1)])
        x = flip_and_jitter(x, seed) * 255.0
        return preprocessing.rgb_to_network_input(x)

    full_cpu = _rate(default, step=in_step)
    add("fer_tf all on this CPU (in-step aug)", full_cpu,
        "default pipeline + in-step resize, flip/jitter (XLA), normalise")
    def augment_in_tf_data(index, batch):
        # One seed per batch from its position, as a resumable pipeline would draw.
        images, labels, weights = batch
        x = preprocessing.resize(images, 224) / 255.0
        x = flip_and_jitter(x, tf.stack([tf.constant(0, tf.int64), index]))
        return tf.cast(tf.round(x * 255.0), tf.uint8), labels, weights

    cpu_aug = _rate(pipeline.make_dataset(files, bs, image_size=112, seed=0).enumerate().map(
        augment_in_tf_data, num_parallel_calls=tf.data.AUTOTUNE))
    add("fer_tf aug in tf.data (CPU)", cpu_aug,
        "resize 224 + flip + jitter in tf.data -> uint8 224")

    layers = keras.Sequential([
        keras.layers.Resizing(224, 224),
        keras.layers.RandomFlip("horizontal", seed=0),
        keras.layers.RandomColorJitter(value_range=(0, 255), brightness_factor=0.4,
                                       contrast_factor=0.3, saturation_factor=0.25,
                                       hue_factor=0.5, seed=0)])
    keras_ds = pipeline.make_dataset(files, bs, image_size=112, seed=0).map(
        lambda x, y, w: (layers(x, training=True), y, w), num_parallel_calls=tf.data.AUTOTUNE)
    add("Keras preprocessing layers in tf.data", _rate(keras_ds),
        "Resizing + RandomFlip + RandomColorJitter (not torchvision semantics)")

    try:
        rate, note = _tfds_rate(demo_root)
    except Exception as e:  # an optional row: report, do not abort the benchmark
        rate, note = None, f"omitted: {type(e).__name__}: {e}"
    add("TFDS records (fer_tf)", rate, note)

    torch_rate, note = _torch_rate(files.paths)
    add("PyTorch paper pipeline (DataLoader)", torch_rate, note)

    print(f"\n{'pipeline':40s} {'images/s':>9s} {'img/CPU-s':>9s}  notes")
    for name, rate, note in rows:
        wall, cpu = rate if rate is not None else (None, None)
        cols = "".join(f" {v:9.0f}" if v is not None else f" {'-':>9s}" for v in (wall, cpu))
        print(f"{name:40s}{cols}  {note}")
    print("(img/CPU-s: images per second of CPU time, all threads/processes: the per-core rate)")
    if torch_rate:
        for k, unit in ((0, "wall clock"), (1, "per CPU-second")):
            print(f"like-for-like, all augmentation on this CPU ({unit}): fer_tf in-step "
                  f"{full_cpu[k] / torch_rate[k]:.2f}x, tf.data augment "
                  f"{cpu_aug[k] / torch_rate[k]:.2f}x PyTorch")
        print(f"default path per CPU-second: {default_rate[1] / torch_rate[1]:.2f}x PyTorch")
        print(f"ratio fer_tf / pytorch: {default_rate[0] / torch_rate[0]:.2f}")
    else:
        print("\nratio fer_tf / pytorch: n/a (PyTorch row skipped)")


if __name__ == "__main__":
    app.run(main)
