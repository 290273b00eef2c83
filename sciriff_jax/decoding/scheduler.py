"""Continuous-batching schedule (pure Python): which prompt runs in which slot, its pages, its prefill chunks.

The decoder keeps `slots` rows stepping together. A prompt waits until a slot is free and the page pool can
hold its prompt plus its new tokens (reserved up front, so a running row never needs a page that is not
there and nothing is ever evicted); its prompt is then prefilled in chunks whose lengths come from a short
ladder (multiples of `chunk_step` up to `chunk`), and it joins the decode rows. A row that finishes frees its
slot and pages, and the next waiting prompt takes them. The same class drives the real decoder
(`decoding/batcher.py`) and the length-forced simulation below, which counts the work of a schedule on a
length distribution without a model (`benchmarks/decode_work.py`).
"""
from __future__ import annotations

import collections
import dataclasses


def pages_for(tokens: int, page_size: int) -> int:
    """Pages that hold `tokens` positions."""
    return -(-int(tokens) // page_size)


def chunk_lengths(chunk: int, chunk_step: int) -> tuple[int, ...]:
    """The prefill chunk lengths compiled: chunk_step, 2 chunk_step, ..., chunk."""
    if chunk <= 0 or chunk_step <= 0 or chunk % chunk_step:
        raise ValueError(f"prefill chunk={chunk} must be a positive multiple of chunk_step={chunk_step}.")
    return tuple(range(chunk_step, chunk + 1, chunk_step))


@dataclasses.dataclass
class WorkCount:
    """Tokens of real work against tokens computed: prefill slots and decode row-steps (idle rows included)."""

    prompt_tokens: int = 0      # real prompt tokens prefilled
    prefill_computed: int = 0   # prefill token slots computed (rows x chunk length, padding included)
    decode_real: int = 0        # decode row-steps that fed a real generated token
    decode_computed: int = 0    # decode row-steps computed (rows x steps)
    generated: int = 0          # tokens produced (the first from prefill, EOS/stop included)
    prefill_calls: int = 0
    decode_calls: int = 0
    # Host time of the calls (the first of each kind compiles), and (tokens, seconds) of the calls after the first:
    # the steady rates. Timings, not work: two schedules of the same work are equal whatever their times.
    prefill_s: float = dataclasses.field(default=0.0, compare=False)
    decode_s: float = dataclasses.field(default=0.0, compare=False)
    prefill_warm: tuple = dataclasses.field(default=(0, 0.0), compare=False)
    decode_warm: tuple = dataclasses.field(default=(0, 0.0), compare=False)

    def time_call(self, kind: str, tokens: int, seconds: float) -> None:
        """Count the host time of one device call of `kind` ("prefill" or "decode") that did `tokens` tokens."""
        first = getattr(self, f"{kind}_calls") <= 1
        setattr(self, f"{kind}_s", getattr(self, f"{kind}_s") + seconds)
        if not first:
            n, t = getattr(self, f"{kind}_warm")
            setattr(self, f"{kind}_warm", (n + tokens, t + seconds))

    def prefill_rate(self) -> float | None:
        """Prompt tokens/s over the prefill calls after the first (None before there are any)."""
        n, t = self.prefill_warm
        return n / t if t > 0 else None

    def decode_rate(self) -> float | None:
        """New tokens/s over the decode calls after the first (None before there are any)."""
        n, t = self.decode_warm
        return n / t if t > 0 else None

    @property
    def useful_fraction(self) -> float:
        """(real prompt tokens + real decode row-steps) / (prefill slots + decode row-steps computed)."""
        computed = self.prefill_computed + self.decode_computed
        return (self.prompt_tokens + self.decode_real) / computed if computed else 1.0

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "useful_fraction": self.useful_fraction}


class PagePool:
    """Free-list of pages 1..num_pages-1 (page 0 is the scratch page unused table entries point at)."""

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, 0, -1))

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self, n: int) -> list[int] | None:
        if n > len(self._free):
            return None
        taken, self._free = self._free[len(self._free) - n:], self._free[:len(self._free) - n]
        return taken[::-1]

    def give(self, pages: list[int]) -> None:
        self._free.extend(pages)


@dataclasses.dataclass
class Request:
    """One prompt's progress through the schedule."""

    index: int
    length: int                 # prompt tokens
    max_new: int
    slot: int | None = None
    pages: list = dataclasses.field(default_factory=list)
    prefilled: int = 0          # prompt tokens already in the cache
    generated: int = 0
    finished: bool = False


