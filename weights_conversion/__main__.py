"""python -m weights_conversion --src FILE --dst OUT.weights.h5 [--format auto|pkl|dag] [--verify]"""

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "senet50_ft_weight.pkl (VGGFace2-pytorch) or senet50_*_dag.pth (pytorch-mcn).")
flags.DEFINE_string("dst", None, "Output Keras weights file; must end with .weights.h5.")
flags.DEFINE_enum("format", "auto", ["auto", "pkl", "dag"], "Source format; auto detects it from the tensor names.")
flags.DEFINE_bool("verify", False, "Compare with the PyTorch reference on a random batch (needs torch); fail above 1e-5 relative error.")
flags.mark_flags_as_required(["src", "dst"])


def main(argv):
    del argv
    from weights_conversion import convert

    logging.set_verbosity(logging.INFO)
    try:
        metadata = convert.convert(FLAGS.src, FLAGS.dst, FLAGS.format, FLAGS.verify)
    except (ValueError, FileNotFoundError, ImportError) as e:
        sys.exit(f"weights_conversion: error: {e}")
    print(f"Converted {metadata['source']} ({metadata['format']}, {metadata['classes']} classes) -> {FLAGS.dst}")


if __name__ == "__main__":
    app.run(main)
