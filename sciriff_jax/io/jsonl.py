"""JSON Lines with errors that name file:line (pure Python, so `sciriff-jax score` can use it without TensorFlow)."""
import json
from typing import Iterator


def read_objects(path, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) per non-blank line; a malformed line or a non-object raises `error` naming file:line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path}:{lineno}: not a JSON object ({err.msg} at column {err.colno}); "
                            "expected one JSON object per line") from None
            if not isinstance(row, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row
