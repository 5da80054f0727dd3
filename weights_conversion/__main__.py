"""python -m weights_conversion --src FILE --dst OUT.weights.h5 [--format auto|pkl|dag] [--verify]"""

from absl import app, flags, logging

from fer_tf import cli
from weights_conversion import convert

FLAGS = flags.FLAGS


def define_flags():
    """The command's flags: --src, --dst, --format, --verify, --overwrite."""
    flags.DEFINE_string("src", None, "senet50_ft_weight.pkl (VGGFace2-pytorch) or senet50_*_dag.pth (pytorch-mcn).")
    flags.DEFINE_string("dst", None, "Output Keras weights file; must end with .weights.h5.")
    flags.DEFINE_enum("format", "auto", ["auto", "pkl", "dag"], "Source format; auto detects it from the tensor names.")
    flags.DEFINE_bool("verify", False, "Compare with the PyTorch reference on a random batch (needs torch); fail above 1e-5 relative error.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --dst file.")
    flags.mark_flags_as_required(["src", "dst"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    try:
        metadata = convert.convert(FLAGS.src, FLAGS.dst, FLAGS.format, FLAGS.verify,
                                   overwrite=FLAGS.overwrite)
    except ImportError as e:  # --verify without the torch extra: the user's to fix
        raise app.UsageError(f"{e}; install the torch extra: pip install 'fer_tf[torch]'") from e
    print(f"Converted {metadata['source']} ({metadata['format']}, {metadata['classes']} classes) -> {FLAGS.dst}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, "weights_conversion")
