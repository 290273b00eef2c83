"""One run per MODEL_DIR: a lease in MODEL_DIR/run.lock/, on local disk and on object stores alike.

The lock is a sequence of lease files `run.lock/<n>.json` (holder id, host, pid, start time, last renewal, lease
length); the highest n is the current one. Taking the lock is an exclusive create of the next number, which exactly
one contender wins: link(2) of a complete file on a local or NFS path, and fsspec's exclusive-create mode "xb" on a URL,
which gcsfs sends as a generation-conditioned write (`ifGenerationMatch=0`) and s3fs as `If-None-Match: *`. Nothing
is ever overwritten by a contender, so two runs cannot both believe they hold MODEL_DIR.

The holder renews its lease file every lease/4 seconds from a thread. A lease is stale when it was released, when its
holder is on this host and its process is gone, or when it was not renewed within its lease (a holder on another
host that died); a stale lease is taken over with a log line. A holder that finds a newer lease file than its own
(it stalled for longer than its lease and was taken over) has lost MODEL_DIR and stops before its next checkpoint.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import socket
import threading
import time
import uuid

from sciriff_jax.io import paths

LOCK_DIR = "run.lock"
DEFAULT_LEASE_S = 120.0
_LEASE = re.compile(r"^(\d{8})\.json$")


class RunLockedError(RuntimeError):
    """MODEL_DIR is held by another live run; the message names it."""


class LockLostError(RuntimeError):
    """This run's lease on MODEL_DIR was taken over by another run."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a live process from a later one with the same pid), where /proc has it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]  # state Z: a zombie is dead; field 22 of stat is starttime


def _alive(pid: int, start: str | None) -> bool:
    """True while process `pid` (started at `start`, where known) runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = _process_start(pid)
    if now is None:
        return not os.path.exists(f"/proc/{pid}")  # a zombie has a /proc entry; without /proc, trust kill(0)
    return start is None or now == start  # a different start time: the pid was reused by a later process


class _LocalStore:
    """Lease files in a local (or NFS) folder."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def names(self) -> list[str]:
        return os.listdir(self.folder)

    def _staged(self, name: str, data: bytes) -> str:
        tmp = os.path.join(self.folder, f".{name}.{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
        return tmp

    def create(self, name: str, data: bytes) -> bool:
        # link(2) publishes a complete file and fails when the name exists (also on NFS): a contender never reads
        # a lease that O_EXCL created but has not written yet.
        tmp = self._staged(name, data)
        try:
            os.link(tmp, os.path.join(self.folder, name))
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)
        return True

    def write(self, name: str, data: bytes) -> None:
        os.replace(self._staged(name, data), os.path.join(self.folder, name))  # readers never see half a renewal

    def read(self, name: str) -> bytes:
        with open(os.path.join(self.folder, name), "rb") as f:
            return f.read()

    def remove(self, name: str) -> None:
        try:
            os.remove(os.path.join(self.folder, name))
        except FileNotFoundError:
            pass


