"""Prompt-lookup speculative decoding for greedy generation: copy drafts from the text, verify them in one step.

Each decode step of a row proposes k draft tokens: the k tokens that followed the most recent earlier occurrence
of the longest n-gram (n = `ngram` down to 1) ending at the row's last token, searched in the row's prompt and
the text generated so far (SciRIFF answers copy entity names, evidence sentences and list items from the prompt).
The step feeds [last token, k drafts] at positions length .. length + k over the paged KV cache (the chunked
prefill path), takes the greedy token after each, keeps the drafts up to the first mismatch plus the model's own
next token, and advances each row by its own count. So the output is plain greedy decoding's, token for token;
EOS, stop sequences and token limits cut a row where greedy would, even inside an accepted run of drafts. (Up to
float32 rounding: the verify step's matmuls are k + 1 tokens wide where plain decoding's are 1, so logits may
differ in the last bits and flip an argmax on an exact near-tie; `benchmarks/speculate.py` measures it.) Under a
constraint (decoding/constrain.py) every verified position is masked by the row's schema, as constrained greedy.

Keys written past a row's new length (rejected drafts) are never read: attention masks by position, and the
next step writes those positions before any query reaches them. Every row's tokens so far live on the device
([slots, positions], the drafting source), so `steps` verify steps run per call like the plain decode loop.
"""
from __future__ import annotations

import dataclasses
import functools
import time
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from sciriff_jax.decoding import constrain
from sciriff_jax.decoding.batcher import ContinuousBatcher, Rows, RunState, model_and_variables

NGRAM = 3  # longest n-gram matched


@dataclasses.dataclass
class SpeculationStats:
    """Verify steps and tokens of every finished prompt (input order): tokens / steps is its mean accepted length
    (drafts accepted + the model's own token per step; 1 = no draft ever accepted). The first token (from prefill)
    is not counted."""

    k: int
    steps: list = dataclasses.field(default_factory=list)
    tokens: list = dataclasses.field(default_factory=list)

    def accepted_length(self, indices=None) -> float | None:
        """Mean tokens per verify step over the prompts `indices` (all by default); None before any step."""
        indices = range(len(self.steps)) if indices is None else indices
        steps = sum(self.steps[i] for i in indices)
        return sum(self.tokens[i] for i in indices) / steps if steps else None

    def describe(self) -> str:
        """One line: k, verify steps and the mean accepted length."""
        mean = self.accepted_length()
        return (f"SPECULATE={self.k}: {sum(self.tokens)} tokens in {sum(self.steps)} verify steps, "
                + (f"{mean:.2f} tokens per step (1 = no draft accepted)" if mean is not None else "no verify step"))

    def as_dict(self) -> dict:
        return {"k": self.k, "verify_steps": sum(self.steps), "tokens": sum(self.tokens),
                "mean_accepted_length": self.accepted_length()}


def draft(history, length, k: int, ngram: int = NGRAM):
    """[B, k] drafts for rows whose tokens are history[b, :length[b] + 1]: what followed the most recent earlier
    occurrence of the longest n-gram (n <= ngram) ending at position length[b]; rows without a match (or whose copy
    runs past their text) get filler, which verification rejects at no extra cost."""
    b, h = history.shape
    pos = jnp.arange(h, dtype=jnp.int32)[None, :]
    match = pos < length[:, None]  # an earlier occurrence ends before the row's last token
    best = jnp.full((b,), -1, jnp.int32)
    for n in range(1, ngram + 1):
        target = jnp.take_along_axis(history, jnp.maximum(length - (n - 1), 0)[:, None], axis=1)  # [B, 1]
        shifted = jnp.pad(history, ((0, 0), (n - 1, 0)), constant_values=-1)[:, :h]  # shifted[j] = history[j-n+1]
        match = match & (shifted == target) & (length[:, None] >= n - 1)
        found = jnp.max(jnp.where(match, pos, -1), axis=1)
        best = jnp.where(found >= 0, found, best)  # longer n-grams win
    src = jnp.clip(best[:, None] + 1 + jnp.arange(k, dtype=jnp.int32)[None, :], 0, h - 1)
    return jnp.take_along_axis(history, src, axis=1)


