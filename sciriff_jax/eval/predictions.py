"""Predictions on disk while an eval runs: kept as they finish, reused by a rerun, final files in input order.

`predictions/<task>.partial.jsonl` collects each finished prediction (appended and flushed at once on a local
disk; rewritten every `FLUSH_S` seconds on a URL, which has no append). When a task is complete its
`predictions/<task>.jsonl` is written in the examples' order and the partial file removed. A rerun into the
same folder reuses both, so an eval stopped halfway (preemption, a crash) decodes only what is left, and one
asking for fewer examples keeps (and scores) every prediction already there: a rerun never shrinks the file.
`predictions/settings.json` records what the predictions were decoded with; a rerun with other settings is
refused, so stale predictions are never mixed in.
"""
from __future__ import annotations

import json
import time

from sciriff_jax.io import paths, writes

FLUSH_S = 30.0


class PredictionStore:
    """Finished predictions of one eval output folder, by task and `_instance_id`."""

    def __init__(self, output_dir, settings: dict):
        self.dir = paths.resolve(output_dir) / "predictions"
        with writes.naming(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
        self.local = not paths.is_url(output_dir)
        self._pending: dict[str, list[dict]] = {}
        self._flushed = time.monotonic()
        stamp = self.dir / "settings.json"
        settings = json.loads(json.dumps(settings, default=str))
        if stamp.exists():
            old = json.loads(stamp.read_text())
            if old != settings:
                changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise ValueError(f"{self.dir} holds predictions decoded with other settings ({', '.join(changed)}: "
                                 f"{ {k: old.get(k) for k in changed} } then, { {k: settings.get(k) for k in changed} } "
                                 "now); pass another OUTPUT_DIR, or delete that folder to decode from scratch.")
        else:
            writes.write_text(stamp, json.dumps(settings, indent=2, sort_keys=True) + "\n")

    def _final(self, task: str):
        return self.dir / f"{task}.jsonl"

    def _partial(self, task: str):
        return self.dir / f"{task}.partial.jsonl"

    def finished(self, task: str) -> dict[str, dict]:
        """{_instance_id: record} already decoded for a task (its final file, else its partial file)."""
        for path in (self._final(task), self._partial(task)):
            if path.exists():
                return {r["_instance_id"]: r for r in _read(path)}
        return {}

    def add(self, task: str, record: dict) -> None:
        """Keep one finished prediction (on disk now for a local folder, within FLUSH_S for a URL)."""
        if self.local:  # a failed write (disk full) names the file and keeps the rows before it
            writes.append_text(self._partial(task), json.dumps(record, ensure_ascii=False) + "\n")
            return
        self._pending.setdefault(task, []).append(record)
        if time.monotonic() - self._flushed > FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Rewrite the partial files of a URL folder with everything finished so far."""
        for task, new in self._pending.items():
            if new:
                rows = list(self.finished(task).values()) + new
                writes.write_text(self._partial(task), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                new.clear()
        self._flushed = time.monotonic()

    def complete(self, task: str, records: list[dict]) -> str:
        """Write a task's final predictions (input order) and drop its partial file; returns the path."""
        self._pending.pop(task, None)
        path = self._final(task)
        # Whole or not at all: a failed write leaves the partial file (and any earlier final one) as they were.
        writes.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        if self._partial(task).exists():
            self._partial(task).unlink()
        return str(path)


def _read(path) -> list[dict]:
    """The records of a predictions file; a last line cut short (the run was killed mid-write) is dropped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                break  # decoded again on this run
            raise ValueError(f"{path}:{n}: not a JSON object; delete the file to decode its task again") from None
    return rows
