"""Continuous batching over a paged KV cache: the compiled prefill and decode programs and the host loop.

`slots` rows decode together. When a row finishes (EOS, a stop sequence, or its token limit), its slot and
pages go to the next waiting prompt (`decoding/scheduler.py`), whose prompt is prefilled in chunks from a short
ladder of lengths. Each decode call steps up to `steps_per_call` tokens on the device and returns early when
a row finishes while prompts wait, so finished rows do not keep computing. The programs are jitted once per
shape at module level: later calls with the same shapes reuse them, and the shapes are bounded (one decode
program; one prefill program per chunk length and row count; pool sizes are powers of two).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sciriff_jax.decoding import constrain, kv_memory
from sciriff_jax.decoding.scheduler import Scheduler, WorkCount
from sciriff_jax.model.llama import Llama

PAGE_SIZE = 64
BLOCK_PAGES = 4          # pages per key block of paged attention (attention_paged.attend)
CHUNK = 512              # longest prefill chunk
CHUNK_STEP = 64          # prefill chunk lengths are multiples of this (8 programs at most)
STEPS_PER_CALL = 32      # decode steps per device call at most (early exit when a row finishes)
PREFILL_ROWS_CPU = (1,)  # prompts per prefill call (x the data-parallel size)
PREFILL_ROWS_ACCELERATOR = (1, 8)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is drawn: greedy (temperature 0), or temperature + nucleus (top_p). Static in the programs."""

    temperature: float = 0.0
    top_p: float = 1.0


@dataclasses.dataclass(frozen=True)
class Layout:
    """The batcher's shapes: KV page size, the prefill chunk ladder, decode steps per call, prompts per prefill call
    (x the data-parallel size; None: PREFILL_ROWS_CPU on a CPU, PREFILL_ROWS_ACCELERATOR elsewhere)."""

    page_size: int = PAGE_SIZE
    chunk: int = CHUNK
    chunk_step: int = CHUNK_STEP
    steps_per_call: int = STEPS_PER_CALL
    prefill_rows: tuple[int, ...] | None = None


class Rows(NamedTuple):
    """Every slot's decoding state [slots]: its last token, the position it goes to, tokens generated so far, its
    limit, and whether a prompt is running there."""

    tokens: object
    length: object
    generated: object
    limit: object
    live: object


def sample(logits, rng, sampling: Sampling):
    """Next tokens [B] from logits [B, V]: argmax, or temperature + nucleus sampling."""
    temperature, top_p = sampling.temperature, sampling.top_p
    if temperature <= 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def token_logprobs(logits, tokens, sampling: Sampling):
    """[B] float32 log-probability of `tokens` [B] under logits [B, V] / temperature (1 when greedy), before the
    nucleus cut: the policy an RL objective differentiates (train.grpo recomputes exactly this)."""
    scale = sampling.temperature if sampling.temperature > 0.0 else 1.0
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / scale, axis=-1)
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def _ends_with_stop(out, i, stops):
    """[B] bool: out[:, :i + 1] ends with one of the (static) stop sequences (-1 entries never match)."""
    hit = jnp.zeros(out.shape[0], bool)
    for stop in stops:
        n = len(stop)
        window = jax.lax.dynamic_slice_in_dim(out, i - n + 1, n, axis=1)
        hit = hit | jnp.all(window == jnp.asarray(stop, jnp.int32)[None], axis=1)
    return hit


def model_and_variables(config, params, lora):
    """(module, variables): the Llama, or with a LoRA config (model/lora.py) the LoRA Llama over `params` =
    {"params": base, "lora": adapters} (the adapters applied beside the base, never merged)."""
    if lora is None:
        return Llama(config), {"params": params}
    return Llama(config, lora=lora), params


class PrefillProgram(NamedTuple):
    """What one compiled prefill program is specialised to (static): the model, how the first token is drawn,
    whether its log-probability comes back too, the LoRA config (None: plain params), and whether the first token is
    drawn under an allowed-token mask (`constrain.Allowed`)."""

    config: object
    sampling: Sampling
    logprobs: bool = False
    lora: object = None
    constrained: bool = False