def _stop_hits(history, ends, gen_start, stops):
    """[B, W] bool: the row's tokens ending at position ends[b, w] end with a (static) stop sequence lying wholly
    inside the generated text (which starts at gen_start [B]), as plain decoding checks it."""
    hit = jnp.zeros(ends.shape, bool)
    for stop in stops:
        n = len(stop)
        first = ends - (n - 1)
        ok = first >= gen_start[:, None]
        for o, tok in enumerate(stop):
            ok = ok & (jnp.take_along_axis(history, jnp.clip(first + o, 0, history.shape[1] - 1), axis=1) == tok)
        hit = hit | ok
    return hit


class SpeculateProgram(NamedTuple):
    """What one compiled verify program is specialised to (static): the model, verify steps per call at most, the
    draft length k, the longest n-gram, the token stop sequences and the LoRA config (None: plain params)."""

    config: object
    steps: int
    k: int
    ngram: int
    stops: tuple
    lora: object = None
    constrained: bool = False  # greedy under each row's schema masks (decoding/constrain.py); drafts checked too


def _accept(x, g, rows: Rows, history, eos_id, stops):
    """One verify step's outcome from the fed tokens x [B, k+1] and the greedy token after each, g [B, k+1]:
    (history with g at positions length + 1 .., tokens emitted [B], ended [B]). A row emits its drafts up to the
    first that greedy would not have chosen, plus greedy's own next token, cut after EOS, a stop sequence or its
    token limit."""
    length, generated = rows.length, rows.generated
    w = x.shape[1]
    # Past a row's emitted count the candidates are scratch that the next step overwrites.
    ends_at = length[:, None] + 1 + jnp.arange(w, dtype=jnp.int32)[None, :]
    history = history.at[jnp.arange(x.shape[0])[:, None], ends_at].set(g, mode="drop")
    accepted = jnp.sum(jnp.cumprod(x[:, 1:] == g[:, :-1], axis=1), axis=1)  # drafts matching greedy, in a row
    idx = jnp.arange(w, dtype=jnp.int32)[None, :]
    ends = (g == eos_id) | (generated[:, None] + 1 + idx >= rows.limit[:, None])
    if stops:
        ends = ends | _stop_hits(history, ends_at, length - generated + 1, stops)
    ends = ends & (idx <= accepted[:, None])
    ended = jnp.any(ends, axis=1)
    emitted = jnp.where(ended, jnp.argmax(ends, axis=1) + 1, accepted + 1).astype(jnp.int32)
    return history, emitted, ended


