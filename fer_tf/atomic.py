"""Atomic file output: write beside the target, then rename over it.

A crash or Ctrl-C mid-write never leaves half a file at the target path: readers
see the old file or the new one. Every writer of results, checkpoints' companions,
caches and reports in fer_tf goes through here.
"""

import contextlib
import json
import os
import re
import uuid


@contextlib.contextmanager
def output_path(path, suffix: str = ".tmp"):
    """Yields a temporary path in `path`'s folder; renames it to `path` on success.

    Args:
      path: the final file.
      suffix: ending of the temporary name (libraries that check extensions, such as
        Keras' `.keras` / `.weights.h5`, need the real one).

    On an exception the temporary file is removed and the exception propagates.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # A unique name in the same folder (same file system, so os.replace is atomic);
    # opened by the caller with the process umask, unlike mkstemp's 0600.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_bytes(path, data: bytes) -> str:
    """Writes `data` to `path` atomically; returns the path."""
    with output_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return os.fspath(path)


def write_text(path, text: str) -> str:
    """Writes `text` (UTF-8, newlines as given) to `path` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, payload, sort_keys: bool = False) -> str:
    """Writes `payload` as indented JSON (with a final newline) atomically; returns the path."""
    return write_text(path, json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")


def check_output(path, inputs=(), overwrite: bool = False, flag: str = "--output") -> str:
    """Checks, before any work, that ``path`` may be written; returns it absolute.

    The rule: an output is never one of the command's inputs (``inputs``: files and
    folders, compared after resolving links), an existing file is replaced only with
    ``--overwrite``, and the folder it goes into must exist or be creatable and be
    writable.

    Raises:
      ValueError: ``path`` is an input, or a folder where a file is expected.
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      PermissionError: its folder cannot be written.
    """
    target = os.path.realpath(os.fspath(path))
    for item in inputs:
        if item is not None and os.path.realpath(os.fspath(item)) == target:
            raise ValueError(f"{flag}={path} is also an input of this command; "
                             "write the output to another file")
    if os.path.isdir(target):
        raise ValueError(f"{flag}={path} is a folder; expected a file path")
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{flag}={path} exists; pass --overwrite to replace it, or "
                              "choose a new file")
    _check_creatable(os.path.dirname(target), f"{flag}={path}")
    return target


def _check_creatable(folder, shown):
    """``folder`` exists or can be created, and files can be written into it."""
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{shown}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{shown}: cannot write into {existing}")


def is_within(path, folder) -> bool:
    """``path`` is ``folder`` or inside it (after resolving links)."""
    path, folder = os.path.realpath(os.fspath(path)), os.path.realpath(os.fspath(folder))
    return os.path.commonpath([path, folder]) == folder


def check_output_dir(path, files=(), inputs=(), overwrite: bool = False,
                     flag: str = "--output_dir") -> str:
    """Checks, before any work, that the folder ``path`` may receive ``files``; returns it absolute.

    The rule for a folder of outputs: it is not an input folder (``inputs``: files and
    folders, e.g. a dataset root), not inside one and does not contain one; none of
    ``files`` (names relative to it) is an input file; an existing one is replaced only
    with ``--overwrite``; the folder exists or can be created, and is writable. Other
    files already in the folder (a training workdir's model, say) are left alone.

    Raises:
      ValueError, FileExistsError, PermissionError: as `check_output`.
    """
    target = os.path.realpath(os.fspath(path))
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"{flag}={path} is a file; expected a folder")
    for item in inputs:
        if item is None:
            continue
        source = os.path.realpath(os.fspath(item))
        if os.path.isdir(source):
            mixed = is_within(target, source) or is_within(source, target)
        else:
            mixed = source == target or source in (os.path.join(target, n) for n in files)
        if mixed:
            raise ValueError(f"{flag}={path} would mix outputs with the input {item}; "
                             "choose a folder outside the inputs")
    if not overwrite:
        for name in files:
            if os.path.exists(os.path.join(target, name)):
                raise FileExistsError(f"{flag}={path} already holds {name}; pass --overwrite "
                                      "to replace it, or choose a new folder")
    _check_creatable(target, f"{flag}={path}")
    return target


def remove_leftovers(path) -> list:
    """Deletes temporary files an interrupted `output_path` write left beside ``path``.

    Only names of this module's own pattern (``.<name>.<pid>-<8 hex>...``) are touched.

    Returns:
      the removed paths.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return []
    pattern = re.compile(r"\.%s\.\d+-[0-9a-f]{8}.*\Z" % re.escape(os.path.basename(path)))
    removed = []
    for name in os.listdir(directory):
        full = os.path.join(directory, name)
        if pattern.match(name) and os.path.isfile(full):
            os.remove(full)
            removed.append(full)
    return removed
