"""Generation: greedy or temperature/top-p sampling, stop on EOS or token stop sequences.

`generate` runs the continuous batcher (`decoding/batcher.py`): `batch_size` rows decode together over a paged
KV cache, a finished row's slot takes the next waiting prompt, and prompts are prefilled in chunks, so no
work goes to padding or to rows that have finished. Importable without TensorFlow or SeqIO.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax

from sciriff_jax.decoding.batcher import ContinuousBatcher, Sampling
from sciriff_jax.decoding.scheduler import WorkCount
from sciriff_jax.decoding.speculate import SpeculativeBatcher
from sciriff_jax.model.config import LlamaConfig

MAX_NEW_TOKENS = 1024


def strip_stop(tokens: list[int], stops) -> list[int]:
    """Cut at the earliest stop sequence (excluded from the result)."""
    cut = len(tokens)
    for stop in stops:
        n = len(stop)
        for j in range(len(tokens) - n + 1):
            if tokens[j:j + n] == list(stop):
                cut = min(cut, j)
                break
    return tokens[:cut]


def check_arguments(prompts: list[list[int]], max_new_tokens: int | Sequence[int]) -> list[int]:
    """Per-prompt new-token limits; refuses empty prompts and limits outside 1..MAX_NEW_TOKENS."""
    limits = [int(max_new_tokens)] * len(prompts) if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
    if len(limits) != len(prompts):
        raise ValueError(f"generate: {len(limits)} max_new_tokens values for {len(prompts)} prompts.")
    bad = [m for m in limits if not 1 <= m <= MAX_NEW_TOKENS]
    if bad:
        raise ValueError(f"generate: max_new_tokens={bad[0]} must be in 1..{MAX_NEW_TOKENS}.")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: empty prompt; every prompt needs at least one token (e.g. BOS).")
    return limits


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """What each prompt generates: its new-token limit (one, or one per prompt), where it ends (EOS id, token stop
    sequences), how tokens are drawn (greedy by default), and what each answer may be: a `constrain.Constraint`
    (one JSON schema or None per prompt; needs `pip install 'sciriff-jax[constrained]'`) or None (free text)."""

    max_new_tokens: int | Sequence[int]
    eos_id: int
    stop_sequences: Sequence[Sequence[int]] = ()
    sampling: Sampling = Sampling()
    constraint: object = None
    # Prompt-lookup speculation (decoding/speculate.py): drafts verified per step, greedy only; 0 = off.
    speculate: int = 0


@dataclasses.dataclass(frozen=True)
class DecodeHooks:
    """What a decode tells its caller as it goes: `on_finish(index, tokens)` as each prompt completes,
    `on_step(work)` after every device call with the `scheduler.WorkCount` so far (prompt tokens prefilled, tokens
    generated, call times), and `log(line)` for its one-time lines (the KV-cache plan); None for silence."""

    on_finish: Callable[[int, list[int]], None] | None = None
    on_step: Callable[[WorkCount], None] | None = None
    log: Callable[[str], None] | None = print


def generate(config: LlamaConfig, params, prompts: list[list[int]], generation: GenerationConfig, *, rng=None,
             batch_size: int = 32, sharding=None, kv_cache_bytes: int | None = None,
             hooks: DecodeHooks = DecodeHooks()) -> list[list[int]]:
    """New tokens for each prompt (input order), without EOS and without a trailing stop sequence.

    `batch_size`: rows decoding at once (slots). `sharding`: a `parallel.sharding.Sharding` to run under (params
    may already be placed by it): rows split over data+fsdp, heads over tensor; a context axis only replicates (no
    ring attention for decoding). `kv_cache_bytes`: the KV cache's memory budget per device (None:
    `kv_memory.default_budget`: half of what the device has free; on a CPU at most the weights' size). `hooks`:
    progress callbacks and the log (`DecodeHooks`).
    """
    limits = check_arguments(prompts, generation.max_new_tokens)
    engine = dict(eos_id=generation.eos_id, slots=batch_size, sampling=generation.sampling,
                  stop_sequences=generation.stop_sequences, sharding=sharding, kv_cache_bytes=kv_cache_bytes,
                  log=hooks.log)
    if generation.speculate:
        batcher = SpeculativeBatcher(config, params, k=generation.speculate, **engine)
    else:
        batcher = ContinuousBatcher(config, params, **engine)
    if generation.constraint is not None:
        if len(generation.constraint.schemas) != len(prompts):
            raise ValueError(f"generate: the constraint has {len(generation.constraint.schemas)} schemas for "
                             f"{len(prompts)} prompts; give one per prompt (None for free text).")
        batcher.constraint = generation.constraint
    stops = batcher.stops
    on_finish = hooks.on_finish
    done = None if on_finish is None else (lambda i, toks: on_finish(i, strip_stop(toks, stops)))
    out = batcher.run(prompts, limits, rng=jax.random.PRNGKey(0) if rng is None else rng, on_finish=done,
                      on_step=hooks.on_step)
    if generation.speculate and hooks.log:
        hooks.log(f"[decode] speculation: {batcher.speculation.describe()}")
    return [strip_stop(tokens, stops) for tokens in out]
