"""How a command ends on an error: one line on stderr naming what and where, exit 2; `--debug` for the traceback.

Shared by `python -m sciriff_jax.main` and every `sciriff-jax` subcommand; imports nothing heavy, so `sciriff-jax
score` and `--help` still start without JAX.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import sys
from typing import Callable, Sequence

from sciriff_jax.run import quiet

EXIT_ERROR = 2  # any error that stops a command (README, Running jobs); 1 is a verdict (verify: corrupt, aot: no fit)
DEBUG_FLAG = "--debug"
# gin appends "  In call to configurable 'finetune' (<function ...>)" lines to exceptions raised under it.
_GIN_CONTEXT = re.compile(r"^\s*In call to configurable .*$", re.MULTILINE)


def split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """(argv without --debug, whether it was given)."""
    argv = list(argv)
    return [a for a in argv if a != DEBUG_FLAG], DEBUG_FLAG in argv


def unwrap(err: BaseException) -> BaseException:
    """The exception itself, not the proxy gin re-raises to append its call context (a subclass of the same name,
    whose OSError fields are empty)."""
    while (len(type(err).__mro__) > 1 and type(err).__name__ == type(err).__mro__[1].__name__
           and isinstance(err.__context__, type(err).__mro__[1])):
        err = err.__context__
    return err


def message(err: BaseException) -> str:
    """The user-facing text of `err`: for an OS error its path and the OS's words, else its message without gin's
    call context."""
    err = unwrap(err)
    if isinstance(err, OSError) and err.strerror:
        code = f"{errno.errorcode.get(err.errno, err.errno)}: " if err.errno else ""
        where = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
        return f"{where}: {code}{err.strerror}" if where else f"{code}{err.strerror}"
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str) else str(err)
    text = _GIN_CONTEXT.sub("", text).strip()
    return text or type(err).__name__


def report(err: BaseException) -> int:
    """Print `err` as `error: ...` on stderr (no traceback) and return the exit code."""
    if isinstance(err, (ValueError, KeyError, OSError, RuntimeError)):  # ours say what and where, and what to do
        text = message(err)
    else:  # not one we raise: its first line, and where to see more
        first = message(err).splitlines()[0]
        text = f"{type(unwrap(err)).__name__}: {first}\n(an unexpected error: rerun with {DEBUG_FLAG} for the traceback)"
    print(f"error: {text}", file=sys.stderr, flush=True)
    return EXIT_ERROR


def run_reporting(command: Callable[[], int], *, debug: bool, exit_process: bool = False) -> int:
    """`command()`'s exit code; an exception becomes one `error:` line and exit 2 (re-raised with `debug`).

    `exit_process`: the call is the whole process (argv came from the command line), so an error ends it at once
    after flushing: threads a failed run leaves behind (an input pipeline, an async checkpoint) cannot hang it or
    print their shutdown noise after the message."""
    try:
        return command()
    except Exception as err:  # noqa: BLE001 -- the top level: every error ends in one line (KeyboardInterrupt passes)
        if debug:
            raise
        code = report(err)
    if exit_process:
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End the process with `code` after flushing stdout, stderr, the log handlers and the stderr filter (quiet)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    quiet.stop()
    os._exit(code)
