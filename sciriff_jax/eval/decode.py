"""Batched KV-cache generation: greedy or temperature/top-p sampling, stop on EOS or token stop sequences.

Prompts are sorted by length and cut into batches; each batch is left-padded to a power-of-two bucket
so one compiled program (prefill + `lax.while_loop` over single-token steps) serves every batch of the
same bucket. Pad slots are masked out of the cache and positions count from each prompt's first token.
"""
from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import Llama, init_cache

MAX_NEW_TOKENS = 1024
_MIN_BUCKET = 16


def bucket_length(n: int) -> int:
    """Smallest power of two >= n (at least 16): prompt lengths share compiled programs."""
    return max(_MIN_BUCKET, 1 << max(0, int(n) - 1).bit_length())


def _sample(logits, rng, temperature: float, top_p: float):
    """Next tokens [B] from last-position logits [B, V]: argmax, or temperature + nucleus sampling."""
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


def _ends_with_stop(out, i, stops):
    """[B] bool: the tokens generated up to index i end with one of the (static) stop sequences."""
    hit = jnp.zeros(out.shape[0], bool)
    for stop in stops:
        n = len(stop)
        start = jnp.maximum(i - n + 1, 0)
        window = jax.lax.dynamic_slice_in_dim(out, start, n, axis=1)
        hit = hit | ((i + 1 >= n) & jnp.all(window == jnp.asarray(stop, jnp.int32)[None], axis=1))
    return hit


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "eos_id", "temperature", "top_p", "stops"))
def _generate_batch(params, tokens, pad_len, rng, *, config: LlamaConfig, max_new_tokens: int, eos_id: int,
                    temperature: float, top_p: float, stops: tuple):
    """tokens [B, P] left-padded (pad_len [B] pads each) -> generated tokens [B, max_new_tokens], lengths [B]."""
    model = Llama(config)
    b, p = tokens.shape
    total = p + max_new_tokens
    kv_mask = jnp.arange(total)[None, :] >= pad_len[:, None]
    positions = jnp.maximum(jnp.arange(p)[None, :] - pad_len[:, None], 0)
    cache = init_cache(config, b, total)
    logits, cache = model.apply({"params": params}, tokens, positions=positions, cache=cache, cache_index=0,
                                kv_mask=kv_mask)
    rng, sub = jax.random.split(rng)
    first = _sample(logits[:, -1], sub, temperature, top_p)
    out = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(first)
    done = (first == eos_id) | _ends_with_stop(out, 0, stops)
    # length[b] = tokens kept for row b (stops when EOS/stop sequence appears; EOS itself not counted).
    length = jnp.where(first == eos_id, 0, 1)

    def cond(state):
        i, _, _, done, _, _ = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, out, cache, done, length, rng = state
        prev = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)
        pos = (p + i - 1 - pad_len)[:, None]
        logits, cache = model.apply({"params": params}, prev, positions=pos, cache=cache, cache_index=p + i - 1,
                                    kv_mask=kv_mask)
        rng, sub = jax.random.split(rng)
        nxt = jnp.where(done, eos_id, _sample(logits[:, -1], sub, temperature, top_p))
        out = jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], i, axis=1)
        is_eos = nxt == eos_id
        length = jnp.where(done | is_eos, length, i + 1)
        done = done | is_eos | _ends_with_stop(out, i, stops)
        return i + 1, out, cache, done, length, rng

    _, out, _, _, length, _ = jax.lax.while_loop(cond, body, (1, out, cache, done, length, rng))
    return out, length


def _strip_stop(tokens: list[int], stops) -> list[int]:
    """Cut at the earliest stop sequence (excluded from the result)."""
    cut = len(tokens)
    for stop in stops:
        n = len(stop)
        for j in range(len(tokens) - n + 1):
            if tokens[j:j + n] == list(stop):
                cut = min(cut, j)
                break
    return tokens[:cut]


def generate(config: LlamaConfig, params, prompts: list[list[int]], *, max_new_tokens: int, eos_id: int,
             temperature: float = 0.0, top_p: float = 1.0, stop_sequences: list[list[int]] | None = None,
             rng=None, batch_size: int = 32, pad_id: int = 0, sharding=None) -> list[list[int]]:
    """New tokens for each prompt (input order), without EOS and without a trailing stop sequence.

    `sharding`: a `parallel.sharding.Sharding` to run under (params may already be placed by it): rows split over
    data+fsdp, heads over tensor; a context axis only replicates (no ring attention for decoding).
    """
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be in 1..{MAX_NEW_TOKENS}.")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: empty prompt; every prompt needs at least one token (e.g. BOS).")
    stops = tuple(tuple(int(t) for t in s) for s in (stop_sequences or []) if len(s))
    # Host (numpy) params would be copied to the device on every batch: move them once.
    params = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), params)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int] | None] = [None] * len(prompts)
    ctx, dp = contextlib.nullcontext(), 1
    if sharding is not None:
        sharding = sharding.for_decoding()
        ctx, dp = sharding.context(), sharding.data_parallel
    with ctx:
        for lo in range(0, len(order), batch_size):
            idx = order[lo:lo + batch_size]
            bucket = bucket_length(max(len(prompts[i]) for i in idx))
            # Fixed batch shape (dummy rows fill the last batch) so every batch reuses one program.
            rows = batch_size if len(order) > batch_size else len(idx)
            rows = -(-rows // dp) * dp
            tokens = np.full((rows, bucket), pad_id, np.int32)
            pad_len = np.full((rows,), bucket - 1, np.int32)
            for r, i in enumerate(idx):
                tokens[r, bucket - len(prompts[i]):] = prompts[i]
                pad_len[r] = bucket - len(prompts[i])
            rng, sub = jax.random.split(rng)
            out, length = _generate_batch(params, jnp.asarray(tokens), jnp.asarray(pad_len), sub, config=config,
                                          max_new_tokens=max_new_tokens, eos_id=int(eos_id),
                                          temperature=float(temperature), top_p=float(top_p), stops=stops)
            out, length = np.asarray(out), np.asarray(length)
            for r, i in enumerate(idx):
                results[i] = _strip_stop(out[r, :length[r]].tolist(), stops)
    return results

