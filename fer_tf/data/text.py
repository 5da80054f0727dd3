"""Annotation text files read with errors that name the file and line."""

import os


def read_lines(path, encoding: str = "utf-8") -> list:
    """The lines of a text file (without line ends).

    Raises:
      ValueError: a byte sequence that is not ``encoding`` text, naming the file, line
        and byte (``UnicodeDecodeError`` names neither file nor line).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode(encoding).splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: byte 0x{data[e.start]:02x} is not {encoding} text; "
                         f"save the file as UTF-8") from None
