"""Progress lines for a decoding eval: instances done over the whole mixture, instances/s, new tokens/s, ETA."""
from __future__ import annotations

import time


def format_duration(seconds: float) -> str:
    """12:05 under an hour, 1:02:03 from an hour: the one way run logs and eval progress show a duration."""
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Count finished instances and print a line every `every_s` seconds (and at the end).

    The rate runs from the first finished instance, not from the start: the first one pays for compiling
    the decoder, which would make the ETA read hours. Until MIN_WINDOW_S have passed since then it runs from the
    start: a batch that finishes together would otherwise read as thousands of instances/s.
    """

    MIN_WINDOW_S = 5.0

    def __init__(self, total: int, label: str, *, resumed: int = 0, every_s: float = 10.0, clock=time.monotonic,
                 out=print):
        self.total, self.label, self.resumed, self.every_s = total, label, resumed, every_s
        self.clock, self.out = clock, out
        self.done, self.tokens = 0, 0
        self.started = clock()
        self._first: tuple[float, int, int] | None = None
        self._printed = self.started

    def update(self, new_tokens: int, tasks_done: int | None = None) -> None:
        """One more instance finished with `new_tokens` generated."""
        self.done += 1
        self.tokens += new_tokens
        now = self.clock()
        if self._first is None:
            self._first = (now, self.done, self.tokens)
        if self.done == self.total or now - self._printed >= self.every_s:
            self._printed = now
            self.out(self.line(now, tasks_done), flush=True)

    def line(self, now: float | None = None, tasks_done: int | None = None) -> str:
        """The progress line as of `now`."""
        now = self.clock() if now is None else now
        elapsed = now - self.started
        parts = [f"[eval] {self.label}: {self.resumed + self.done}/{self.resumed + self.total} instances"]
        if self.resumed:
            parts[0] += f" ({self.resumed} resumed)"
        if tasks_done is not None:
            parts.append(f"{tasks_done} task(s) complete")
        t0, n0, k0 = self._first or (now, self.done, self.tokens)
        if now - t0 < self.MIN_WINDOW_S:
            t0, n0, k0 = self.started, 0, 0
        if now > t0 and self.done > n0:
            rate = (self.done - n0) / (now - t0)
            parts.append(f"{rate:.2f} instances/s, {(self.tokens - k0) / (now - t0):.1f} new tokens/s")
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}" if self.done < self.total else "done")
        parts.append(f"elapsed {format_duration(elapsed)}")
        return ", ".join(parts)