@functools.partial(jax.jit, static_argnames=("program",), donate_argnames=("pool",))
def _prefill(params, pool, tokens, start, last, page_table, rng, allowed=None, *, program: PrefillProgram):
    """Write a chunk of each row's prompt (at positions start + i) into its pages; return the pool and the token
    drawn from the logits at chunk index `last` (only the final chunk's is used), and with `program.logprobs` its
    log-probability (`token_logprobs`). With `program.constrained` the token is drawn where `allowed.bits` [rows, W]
    allows; its log-probability stays the model's unmasked one (the policy's)."""
    config, sampling, logprobs, lora, constrained = program
    positions = start[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    model, variables = model_and_variables(config, params, lora)
    logits, pool = model.apply(variables, tokens, positions=positions, cache=pool,
                               cache_index=start, page_table=page_table, logits_index=last)
    first = sample(constrain.apply_mask(logits[:, 0], allowed.bits) if constrained else logits[:, 0], rng, sampling)
    if logprobs:
        return pool, first, token_logprobs(logits[:, 0], first, sampling)
    return pool, first


class DecodeProgram(NamedTuple):
    """What one compiled decode program is specialised to (static): the model, steps per call at most, how tokens
    are drawn, the token stop sequences, and whether the drawn tokens' log-probabilities come back too."""

    config: object
    steps: int
    sampling: Sampling
    stops: tuple
    logprobs: bool = False
    lora: object = None  # a LoRA config: params are {"params": base, "lora": adapters}
    constrained: bool = False  # tokens drawn under allowed-token masks (`constrain.Allowed`), advanced on the host


@functools.partial(jax.jit, static_argnames=("program",), donate_argnames=("pool",))
def _decode(params, pool, page_table, rows: Rows, tail, stop_on_finish, eos_id, rng, allowed=None, *,
            program: DecodeProgram):
    """Up to `program.steps` decode steps of every row; rows not `rows.live` compute but change nothing.

    rows.tokens [B]: each row's last token (fed next, at position rows.length [B]); tail [B, T]: each row's last T
    generated tokens (that one included), to spot a stop sequence that began before this call. Returns (pool, new
    tokens [B, steps] (-1 where a row did not run), steps taken, the rows after them, finished [B], real row-steps),
    and with `program.logprobs` also the new tokens' log-probabilities [B, steps] (`token_logprobs`).

    With `program.constrained`, `allowed` (`constrain.Allowed`) holds each row's next-token mask; a token is drawn
    where its row's mask allows (greedy and top-p alike), then the host advances the rows' matchers by the drawn
    tokens and returns the next masks (`constrain.next_mask`). Log-probabilities stay the unmasked model's.
    """
    config, steps, sampling, stops, with_logprobs, lora, constrained = program
    model, variables = model_and_variables(config, params, lora)
    max_new, live = rows.limit, rows.live
    t = tail.shape[1]
    out = jnp.concatenate([tail, jnp.full((tail.shape[0], steps), -1, jnp.int32)], axis=1)
    lps = jnp.zeros((tail.shape[0], steps if with_logprobs else 0), jnp.float32)

    def cond(state):
        i, _, _, _, _, _, finished, _, _, _, _ = state
        running = live & ~finished
        return (i < steps) & jnp.any(running) & ~(stop_on_finish & jnp.any(live & finished))

    def body(state):
        i, pool, out, tokens, length, generated, finished, real, rng, lps, bits = state
        logits, pool = model.apply(variables, tokens[:, None], positions=length[:, None], cache=pool,
                                   cache_index=length, page_table=page_table)
        rng, sub = jax.random.split(rng)
        nxt = sample(constrain.apply_mask(logits[:, -1], bits) if constrained else logits[:, -1], sub, sampling)
        run = live & ~finished
        if constrained:
            bits = constrain.next_mask(allowed.handle, nxt, run, bits.shape[1])
        out = jax.lax.dynamic_update_slice_in_dim(out, jnp.where(run, nxt, -1)[:, None], t + i, axis=1)
        if with_logprobs:
            lps = jax.lax.dynamic_update_slice_in_dim(lps, token_logprobs(logits[:, -1], nxt, sampling)[:, None], i,
                                                      axis=1)
        generated = generated + run
        stop = (nxt == eos_id) | (generated >= max_new)
        if stops:
            stop = stop | _ends_with_stop(out, t + i, stops)
        finished = finished | (run & stop)
        return (i + 1, pool, out, jnp.where(run, nxt, tokens), length + run, generated, finished,
                real + jnp.sum(run), rng, lps, bits)

    init = (jnp.int32(0), pool, out, rows.tokens, rows.length, rows.generated, jnp.zeros_like(live), jnp.int32(0), rng,
            lps, allowed.bits if constrained else None)
    i, pool, out, tokens, length, generated, finished, real, _, lps, _ = jax.lax.while_loop(cond, body, init)
    result = (pool, out[:, t:], i, rows._replace(tokens=tokens, length=length, generated=generated), finished, real)
    return result + (lps,) if with_logprobs else result


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "sharding"))
def _zeros(shape, dtype, sharding=None):
    z = jnp.zeros(shape, dtype)
    return z if sharding is None else jax.lax.with_sharding_constraint(z, sharding)


