"""Preemption notices: SIGTERM becomes a flag the training loop polls, so it saves a checkpoint before exiting."""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionGuard:
    """Turns SIGTERM (preemption notice) into a flag the loop polls, so it can save before exiting."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signals = signals
        self._flag = threading.Event()
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        print(f"[sciriff-jax] received signal {signum}: saving a checkpoint, then exiting", flush=True)
        self._flag.set()

    def requested(self) -> bool:
        """True once a signal arrived on any process (agreed across hosts so all save the same step)."""
        local = self._flag.is_set()
        if jax.process_count() == 1:
            return local
        return bool(np.any(multihost_utils.process_allgather(np.asarray(local, dtype=np.int32))))

    def __exit__(self, *exc):
        for s, prev in self._previous.items():
            signal.signal(s, prev)
        return False