class Scheduler:
    """Slots, pages and prefill chunks for a set of prompts, longest first."""

    def __init__(self, lengths: list[int], max_new: list[int], *, slots: int, page_size: int, num_pages: int,
                 chunk: int, chunk_step: int, prefill_rows: tuple[int, ...] = (1,)):
        self.requests = [Request(i, int(n), int(m)) for i, (n, m) in enumerate(zip(lengths, max_new))]
        self.slots: list[Request | None] = [None] * slots
        self.page_size, self.pool = page_size, PagePool(num_pages)
        self.ladder = chunk_lengths(chunk, chunk_step)
        # Row counts a prefill call may have (compiled shapes): the smallest that holds the group is used.
        self.prefill_rows = tuple(sorted(prefill_rows))
        # Longest prompts first: the long ones overlap with many short ones, and the tail is short rows.
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        self.waiting = collections.deque(self.requests[i] for i in order)
        self.work = WorkCount()
        for r in self.requests:
            if pages_for(r.length + r.max_new, page_size) > num_pages - 1:
                raise ValueError(f"scheduler: prompt {r.index} needs {r.length} + {r.max_new} positions, more "
                                 f"than the pool's {num_pages - 1} pages of {page_size} hold.")

    def admit(self) -> list[Request]:
        """Give free slots (and their pages) to waiting prompts in order; returns the newly admitted."""
        admitted = []
        for slot, holder in enumerate(self.slots):
            if holder is not None or not self.waiting:
                continue
            head = self.waiting[0]
            pages = self.pool.take(pages_for(head.length + head.max_new, self.page_size))
            if pages is None:
                break  # in order: a long prompt is not starved by shorter ones behind it
            self.waiting.popleft()
            head.slot, head.pages = slot, pages
            self.slots[slot] = head
            admitted.append(head)
        return admitted

    def prefill_groups(self, admitted: list[Request]):
        """Groups of up to max(prefill_rows) admitted prompts that are prefilled together."""
        most = self.prefill_rows[-1]
        for lo in range(0, len(admitted), most):
            yield admitted[lo:lo + most]

    def next_chunk(self, group: list[Request]) -> tuple[int, int, list[int]]:
        """(rows, chunk length, real tokens per row) of the next prefill call of the group's unfinished prompts;
        counts its work (dummy rows and padding included)."""
        real = [min(r.length - r.prefilled, self.ladder[-1]) for r in group]
        length = next(c for c in self.ladder if c >= max(real))
        rows = next(n for n in self.prefill_rows if n >= len(group))
        self.work.prefill_calls += 1
        self.work.prefill_computed += rows * length
        self.work.prompt_tokens += sum(real)
        return rows, length, real

    def finish(self, request: Request) -> None:
        """Free a finished row's slot and pages."""
        request.finished = True
        self.slots[request.slot] = None
        self.pool.give(request.pages)
        request.pages = []

    def active(self) -> list[Request]:
        """Rows that are decoding (prefilled, not finished)."""
        return [r for r in self.slots if r is not None and r.prefilled == r.length and not r.finished]

    def count_decode(self, steps: int, real_row_steps: int) -> None:
        """Count one decode call: every slot computes each step, `real_row_steps` of them for a live row."""
        self.work.decode_calls += 1
        self.work.decode_computed += len(self.slots) * steps
        self.work.decode_real += real_row_steps

    @property
    def done(self) -> bool:
        return not self.waiting and all(s is None for s in self.slots)


def simulate(lengths: list[int], answer_lengths: list[int], *, slots: int, page_size: int, num_pages: int,
             chunk: int, chunk_step: int, steps_per_call: int, prefill_rows: tuple[int, ...] = (1,)) -> WorkCount:
    """The work of the continuous batcher when prompt i produces exactly answer_lengths[i] tokens.

    Mirrors `batcher.ContinuousBatcher.run` call for call: admit, prefill (the first token comes from the
    prompt's last logits), then one decode call that runs until `steps_per_call` steps, all rows finished, or,
    while prompts are waiting, the first row finishing.
    """
    s = Scheduler(lengths, answer_lengths, slots=slots, page_size=page_size, num_pages=num_pages, chunk=chunk,
                  chunk_step=chunk_step, prefill_rows=prefill_rows)
    while not s.done:
        admitted = s.admit()
        for group in s.prefill_groups(admitted):
            while any(r.prefilled < r.length for r in group):
                _, _, real = s.next_chunk([r for r in group if r.prefilled < r.length])
                for r, n in zip([r for r in group if r.prefilled < r.length], real):
                    r.prefilled += n
            for r in group:
                r.generated = 1
                s.work.generated += 1
                if r.generated >= r.max_new:
                    s.finish(r)
        rows = s.active()
        if not rows:
            if not admitted:
                raise RuntimeError("simulate: no row can run and none was admitted (pool too small).")
            continue
        remaining = [r.max_new - r.generated for r in rows]
        steps = min(steps_per_call, min(remaining) if s.waiting else max(remaining))
        real = 0
        for r in rows:
            ran = min(steps, r.max_new - r.generated)
            r.generated += ran
            real += ran
            s.work.generated += ran
            if r.generated >= r.max_new:
                s.finish(r)
        s.count_decode(steps, real)
    return s.work
