"""Run paths (MODEL_DIR, checkpoints, eval outputs): a local path or a URL such as gs://bucket/run.

Everything that reads or writes them goes through `etils.epath`, as Orbax does: the local filesystem for a path;
for a URL, TensorFlow's gfile where TensorFlow is installed (imported on first use of a URL, never for local
paths), else fsspec (gcsfs, s3fs). pathlib would turn `gs://b/x` into `<cwd>/gs:/b/x`.
"""
from __future__ import annotations

import os
import pathlib
import re

from etils import epath

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path) -> bool:
    """True for `scheme://...` (gs://, s3://, ...), False for a local path."""
    return _URL.match(os.fspath(path)) is not None


def resolve(path) -> epath.Path:
    """`path` as an epath.Path: a URL exactly as given, a local path with `~` expanded and made absolute."""
    match = _URL.match(os.fspath(path))
    if match is None:
        return epath.Path(pathlib.Path(path).expanduser().absolute())  # Orbax refuses relative paths
    try:
        return epath.Path(os.fspath(path))
    except KeyError:
        raise ValueError(f"{os.fspath(path)!r}: etils.epath has no filesystem for '{match.group(0)}' (it supports "
                         "gs://, s3://, az:// and hf://). Use one of those or a local path.") from None