class ContinuousBatcher:
    """Decode many prompts with `slots` rows over a paged KV cache; see the module docstring."""

    def __init__(self, config, params, *, eos_id: int, slots: int = 32, sampling: Sampling = Sampling(),
                 stop_sequences=None, sharding=None, kv_cache_bytes: int | None = None, layout: Layout = Layout(),
                 log: Callable[[str], None] | None = print):
        self.config, self.eos_id = config, int(eos_id)
        self.sampling = Sampling(float(sampling.temperature), float(sampling.top_p))
        self.stops = tuple(tuple(int(t) for t in s) for s in (stop_sequences or []) if len(s))
        self.page_size, self.chunk, self.chunk_step = layout.page_size, layout.chunk, layout.chunk_step
        self.steps = layout.steps_per_call
        prefill_rows = layout.prefill_rows
        self.sharding = sharding.for_decoding() if sharding is not None else None
        dp = self.sharding.data_parallel if self.sharding is not None else 1
        # Rows split over the data axes: slots and prefill rows are multiples of the data-parallel size.
        self.slots = -(-max(1, slots) // dp) * dp
        if prefill_rows is None:
            # A CPU is busy with one 512-token chunk; an accelerator wants several prompts per call when many
            # slots free at once (the start), and one when a single slot frees (the steady state).
            prefill_rows = PREFILL_ROWS_CPU if jax.default_backend() == "cpu" else PREFILL_ROWS_ACCELERATOR
        self.prefill_rows = tuple(sorted({dp * max(1, int(n)) for n in prefill_rows}))
        self.kv_cache_bytes, self.log = kv_cache_bytes, log
        # Host (numpy) params would be copied to the device on every call: move them once.
        self.params = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), params)
        self.work = WorkCount()
        self.plan: kv_memory.PoolPlan | None = None
        self.logprobs: list[list[float]] | None = None  # the last run's, when it was asked for them
        # A LoRA config (model/lora.py) when `params` are {"params": base, "lora": adapters}: set before `run`.
        self.lora = None
        # A `constrain.Constraint` (one JSON schema or None per prompt of the next `run`): set before `run`.
        self.constraint = None

    def _context(self):
        return self.sharding.context() if self.sharding is not None else contextlib.nullcontext()

    def _pool_sharding(self):
        if self.sharding is None:
            return None
        axes = (None, None, None, "activation_kv_heads", None)
        return nn.logical_to_mesh_sharding(jax.sharding.PartitionSpec(*axes), self.sharding.mesh, self.sharding.rules)

    def _tensor_shards(self) -> int:
        if self.sharding is None:
            return 1
        tp = self.sharding.mesh.shape.get("tensor", 1)
        return tp if self.config.num_kv_heads % tp == 0 else 1

    def plan_pool(self, needs: list[int]) -> kv_memory.PoolPlan:
        """The page pool for sequences of `needs` positions (raises with the fix when one cannot fit)."""
        dtype = jnp.dtype(self.config.dtype)
        budget, note = self.kv_cache_bytes, "kv_cache_bytes"
        if budget is None:
            weights = sum(int(x.nbytes) for x in jax.tree.leaves(self.params)) // self._tensor_shards()
            budget, note = kv_memory.default_budget(weights)
        return kv_memory.plan_pool(self.config, needs, slots=self.slots, page_size=self.page_size, dtype=dtype,
                                   budget_bytes=budget, shards=self._tensor_shards(), budget_note=note)

    def _new_state(self, sched, prompts, needs, rng, on_finish, logprobs, on_step) -> "RunState":
        """One run's state; its `decode` is the device call (decoding/speculate.py overrides it)."""
        return RunState(self, sched, prompts, needs, rng, on_finish, logprobs, on_step)

    def run(self, prompts: list[list[int]], max_new: list[int], rng=None,
            on_finish: Callable[[int, list[int]], None] | None = None, logprobs: bool = False,
            on_step: Callable[[WorkCount], None] | None = None) -> list[list[int]]:
        """Tokens generated for each prompt (input order; EOS left out, a final stop sequence kept).

        `on_finish(index, tokens)` as each prompt completes; `on_step(work)` after every device call, with the
        `WorkCount` so far (prompt tokens prefilled, tokens generated, the calls' host time).

        With `logprobs`, `self.logprobs[i]` holds the log-probability of each token drawn for prompt i
        (`token_logprobs`, float32 on the device): one more entry than its tokens when it ended on EOS (EOS's own).
        """
        self.logprobs = [] if logprobs else None
        if not prompts:
            return []
        needs = [len(p) + m for p, m in zip(prompts, max_new)]
        self.plan = self.plan_pool(needs)
        if self.log:
            self.log(f"[decode] {self.plan.describe(self.slots)}")
        sched = Scheduler([len(p) for p in prompts], max_new, slots=self.slots, page_size=self.page_size,
                          num_pages=self.plan.num_pages, chunk=self.chunk, chunk_step=self.chunk_step,
                          prefill_rows=self.prefill_rows)
        self.work = sched.work
        with self._context():
            state = self._new_state(sched, prompts, needs, jax.random.PRNGKey(0) if rng is None else rng, on_finish,
                                    logprobs, on_step)
            while not sched.done:
                admitted = sched.admit()
                for group in sched.prefill_groups(admitted):
                    state.prefill(group)
                if sched.active():
                    state.decode()
                elif not admitted:
                    raise RuntimeError("decode: no row is running and no prompt could be admitted; the page pool "
                                       "is smaller than the plan promised (a bug in kv_memory.plan_pool).")
        if logprobs:
            self.logprobs = state.logprob_results
        return state.results


