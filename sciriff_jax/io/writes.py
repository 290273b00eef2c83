"""Writes that fail as a user can act on, and lose nothing: an OS error names the file it was writing (a failed flush
on a full disk carries no file name of its own); a record rewritten whole goes through a temporary sibling and a
rename, so a failed write leaves the old file; a line appended and cut short is taken back, so the file keeps exactly
the lines before it. The top-level printer (run/errors.py) shows such an error as `path: ENOSPC: No space left on
device`.
"""
from __future__ import annotations

import contextlib
import os

from sciriff_jax.io import paths


def named(err: OSError, path) -> OSError:
    """`err` naming `path` (same errno and OS words), the original as its cause; `err` itself when it names a file."""
    if err.filename is not None or not err.errno:
        return err
    out = type(err)(err.errno, err.strerror or os.strerror(err.errno), os.fspath(path))
    out.__cause__ = err
    return out


@contextlib.contextmanager
def naming(path):
    """Inside: an OSError that names no file is raised again naming `path`."""
    try:
        yield
    except OSError as err:
        out = named(err, path)
        if out is err:
            raise
        raise out from err


def write_text(path, text: str, encoding: str = "utf-8") -> None:
    """Replace `path` with `text` whole or not at all (a temporary sibling renamed over it; a URL's object store
    writes whole objects already). An error names `path`, not the temporary file."""
    path = paths.resolve(path)
    if paths.is_url(path):
        with naming(path):
            path.write_text(text, encoding=encoding)
        return
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.write_text(text, encoding=encoding)
        tmp.replace(path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(err.errno, err.strerror or os.strerror(err.errno or 0), os.fspath(path)) from err


def append_text(path, text: str, encoding: str = "utf-8") -> None:
    """Append `text` to `path`; a failed write (disk full mid-line) is truncated back, so the file keeps exactly
    what it held. Opened per call: TF's gfile (epath's gs:// backend) only opens files as context managers."""
    path = paths.resolve(path)
    local = not paths.is_url(path)
    size = os.path.getsize(path) if local and os.path.exists(path) else None
    try:
        with path.open("a", encoding=encoding) as f:
            f.write(text)
    except OSError as err:
        if size is not None:
            with contextlib.suppress(OSError):
                os.truncate(path, size)
        out = named(err, path)
        if out is err:
            raise
        raise out from err