def _greedy(logits, drafts, run, handle):
    """[B, k+1] greedy tokens; with a constraint `handle`, each under its row's schema mask at that position (the
    host walks the drafts through the row's matcher: `_host_draft_masks`)."""
    if handle is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    b, w, v = logits.shape
    width = -(-v // 32)
    shape = jax.ShapeDtypeStruct((b, w, width), jnp.uint32)
    masks = io_callback(_host_draft_masks, shape, handle, drafts, run, ordered=True)
    masked = constrain.apply_mask(logits.reshape(b * w, v), masks.reshape(b * w, width))
    return jnp.argmax(masked.reshape(b, w, v), axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("program",), donate_argnames=("pool",))
def _speculate(params, pool, page_table, rows: Rows, history, stop_on_finish, eos_id, handle=None, *,
               program: SpeculateProgram):
    """Up to `program.steps` verify steps of every live row; returns (pool, history [B, P] with each row's new tokens
    at positions length + 1 .., verify steps taken, the rows after them, finished [B], real row-steps, verify steps
    per row [B]). With `program.constrained`, `handle` names the run's matchers (`register`): greedy picks under
    the rows' schema masks, and the host advances the matchers by the tokens each step emits."""
    config, steps, k, ngram, stops, lora, constrained = program
    handle = handle if constrained else None
    model, variables = model_and_variables(config, params, lora)
    live = rows.live
    b = history.shape[0]

    def cond(state):
        i, _, _, _, finished, _, _ = state
        return (i < steps) & jnp.any(live & ~finished) & ~(stop_on_finish & jnp.any(live & finished))

    def body(state):
        i, pool, history, cur, finished, real, per_row = state
        x = jnp.concatenate([cur.tokens[:, None], draft(history, cur.length, k, ngram)], axis=1)
        positions = cur.length[:, None] + jnp.arange(k + 1, dtype=jnp.int32)[None, :]
        logits, pool = model.apply(variables, x, positions=positions, cache=pool, cache_index=cur.length,
                                   page_table=page_table)
        run = live & ~finished
        g = _greedy(logits, x[:, 1:], run, handle)
        history, emitted, ended = _accept(x, g, cur, history, eos_id, stops)
        emitted = jnp.where(run, emitted, 0)
        if handle is not None:  # the matchers consume what was emitted (ordered after this step's masks)
            real = real + io_callback(_host_consume, jax.ShapeDtypeStruct((), jnp.int32), handle, g, emitted,
                                      ordered=True)
        last = jnp.take_along_axis(g, jnp.maximum(emitted - 1, 0)[:, None], axis=1)[:, 0]
        cur = cur._replace(tokens=jnp.where(run, last, cur.tokens), length=cur.length + emitted,
                           generated=cur.generated + emitted)
        return i + 1, pool, history, cur, finished | (run & ended), real + jnp.sum(run), per_row + run

    zeros = jnp.zeros((b,), jnp.int32)
    init = (jnp.int32(0), pool, history, rows, jnp.zeros_like(live), jnp.int32(0), zeros)
    i, pool, history, rows, finished, real, per_row = jax.lax.while_loop(cond, body, init)
    return pool, history, i, rows, finished, real, per_row


# Live constrained runs' matchers by their handle (`constrain.register`'s), for the verify loop's callbacks.
_MATCHERS: "weakref.WeakValueDictionary[int, constrain.Matchers]" = weakref.WeakValueDictionary()


def _host_draft_masks(handle, drafts, run) -> np.ndarray:
    """[B, k+1, W] uint32: each running constrained row's mask now and after each of its drafts, as far as the
    schema allows them (a draft the schema forbids, or EOS, ends the walk: what follows it cannot be accepted, since
    greedy under the mask never picks a forbidden token); all ones elsewhere. The matchers are left as they were."""
    matchers = _MATCHERS[int(handle)]
    drafts, run = np.asarray(drafts), np.asarray(run)
    b, k = drafts.shape
    masks = np.full((b, k + 1, matchers.width), -1, np.int32)
    eos = matchers.constraint.tokenizer.eos_token
    for slot in np.flatnonzero(run):
        matcher = matchers.matchers[slot]
        if matcher is None:
            continue
        masks[slot, 0] = matchers.masks[slot]
        allowed = list(drafts[slot, :matcher.validate_tokens([int(t) for t in drafts[slot]])])
        allowed = allowed[:allowed.index(eos)] if eos in allowed else allowed
        for i, token in enumerate(allowed):
            matcher.consume_token(int(token))
            row = masks[slot, i + 1]
            matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)
        if allowed:
            matcher.rollback(len(allowed))
    return masks.view(np.uint32)


def _host_consume(handle, tokens, emitted) -> np.ndarray:
    """Advance each row's matcher by the first emitted[b] of tokens [B, k+1] (its next mask computed); returns 0."""
    matchers = _MATCHERS[int(handle)]
    tokens, emitted = np.asarray(tokens), np.asarray(emitted)
    for slot in np.flatnonzero(emitted):
        for token in tokens[slot, :emitted[slot]]:
            matchers.consume(slot, int(token))
    return np.int32(0)


