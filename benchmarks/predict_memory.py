"""Peak memory of video prediction does not grow with the video's length.

One run: two videos made from a real face photo (a camera pan, `fer_tf.video.
write_camera_pan`), 30 s and 2 min long at `--fps`, each predicted by a fresh
``python -m fer_tf.predict`` process (shipped model, default settings, CSV output);
each process reports its own peak resident memory (getrusage ru_maxrss) at exit.

    python benchmarks/predict_memory.py [--fps=10] [--photo=...]

Prints a table and the final ratio line (peak memory 2 min / 30 s).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("photo", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                          "faces", "fer_justin.jpg"), "Real face photo.")
flags.DEFINE_float("fps", 10.0, "Frame rate of the generated videos.")
flags.DEFINE_integer("width", 320, "Video width.")
flags.DEFINE_integer("height", 240, "Video height.")

# Runs the entry point and prints this process's peak RSS (KiB on Linux) when it exits.
_CHILD = """
import atexit, resource, runpy, sys
atexit.register(lambda: print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                              file=sys.stderr))
sys.argv = ["fer_tf.predict"] + sys.argv[1:]
runpy.run_module("fer_tf.predict", run_name="__main__")
"""


def _peak_rss_mib(video, output):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, f"--input={video}", f"--output={output}",
                           "--noplots"], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"fer_tf.predict failed on {video}:\n{proc.stderr[-2000:]}")
    line = [x for x in proc.stderr.splitlines() if x.startswith("PEAK_RSS_KIB")][-1]
    return int(line.split()[1]) / 1024, seconds


def main(argv):
    del argv
    from fer_tf import faces, video  # pylint: disable=import-outside-toplevel

    work = tempfile.mkdtemp(prefix="fer_tf_memory_")
    try:
        photo = faces.read_image_rgb(FLAGS.photo)
        rows = []
        for seconds in (30, 120):
            path = os.path.join(work, f"clip_{seconds}s.mp4")
            video.write_camera_pan(photo, path, int(seconds * FLAGS.fps), FLAGS.width,
                                   FLAGS.height, FLAGS.fps)
            peak, took = _peak_rss_mib(path, os.path.join(work, f"clip_{seconds}s.csv"))
            rows.append((seconds, int(seconds * FLAGS.fps), peak, took))
        print(f"{'video':<12}{'frames':>8}{'peak RSS (MiB)':>16}{'wall (s)':>10}")
        for seconds, frames, peak, took in rows:
            print(f"{str(seconds) + ' s':<12}{frames:>8}{peak:>16.0f}{took:>10.0f}")
        print(f"ratio: peak memory 2 min / 30 s = {rows[1][2] / rows[0][2]:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
