"""Checksums of a checkpoint's files: recorded once Orbax has committed a step, verified before it is restored.

Orbax's commit is atomic, but it says nothing about the bytes afterwards: a flipped byte restores as a wrong number
(and a NaN later), a truncated or deleted metadata file crashes deep inside TensorStore. So every file of a step gets
a SHA-256 in `sciriff_checksums-<i>-of-<n>.json` inside the step directory, and a step is "verified" when every part
is present and every listed file has its recorded size and digest. On a multi-host run each process hashes (and
later verifies) its own share of the files, so no host reads the whole checkpoint back.
"""
from __future__ import annotations

import hashlib
import json
import re

from etils import epath

from sciriff_jax.io import writes

PREFIX = "sciriff_checksums-"
_PART = re.compile(r"^sciriff_checksums-(\d{5})-of-(\d{5})\.json$")
_CHUNK = 16 * 2 ** 20


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files do not match their recorded checksums, or that has none; the message says which."""


def _files(step_dir: epath.Path) -> list[str]:
    """Relative paths of every file under `step_dir` except the checksum parts, sorted (the same on every host)."""
    out, stack = [], [step_dir]
    while stack:
        folder = stack.pop()
        for child in folder.iterdir():
            if child.is_dir():
                stack.append(child)
            elif not _PART.match(child.name) and not child.name.startswith(f".{PREFIX}"):  # nor a part being written
                out.append(str(child.relative_to(step_dir)))
    return sorted(out)


def _digest(path: epath.Path) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def record(step_dir, process_index: int = 0, process_count: int = 1) -> None:
    """Hash this process's share of a committed step's files and write its checksum part."""
    step_dir = epath.Path(step_dir)
    mine = _files(step_dir)[process_index::process_count]
    entries = {name: list(_digest(step_dir / name)) for name in mine}
    part = step_dir / f"{PREFIX}{process_index:05d}-of-{process_count:05d}.json"
    # Whole or not at all (temporary sibling + rename): a part cut short by a full disk would leave the step looking
    # sealed; without it the step is unverified, and a resume takes the previous verified one.
    writes.write_text(part, json.dumps({"algorithm": "sha256", "files": entries}, indent=0))


def _recorded(step_dir: epath.Path) -> dict[str, list]:
    """Every part's {file: [size, sha256]}; raises CorruptCheckpointError when parts are missing or unreadable."""
    parts = {m.groups(): p for p in step_dir.iterdir() if (m := _PART.match(p.name))}
    if not parts:
        raise CorruptCheckpointError(
            f"{step_dir}: no checksums recorded (it was written by a sciriff-jax without checksums, or the run stopped "
            "between Orbax's commit and the checksums). If you trust it, record them with `sciriff-jax verify --seal "
            f"{step_dir}`.")
    counts = {int(n) for _, n in parts}
    n = counts.pop() if len(counts) == 1 else None
    missing = [] if n is None else [i for i in range(n) if (f"{i:05d}", f"{n:05d}") not in parts]
    if n is None or missing:
        raise CorruptCheckpointError(f"{step_dir}: incomplete checksum parts {sorted(p.name for p in parts.values())}"
                                     f"{f' (missing part(s) {missing} of {n})' if missing else ''}")
    entries: dict[str, list] = {}
    for path in parts.values():
        try:
            entries.update(json.loads(path.read_text())["files"])
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptCheckpointError(f"{path}: unreadable checksum file ({err})") from None
    return entries


def verify(step_dir, process_index: int = 0, process_count: int = 1) -> str | None:
    """What is wrong with this process's share of a step's files (missing, truncated, changed), or None when intact."""
    step_dir = epath.Path(step_dir)
    try:
        entries = _recorded(step_dir)
    except CorruptCheckpointError as err:
        return str(err)
    for name in sorted(entries)[process_index::process_count]:
        size, digest = entries[name]
        path = step_dir / name
        if not path.exists():
            return f"{path}: missing (recorded {size} bytes)"
        got_size, got = _digest(path)
        if got_size != size:
            return f"{path}: {got_size} bytes, recorded {size} (truncated or overwritten)"
        if got != digest:
            return f"{path}: contents changed (sha256 {got[:12]}..., recorded {digest[:12]}...)"
    return None
