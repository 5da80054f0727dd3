"""The one error convention of every entry point: a user error is one line, exit code 2.

    if __name__ == "__main__":
        cli.run(main, "fer_tf.train")

A user error (bad flag value, missing or unreadable file, bad data, bad model file,
an output that may not be written) prints ``<prog>: error: <message>`` on stderr and
exits with 2: no traceback, no dump of the flag help. Anything else is a real crash
and keeps its traceback.
"""

import sys

from absl import app, flags

USER_ERRORS = (app.UsageError, ValueError, FileNotFoundError, FileExistsError,
               PermissionError, IsADirectoryError, NotADirectoryError)


def fail(prog: str, error, code: int = 2):
    """Prints ``<prog>: error: <message>`` as one line on stderr and exits with ``code``."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def _guarded(main, prog):
    def wrapper(argv):
        try:
            return main(argv)
        except USER_ERRORS as error:
            fail(prog, error)
    return wrapper


def _flags_parser(prog):
    """absl's parser, with a bad flag (unknown, malformed, missing) as one line, exit 2
    (absl itself prints two lines and exits 1)."""
    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
            sys.exit(2)
    return parse


def run(main, prog: str):
    """`absl.app.run(main)` with user errors turned into one line and exit code 2."""
    app.run(_guarded(main, prog), flags_parser=_flags_parser(prog))