class _ObjectStore:
    """Lease files under a URL, through fsspec (an object write is atomic; "xb" creates only if absent)."""

    def __init__(self, url: str):
        import fsspec  # not a core dependency: it comes with gcsfs / s3fs, which only a lock on a URL needs

        try:
            self.fs, self.folder = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as err:
            raise RunLockedError(f"cannot lock {url}: fsspec has no filesystem for it ({err}). Install its fsspec "
                                 "backend (gcsfs for gs://, s3fs for s3://).") from err
        self.fs.makedirs(self.folder, exist_ok=True)

    def names(self) -> list[str]:
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.folder, detail=False, refresh=True)]
        except FileNotFoundError:
            return []

    def create(self, name: str, data: bytes) -> bool:
        try:
            with self.fs.open(f"{self.folder}/{name}", "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True

    def write(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.folder}/{name}", data)

    def read(self, name: str) -> bytes:
        return self.fs.cat_file(f"{self.folder}/{name}")

    def remove(self, name: str) -> None:
        try:
            self.fs.rm_file(f"{self.folder}/{name}")
        except FileNotFoundError:
            pass


class RunLock:
    """`with RunLock(model_dir): ...` holds MODEL_DIR for one run (see the module docstring for the design)."""

    def __init__(self, model_dir, *, lease_s: float = DEFAULT_LEASE_S, host: str | None = None, log=None):
        self.path = os.fspath(paths.resolve(model_dir) / LOCK_DIR)
        self.lease_s, self.log = float(lease_s), log or _print
        self.record = {"holder": uuid.uuid4().hex, "host": host or socket.gethostname(), "pid": os.getpid(),
                       "pid_start": _process_start(os.getpid()),
                       "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                       "renewed": time.time(), "lease_s": self.lease_s, "released": False}
        self.number: int | None = None
        self._store = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    # --- reading leases

    def _numbers(self) -> list[int]:
        return sorted(int(m.group(1)) for n in self._store.names() if (m := _LEASE.match(n)))

    def _read(self, number: int) -> dict | None:
        try:
            return json.loads(self._store.read(f"{number:08d}.json"))
        except (OSError, ValueError):
            return None  # removed meanwhile, or not a lease file we wrote

    def _stale(self, lease: dict | None) -> str | None:
        """Why `lease` no longer holds MODEL_DIR, or None while it does."""
        if lease is None:
            return "its lease file is unreadable"
        if lease.get("released"):
            return "released"
        if lease.get("host") == self.record["host"] and not _alive(int(lease.get("pid", -1)), lease.get("pid_start")):
            return f"process {lease.get('pid')} is gone"
        expires = float(lease.get("renewed", 0)) + float(lease.get("lease_s", 0))
        if time.time() > expires:
            return f"its lease expired at {_when(expires)} (not renewed for {time.time() - expires:.0f} s past it)"
        return None

    # --- taking, renewing, releasing

    def acquire(self) -> "RunLock":
        """Take MODEL_DIR, taking over a stale lease with a log line; RunLockedError names a live holder."""
        self._store = _ObjectStore(self.path) if paths.is_url(self.path) else _LocalStore(self.path)
        for _ in range(20):  # each pass either wins, refuses, or saw another contender win a race
            numbers = self._numbers()
            current = numbers[-1] if numbers else 0
            previous = self._read(current) if current else None
            why = self._stale(previous) if current else "none"
            if why is None:
                raise RunLockedError(_held_message(self.path, previous))
            self.record["renewed"] = time.time()
            if self._store.create(f"{current + 1:08d}.json", _encode(self.record)):
                self.number = current + 1
                if previous is not None and why != "released":
                    self.log(f"took over the lock on {os.path.dirname(self.path)} from "
                             f"{_describe(previous)}: {why}")
                for old in numbers:  # superseded leases; the previous one is kept as the takeover's evidence
                    if old < current:
                        self._store.remove(f"{old:08d}.json")
                self._thread = threading.Thread(target=self._renew, daemon=True, name="run-lock-lease")
                self._thread.start()
                return self
        raise RunLockedError(f"could not take {self.path}: other runs keep taking it; is a launcher looping?")

    def _successor(self) -> dict | None:
        return self._read(self.number + 1) if self.number + 1 in self._numbers() else None

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                successor = self._successor()
                if successor is not None:
                    self._lost = f"{_describe(successor)} took MODEL_DIR over"
                    self.log(f"ERROR: lost the lock on {self.path}: {self._lost}")
                    return
                self.record["renewed"] = time.time()
                self._store.write(f"{self.number:08d}.json", _encode(self.record))
            except OSError as err:  # a storage hiccup: retried at the next renewal, before the lease runs out
                self.log(f"WARNING: could not renew the lock {self.path}: {err}")

    def check(self) -> None:
        """Raise LockLostError when another run has taken MODEL_DIR over (called before every checkpoint save)."""
        if self._lost is None and self.number is not None and self._successor() is not None:
            self._lost = f"{_describe(self._successor() or {})} took MODEL_DIR over"
        if self._lost is not None:
            raise LockLostError(f"this run no longer holds {self.path}: {self._lost}. It stopped before writing "
                                "into MODEL_DIR again; check which run should continue.")

    def release(self) -> None:
        """Stop renewing and mark the lease released (the next run takes it without a takeover)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.number is not None and self._lost is None and self._successor() is None:
            self.record["released"] = True
            self._store.write(f"{self.number:08d}.json", _encode(self.record))
        self.number = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def read_holder(model_dir) -> dict | None:
    """The current lease record of MODEL_DIR (None when it was never locked)."""
    lock = RunLock(model_dir)
    lock._store = _ObjectStore(lock.path) if paths.is_url(lock.path) else _LocalStore(lock.path)
    numbers = lock._numbers()
    return lock._read(numbers[-1]) if numbers else None


def _print(message: str) -> None:
    print(f"[sciriff-jax] {message}", flush=True)


def _encode(record: dict) -> bytes:
    return json.dumps(record, indent=1).encode()


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def _describe(lease: dict) -> str:
    return (f"run {lease.get('holder', '?')[:8]} (host {lease.get('host')}, pid {lease.get('pid')}, started "
            f"{lease.get('started')})")


def _held_message(path: str, lease: dict) -> str:
    expires = float(lease.get("renewed", 0)) + float(lease.get("lease_s", 0))
    return (f"MODEL_DIR {os.path.dirname(path)} is in use by {_describe(lease)}; its lease was renewed at "
            f"{_when(float(lease.get('renewed', 0)))} and runs until {_when(expires)}. One run per MODEL_DIR: wait "
            "for it to finish, stop it, or use another MODEL_DIR. If that run is dead on another host, its lease "
            f"expires by itself in {max(expires - time.time(), 0):.0f} s.")
