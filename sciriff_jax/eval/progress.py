"""Progress lines for a decoding eval: instances done, prompt tokens prefilled, tokens generated, their rates, ETA.

The decoder reports its work after every device call (`step`), not only when an instance finishes: with 32
slots and long answers the first instance can finish many minutes in, and a user must see the work move.
"""
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
                 out=print, work_total: tuple[int, int] | None = None):
        self.total, self.label, self.resumed, self.every_s = total, label, resumed, every_s
        self.clock, self.out = clock, out
        self.done, self.tokens = 0, 0
        self.started = clock()
        self._first: tuple[float, int, int] | None = None
        self._printed = self.started
        # (prompt tokens, new-token budget) of the whole decode, and the decoder's latest WorkCount.
        self.work_total, self.work = work_total, None

    def step(self, work) -> None:
        """The decoder finished a device call; `work` is its `decoding.scheduler.WorkCount` so far. Prints the
        first time (the programs are compiled) and then every `every_s` seconds."""
        first = self.work is None
        self.work = work
        now = self.clock()
        if first or now - self._printed >= self.every_s:
            self._printed = now
            self.out(self.line(now), flush=True)

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
        if self.work is not None and self.work_total is not None:
            parts.extend(self._work_parts())
        else:
            parts.extend(self._instance_parts(now))
        parts.append(f"elapsed {format_duration(elapsed)}")
        return ", ".join(parts)

    def _instance_parts(self, now: float) -> list[str]:
        """Rates and ETA from finished instances (when the decoder reports no work counts)."""
        t0, n0, k0 = self._first or (now, self.done, self.tokens)
        if now - t0 < self.MIN_WINDOW_S:
            t0, n0, k0 = self.started, 0, 0
        if not (now > t0 and self.done > n0):
            return []
        rate = (self.done - n0) / (now - t0)
        return [f"{rate:.2f} instances/s, {(self.tokens - k0) / (now - t0):.1f} new tokens/s",
                f"ETA {format_duration((self.total - self.done) / rate)}" if self.done < self.total else "done"]

    def _work_parts(self) -> list[str]:
        """Prompt tokens prefilled and new tokens generated, with the decoder's own rates (device-call time after
        each kind's first, compiling, call), and an ETA bound: the rest of the prompts at the prefill rate plus the
        rest of the token budget (as if no row stopped early) at the decode rate."""
        w, (prompt_total, budget) = self.work, self.work_total
        prefill_rate, decode_rate = w.prefill_rate(), w.decode_rate()
        # Tokens the unfinished rows may still generate: the budget less what finished rows were allowed and
        # what running rows already made (work.generated counts EOS tokens, which answers leave out).
        allowed_done = budget * self.done // max(self.total, 1)
        left_new = max(0, budget - allowed_done - (w.generated - self.tokens - self.done))
        left_prompt = max(0, prompt_total - w.prompt_tokens)
        parts = [f"prompts {w.prompt_tokens:,}/{prompt_total:,} tokens prefilled"
                 + (f" ({prefill_rate:.0f} tokens/s)" if prefill_rate else ""),
                 f"{w.generated:,} new tokens" + (f" ({decode_rate:.1f} tokens/s)" if decode_rate else "")]
        if self.done >= self.total:
            parts.append("done")
        elif (prefill_rate or not left_prompt) and decode_rate:
            parts.append(f"ETA <= {format_duration(left_prompt / (prefill_rate or 1.0) + left_new / decode_rate)}")
        return parts
