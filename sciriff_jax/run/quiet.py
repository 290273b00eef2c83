"""Quiet start-up: the chatter TensorFlow, absl, XLA and TFDS write to stderr kept off a command's output.

TensorFlow 2.2x logs through absl before anyone calls `absl::InitializeLog()`, so `TF_CPP_MIN_LOG_LEVEL` no longer
hides its import banner (oneDNN, 'Could not find cuda drivers') nor XLA's `failed call to cuInit` on a machine
without a GPU; they are written by C++ straight to file descriptor 2. A command that is the whole process therefore
passes its stderr through a filter process (`start`): lines in those libraries' log format at INFO level, and the
known start-up warnings listed in NOISE, are dropped; everything else (our `error:` lines, tracebacks, any other
warning or error of theirs) passes unchanged. The filter is a separate process, so a crash's last words still come
through. `--verbose` or SCIRIFF_JAX_VERBOSE=1 turns all of it off (TFDS's banner and progress bars come back too:
seqio_tasks.sources reads the same variable).
"""
from __future__ import annotations

import atexit
import os
import re
import select
import signal
import sys
import time

VERBOSE_ENV = "SCIRIFF_JAX_VERBOSE"
VERBOSE_FLAG = "--verbose"
ABSL_PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# absl's C++ and Python format (I1206 06:31:01.123456  1234 file.cc:12] ...) and TensorFlow's older own one
# (2025-09-17 14:44:05.157831: I external/.../file.cc:32] ...).
_NATIVE = re.compile(rb"^(?:(?P<sev>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ |"
                     rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<sev2>[IWEF]) )(?P<where>\S+:\d+)\] (?P<what>.*)")
# Warnings and errors of theirs that say nothing a user of this project can act on.
NOISE = (
    rb"failed call to cuInit",                 # XLA/TF probing CUDA where there is no GPU (JAX reports its own)
    rb"Could not find cuda drivers",
    rb"Unable to register cu(?:DNN|FFT|BLAS) factory",
    rb"TF-TRT Warning",
    rb"oneDNN custom operations are on",
    rb"computation placer already registered",
    rb"The calling iterator did not fully read the dataset being cached",  # tf.data: our bounded reads (take)
)
_NOISE = re.compile(b"|".join(NOISE))
_CONTINUATION = re.compile(rb"^To enable the following instructions: .*rebuild TensorFlow with the appropriate "
                           rb"compiler flags\.")

_STATE: dict = {}  # the running filter: {"pid", "stderr"}


def is_verbose() -> bool:
    """Whether the libraries' messages are wanted ($SCIRIFF_JAX_VERBOSE set and not 0)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def is_noise(line: bytes) -> bool:
    """Whether one stderr line is start-up chatter of TensorFlow / absl / XLA / TFDS (see the module docstring)."""
    text = line.rstrip(b"\r\n")
    if text == ABSL_PRE_INIT.encode() or _CONTINUATION.match(text):
        return True
    native = _NATIVE.match(text)
    if native is None:
        return False
    return (native["sev"] or native["sev2"]) == b"I" or _NOISE.search(native["what"]) is not None


def split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """(argv without --verbose, whether it was given)."""
    return [a for a in argv if a != VERBOSE_FLAG], VERBOSE_FLAG in argv


def start(verbose: bool = False) -> None:
    """For a command that is the whole process, before TensorFlow or JAX load: quiet their start-up (idempotent).
    `verbose` (or $SCIRIFF_JAX_VERBOSE) leaves every message as it is and tells the data layer to do the same."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    if is_verbose() or _STATE:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's own logging, once absl is initialised
    if not hasattr(os, "fork"):
        return
    try:
        original = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep quiet
        return
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        _filter_forever(read_end, original)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    _STATE.update(pid=pid, stderr=original)
    atexit.register(stop)


def stop(wait_s: float = 2.0) -> None:
    """Give fd 2 back to the real stderr and let the filter write what it holds (called at exit; idempotent)."""
    if not _STATE:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    pid, original = _STATE.pop("pid"), _STATE.pop("stderr")
    os.dup2(original, 2)  # our copy of the pipe closes: the filter sees the end once child processes close theirs
    os.close(original)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.01)


def _filter_forever(read_end: int, out: int) -> None:
    """The filter process: copy `read_end` to `out` line by line without the noise, until every writer is gone."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):  # Ctrl-C reaches the command; we wait for its words
        signal.signal(sig, signal.SIG_IGN)
    try:
        pending = b""
        while True:
            ready, _, _ = select.select([read_end], [], [], 0.2)
            if not ready:  # a partial line (a prompt, a progress bar) waits no longer than this
                pending = _write(out, pending, final=True)
                continue
            chunk = os.read(read_end, 65536)
            if not chunk:
                _write(out, pending, final=True)
                break
            pending = _write(out, pending + chunk, final=False)
    finally:
        os._exit(0)


def _write(out: int, data: bytes, final: bool) -> bytes:
    """Write the complete lines of `data` that are not noise (all of it when `final`); return what is left."""
    lines = data.splitlines(keepends=True)
    rest = b"" if final or not lines or lines[-1].endswith((b"\n", b"\r")) else lines.pop()
    kept = b"".join(line for line in lines if not is_noise(line))
    while kept:
        try:
            kept = kept[os.write(out, kept):]
        except InterruptedError:
            continue
        except OSError:  # the real stderr is gone: nothing more can be shown
            return b""
    return rest