class SpeculativeBatcher(ContinuousBatcher):
    """The continuous batcher with prompt-lookup speculation: `k` drafts per verify step (greedy only); the last
    run's `SpeculationStats` in `self.speculation`."""

    def __init__(self, config, params, *, k: int, ngram: int = NGRAM, **batcher_args):
        super().__init__(config, params, **batcher_args)
        if k < 1 or ngram < 1:
            raise ValueError(f"speculative decoding: SPECULATE={k} drafts and ngram={ngram} must be >= 1 "
                             "(SPECULATE = 0 turns speculation off).")
        if self.sampling.temperature > 0.0:
            raise ValueError(f"speculative decoding: SPECULATE={k} verifies drafts against greedy decoding, but "
                             f"TEMPERATURE={self.sampling.temperature}; set TEMPERATURE = 0.0 or SPECULATE = 0.")
        self.k, self.ngram = int(k), int(ngram)
        self.speculation = SpeculationStats(self.k)

    def run(self, prompts, max_new, rng=None, on_finish=None, logprobs=False, on_step=None):
        """`ContinuousBatcher.run` with speculation (no log-probabilities: those are for sampled rollouts)."""
        if logprobs:
            raise ValueError("speculative decoding: log-probabilities are not recorded with SPECULATE > 0 (they are "
                             "for sampled rollouts); set SPECULATE = 0.")
        self.speculation = SpeculationStats(self.k, [0] * len(prompts), [0] * len(prompts))
        return super().run(prompts, max_new, rng=rng, on_finish=on_finish, on_step=on_step)

    def _new_state(self, sched, prompts, needs, rng, on_finish, logprobs, on_step):
        return _SpeculativeRunState(self, sched, prompts, needs, rng, on_finish, logprobs, on_step)


class _SpeculativeRunState(RunState):
    """`RunState` whose decode call is the verify loop; keeps every slot's tokens so far for drafting."""

    def __init__(self, batcher, sched, prompts, needs, rng, on_finish, logprobs=False, on_step=None):
        super().__init__(batcher, sched, prompts, needs, rng, on_finish, logprobs, on_step)
        self.history = np.zeros((batcher.slots, self.table.shape[1] * batcher.page_size), np.int32)
        self.holder: dict[int, int] = {}  # slot -> the prompt whose tokens its history row holds
        if self.matchers is not None:
            _MATCHERS[self.handle] = self.matchers

    def decode(self) -> None:
        """One verify call over every slot; finished rows hand their slots back."""
        bt, sched = self.batcher, self.sched
        active = sched.active()
        for r in active:
            if self.holder.get(r.slot) != r.index:  # admitted since the last call: its prompt and first token
                seq = list(self.prompts[r.index]) + self.outputs[r.index]
                self.history[r.slot, :len(seq)] = seq
                self.holder[r.slot] = r.index
        before = self.rows.length.copy()
        constrained = self.matchers is not None
        program = SpeculateProgram(bt.config, bt.steps, bt.k, bt.ngram, bt.stops, bt.lora, constrained)
        began = time.perf_counter()
        self.pool, history, steps, rows, finished, real, per_row = _speculate(
            bt.params, self.pool, self.table, self.rows, self.history, np.bool_(bool(sched.waiting)),
            np.int32(bt.eos_id), np.int32(self.handle) if constrained else None, program=program)
        self.history, finished, per_row = np.array(history), np.asarray(finished), np.asarray(per_row)
        self.rows = self.rows._replace(tokens=np.array(rows.tokens), length=np.array(rows.length),
                                       generated=np.array(rows.generated))
        sched.count_decode(int(steps), int(real))
        seconds = time.perf_counter() - began
        stats, emitted = bt.speculation, 0
        for r in active:
            new = [int(x) for x in self.history[r.slot, before[r.slot] + 1:self.rows.length[r.slot] + 1]]
            self.outputs[r.index].extend(new)
            stats.steps[r.index] += int(per_row[r.slot])
            stats.tokens[r.index] += len(new)
            r.generated += len(new)
            sched.work.generated += len(new)
            emitted += len(new)
            if finished[r.slot]:
                self._finish(r)
        self._stepped("decode", emitted, seconds)  # the decode rate counts new tokens, not row-steps