class RunState:
    """One `ContinuousBatcher.run`: the pool, the host copy of every slot's state, the outputs so far."""

    def __init__(self, batcher: ContinuousBatcher, sched: Scheduler, prompts, needs, rng, on_finish, logprobs=False,
                 on_step=None):
        c, b = batcher.config, batcher.slots
        self.batcher, self.sched, self.prompts, self.rng, self.on_finish = batcher, sched, prompts, rng, on_finish
        self.on_step = on_step
        # With logprobs: each running prompt's drawn-token log-probabilities, and each finished one's.
        self.lps: dict[int, list[float]] | None = {} if logprobs else None
        self.logprob_results: list[list[float] | None] = [None] * len(prompts)
        # Table width: enough pages for the longest sequence, a power of two (bounded shapes) of key blocks.
        blocks = -(-max(max(needs), c.max_position) // (batcher.page_size * BLOCK_PAGES))
        self.table = np.zeros((b, (1 << max(0, blocks - 1).bit_length()) * BLOCK_PAGES), np.int32)
        self.rows = Rows(np.zeros(b, np.int32), np.zeros(b, np.int32), np.zeros(b, np.int32), np.ones(b, np.int32),
                         np.zeros(b, bool))
        self.tail = max([len(s) for s in batcher.stops], default=1) - 1
        self.results: list[list[int] | None] = [None] * len(prompts)
        self.outputs: dict[int, list[int]] = {}
        shape = (c.num_layers, batcher.plan.num_pages, batcher.page_size, c.num_kv_heads, c.head_dim)
        sharding = batcher._pool_sharding()
        self.pool = {k: _zeros(shape, jnp.dtype(c.dtype), sharding) for k in ("k", "v")}
        # With a constraint: every slot's matcher on the host, and the handle the decode loop's callback names.
        self.matchers = None if batcher.constraint is None else constrain.Matchers(batcher.constraint, b,
                                                                                   c.vocab_size)
        self.handle = None if self.matchers is None else constrain.register(self.matchers)

    def _allowed(self, slots):
        """The constrained programs' `allowed` for rows at `slots` (None: a dummy row, all allowed); None when
        the run is unconstrained."""
        if self.matchers is None:
            return None
        bits = np.full((len(slots), self.matchers.width), 0xFFFFFFFF, np.uint32)
        for j, slot in enumerate(slots):
            if slot is not None:
                bits[j] = self.matchers.rows([slot])[0]
        return constrain.Allowed(bits, np.int32(self.handle))

    def _split(self):
        self.rng, sub = jax.random.split(self.rng)
        return sub

    def prefill(self, group) -> None:
        """Prefill a group of admitted prompts chunk by chunk; each then holds its first token and decodes."""
        bt, sched = self.batcher, self.sched
        for r in group:
            self.table[r.slot] = 0
            self.table[r.slot, :len(r.pages)] = r.pages
            if self.matchers is not None:
                self.matchers.start(r.slot, r.index)
        pending = list(group)
        while pending:
            rows, size, real = sched.next_chunk(pending)
            chunk = np.zeros((rows, size), np.int32)
            start, last = np.zeros(rows, np.int32), np.zeros(rows, np.int32)
            table = np.zeros((rows, self.table.shape[1]), np.int32)  # dummy rows write to scratch
            for j, (r, n) in enumerate(zip(pending, real)):
                chunk[j, :n] = self.prompts[r.index][r.prefilled:r.prefilled + n]
                start[j], last[j], table[j] = r.prefilled, n - 1, self.table[r.slot]
            began = time.perf_counter()
            program = PrefillProgram(bt.config, bt.sampling, self.lps is not None, bt.lora, self.matchers is not None)
            allowed = self._allowed([r.slot for r in pending] + [None] * (rows - len(pending)))
            result = _prefill(bt.params, self.pool, chunk, start, last, table, self._split(), allowed,
                              program=program)
            self.pool, first = result[:2]
            if self.lps is not None:
                first_lp = np.asarray(result[2])
            first = np.asarray(first)
            seconds = time.perf_counter() - began
            for j, (r, n) in enumerate(zip(pending, real)):
                r.prefilled += n
                if r.prefilled < r.length:
                    continue
                r.generated = 1
                sched.work.generated += 1
                self.outputs[r.index] = [int(first[j])]
                if self.matchers is not None:
                    self.matchers.consume(r.slot, first[j])
                if self.lps is not None:
                    self.lps[r.index] = [float(first_lp[j])]
                slot = self.rows
                slot.tokens[r.slot], slot.length[r.slot], slot.generated[r.slot] = first[j], r.length, 1
                slot.limit[r.slot], slot.live[r.slot] = r.max_new, True
                if self._ended(r):
                    self._finish(r)
            self._stepped("prefill", sum(real), seconds)
            pending = [r for r in pending if r.prefilled < r.length]

    def decode(self) -> None:
        """One decode call over every slot; finished rows hand their slots back."""
        bt, sched, t = self.batcher, self.sched, self.tail
        active = sched.active()
        tail = np.full((bt.slots, t), -1, np.int32)
        for r in active:
            prev = self.outputs[r.index][-t:] if t else []
            tail[r.slot, t - len(prev):] = prev
        program = DecodeProgram(bt.config, bt.steps, bt.sampling, bt.stops, self.lps is not None, bt.lora,
                                self.matchers is not None)
        began = time.perf_counter()
        result = _decode(
            bt.params, self.pool, self.table, self.rows, tail, np.bool_(bool(sched.waiting)), np.int32(bt.eos_id),
            self._split(), self._allowed(range(bt.slots)), program=program)
        self.pool, out, steps, rows, finished, real = result[:6]
        out, finished = np.asarray(out), np.asarray(finished)
        lps = np.asarray(result[6]) if self.lps is not None else None
        # Host copies the next admissions write into; limit and live did not change on the device.
        self.rows = self.rows._replace(tokens=np.array(rows.tokens), length=np.array(rows.length),
                                       generated=np.array(rows.generated))
        sched.count_decode(int(steps), int(real))
        seconds = time.perf_counter() - began
        for r in active:
            new = [int(x) for x in out[r.slot] if x >= 0]
            self.outputs[r.index].extend(new)
            if lps is not None:
                self.lps[r.index].extend(float(x) for x in lps[r.slot, :len(new)])
            r.generated += len(new)
            sched.work.generated += len(new)
            if finished[r.slot]:
                self._finish(r)
        self._stepped("decode", int(real), seconds)

    def _stepped(self, kind: str, tokens: int, seconds: float) -> None:
        """Count a device call's host time (its results were read back, so it is done) and tell on_step."""
        self.sched.work.time_call(kind, tokens, seconds)
        if self.on_step is not None:
            self.on_step(self.sched.work)

    def _ended(self, r) -> bool:
        toks, stops = self.outputs[r.index], self.batcher.stops
        return (toks[-1] == self.batcher.eos_id or len(toks) >= r.max_new
                or any(len(toks) >= len(s) and tuple(toks[-len(s):]) == s for s in stops))

    def _finish(self, r) -> None:
        toks = self.outputs.pop(r.index)
        if self.lps is not None:
            self.logprob_results[r.index] = self.lps.pop(r.index)
        if toks and toks[-1] == self.batcher.eos_id:
            toks = toks[:-1]
        if self.matchers is not None:
            self.matchers.stop(r.slot)
            if r.index in self.matchers.errors:  # never expected: each token was drawn where its mask allowed
                raise RuntimeError(f"constrained decoding: prompt {r.index}'s matcher failed "
                                   f"({self.matchers.errors[r.index]}); a bug, please report it.")
        self.results[r.index] = toks
        # A free slot feeds token 0 at position 0 into scratch: it must not widen the key-block loop.
        self.rows.live[r.slot], self.table[r.slot], self.rows.length[r.slot], self.rows.tokens[r.slot] = False, 0, 0, 0
        self.sched.finish(r)
        if self.on_finish is not None:
            self.on_finish(r.index, toks)
