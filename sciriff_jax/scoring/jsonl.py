"""JSON Lines with errors that name file:line (pure Python, so `sciriff-jax score` can use it without TensorFlow)."""
import json
from typing import Iterator


def read_objects(path, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) per non-blank line; a line that is not UTF-8, not JSON or not an object raises
    `error` naming file:line."""
    # Bytes, decoded line by line: a decoding error then names its line, which a text-mode file cannot.
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                hint = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
                raise error(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
                            f"{hint}; save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path}:{lineno}: not a JSON object ({err.msg} at column {err.colno}); "
                            "expected one JSON object per line") from None
            except RecursionError:
                raise error(f"{path}:{lineno}: JSON nested too deeply to read") from None
            except ValueError as err:  # e.g. an integer longer than Python's int() limit (4,300 digits)
                raise error(f"{path}:{lineno}: unreadable JSON value ({err})") from None
            if not isinstance(row, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row
