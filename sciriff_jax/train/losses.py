"""Token log-probabilities and the SFT loss without ever holding [batch, length, vocab] logits at once.

The output head is applied a chunk of positions at a time, forward and backward, so the largest loss temporary is
[batch, chunk, vocab] float32 instead of the full logits plus their gradient. Two custom VJPs share the chunking:

- `token_logprobs` (DPO, GRPO: any function of the log-probabilities) saves each position's log-normaliser and
  recomputes each chunk's logits in the backward pass (the head runs three times per chunk);
- `token_loss_sums` (SFT: a weighted sum of cross entropies, so d loss / d logits is known in the forward pass)
  computes its gradients in the forward pass from the logits already in hand and the backward pass only scales
  them (the head runs twice per chunk, once when the head is frozen, as under LoRA).

Public API (stable; other trainers import it):

- `output_head(params, config) -> [D, V]`: the output projection (the embedding, transposed, when tied).
- `token_logprobs(hidden, head, targets, *, chunk_size=None) -> [B, L] float32`: log p(targets[b, l]) from the
  final-normed hidden states [B, L, D] that `Llama(...)(..., return_hidden=True)` returns. Differentiable in
  `hidden` and `head`; `chunk_size` positions per chunk (None: `auto_chunk_size`).
- `model_token_logprobs(model, params, tokens, targets, *, segment_ids=None, positions=None, chunk_size=None)
  -> [B, L] float32`: the same, running a `Llama` module (or any module whose `config` is a LlamaConfig and that
  takes `return_hidden=True`) on `params` first.
- `token_loss_sums(hidden, head, targets, weights, *, chunk_size=None) -> (sum CE * w, sum w)`: the SFT sums,
  float32 scalars.
- `loss_sums_from_logits(logits, targets, weights) -> (sum CE * w, sum w)`: the plain reference from full
  logits (for modules that only return logits).
- `normalized_loss(loss_sums, weight_sums, normalization) -> loss`: one update's loss from per-microbatch sums
  [M] under `LOSS_NORMALIZATIONS`: "tokens" (sum over all target tokens / their count) or "microbatch"
  (open-instruct: each microbatch's token mean, then the mean over microbatches).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

LOSS_NORMALIZATIONS = ("tokens", "microbatch")
# Elements of one chunk's float32 logits (128 MiB): small next to a model's activations, large enough that each
# chunk's head matmul keeps the device busy. At SmolLM2-135M's vocabulary and 4 x 1,024 tokens that is 128
# positions a chunk (512 rows a matmul): 0.4 s a step faster on a 2-core CPU than 64 MiB, for +0.04 GB
# (BENCHMARKS.md section 9.7).
CHUNK_ELEMENTS = 1 << 25
_LOGIT_AXES = ("activation_batch", "activation_length", "activation_vocab")


def output_head(params, config):
    """The output projection [D, V] of a Llama's params (the embedding, transposed, when tied)."""
    return params["embedding"].T if config.tie_embeddings else params["lm_head"]


def auto_chunk_size(batch: int, length: int, vocab: int) -> int:
    """Positions per chunk: the largest power of two whose [batch, chunk, vocab] logits fit CHUNK_ELEMENTS
    (at least 8, at most `length`)."""
    fit = max(8, CHUNK_ELEMENTS // max(1, batch * vocab))
    return min(length, 1 << (fit.bit_length() - 1))


def _chunks(x, chunk: int):
    """[B, L, ...] -> [n, B, chunk, ...], padding L up to a multiple of `chunk`."""
    b, length = x.shape[:2]
    n = -(-length // chunk)
    pad = n * chunk - length
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)


def _unchunk(x, length: int):
    """[n, B, chunk, ...] -> [B, L, ...] (the padding dropped)."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _chunk_logits(h, head):
    logits = jnp.einsum("bcd,dv->bcv", h, head, preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits, _LOGIT_AXES)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _logprobs(hidden, head, targets, chunk):
    return _logprobs_fwd(hidden, head, targets, chunk)[0]


def _logprobs_fwd(hidden, head, targets, chunk):
    length = hidden.shape[1]

    def body(_, xs):
        h, t = xs
        logits = _chunk_logits(h, head)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return None, (picked - lse, lse)

    _, (logp, lse) = jax.lax.scan(body, None, (_chunks(hidden, chunk), _chunks(targets, chunk)))
    return _unchunk(logp, length), (hidden, head, targets, _unchunk(lse, length))


def _logprobs_bwd(chunk, residuals, g):
    hidden, head, targets, lse = residuals
    length, vocab = hidden.shape[1], head.shape[1]

    def body(d_head, xs):
        h, t, l, gc = xs
        probs = jnp.exp(_chunk_logits(h, head) - l[..., None])
        # d logp[t] / d logits = onehot(t) - softmax, scaled by each position's cotangent.
        d_logits = (jax.nn.one_hot(t, vocab, dtype=jnp.float32) - probs) * gc[..., None]
        d_logits = d_logits.astype(hidden.dtype)
        d_h = jnp.einsum("bcv,dv->bcd", d_logits, head, preferred_element_type=jnp.float32)
        d_head = d_head + jnp.einsum("bcd,bcv->dv", h, d_logits, preferred_element_type=jnp.float32)
        return d_head, d_h.astype(hidden.dtype)

    xs = (_chunks(hidden, chunk), _chunks(targets, chunk), _chunks(lse, chunk), _chunks(g.astype(jnp.float32), chunk))
    d_head, d_hidden = jax.lax.scan(body, jnp.zeros(head.shape, jnp.float32), xs)
    return _unchunk(d_hidden, length), d_head.astype(head.dtype), None


_logprobs.defvjp(_logprobs_fwd, _logprobs_bwd)


def token_logprobs(hidden, head, targets, *, chunk_size: int | None = None):
    """log p(targets) [B, L] float32 from final hidden states [B, L, D] and the head [D, V], a chunk at a time."""
    b, length = targets.shape
    chunk = chunk_size or auto_chunk_size(b, length, head.shape[1])
    return _logprobs(hidden, head.astype(hidden.dtype), targets.astype(jnp.int32), int(min(chunk, length)))


def model_token_logprobs(model, params, tokens, targets, *, segment_ids=None, positions=None,
                         chunk_size: int | None = None):
    """log p(targets) [B, L] float32 of a Llama module on `params` (inputs `tokens`), without full logits."""
    hidden = model.apply({"params": params}, tokens, segment_ids=segment_ids, positions=positions,
                         return_hidden=True)
    return token_logprobs(hidden, output_head(params, model.config), targets, chunk_size=chunk_size)


def _ce_chunk(h, head, t, w):
    """One chunk's (sum CE * w, exp(logits - max), their sum per position): one exp pass over the logits."""
    logits = _chunk_logits(h, head)
    top = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - top)
    s = jnp.sum(e, axis=-1)
    picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
    ce = top[..., 0] + jnp.log(s) - picked
    return jnp.sum(ce * w), e, s


def _ce_sum(hidden, head, targets, w, chunk):
    def body(total, xs):
        h, t, wc = xs
        return total + _ce_chunk(h, head, t, wc)[0], None

    xs = (_chunks(hidden, chunk), _chunks(targets, chunk), _chunks(w, chunk))
    return jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused_ce(hidden, head, targets, w, chunk):
    return _ce_sum(hidden, head, targets, w, chunk)


def _fused_ce_fwd(hidden, head, targets, w, chunk):
    # The loss is linear in each token's CE with known weights, so its gradient is known before the backward pass:
    # it is computed here, chunk by chunk from logits already in hand (no recomputation of the head), and the
    # backward only scales it. The head's gradient is skipped when the head is not differentiated (LoRA).
    if w.perturbed:
        raise NotImplementedError("token_loss_sums: the loss weights are data; their gradient is not computed.")
    train_head = head.perturbed
    hidden, head, targets, w = hidden.value, head.value, targets.value, w.value
    length, vocab = hidden.shape[1], head.shape[1]

    def body(carry, xs):
        total, d_head = carry
        h, t, wc = xs
        loss, e, s = _ce_chunk(h, head, t, wc)
        # d CE / d logits = softmax - onehot(target), times each position's weight.
        d_logits = (e * (wc / s)[..., None] - jax.nn.one_hot(t, vocab, dtype=jnp.float32) * wc[..., None])
        d_logits = d_logits.astype(hidden.dtype)
        d_h = jnp.einsum("bcv,dv->bcd", d_logits, head, preferred_element_type=jnp.float32)
        if d_head is not None:
            d_head = d_head + jnp.einsum("bcd,bcv->dv", h, d_logits, preferred_element_type=jnp.float32)
        return (total + loss, d_head), d_h.astype(hidden.dtype)

    init = (jnp.zeros((), jnp.float32), jnp.zeros(head.shape, jnp.float32) if train_head else None)
    xs = (_chunks(hidden, chunk), _chunks(targets, chunk), _chunks(w, chunk))
    (total, d_head), d_hidden = jax.lax.scan(body, init, xs)
    return total, (_unchunk(d_hidden, length), None if d_head is None else d_head.astype(head.dtype))


def _fused_ce_bwd(chunk, residuals, g):
    d_hidden, d_head = residuals
    scale = lambda x: None if x is None else x * g.astype(x.dtype)  # noqa: E731
    return scale(d_hidden), scale(d_head), None, None


_fused_ce.defvjp(_fused_ce_fwd, _fused_ce_bwd, symbolic_zeros=True)


def token_loss_sums(hidden, head, targets, weights, *, chunk_size: int | None = None):
    """(sum of per-token cross entropy * weight, sum of weights), float32, from hidden states and the head.

    The SFT loss's own path (`_fused_ce`): its gradient is computed in the forward pass from each chunk's logits
    (the weights are data), so the head runs twice per chunk, not three times as through `token_logprobs`."""
    b, length = targets.shape
    w = weights.astype(jnp.float32)
    chunk = int(min(chunk_size or auto_chunk_size(b, length, head.shape[1]), length))
    return _fused_ce(hidden, head.astype(hidden.dtype), targets.astype(jnp.int32), w, chunk), jnp.sum(w)


def loss_sums_from_logits(logits, targets, weights):
    """(sum of per-token cross entropy * weight, sum of weights) from full logits [B, L, V]; float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    return -jnp.sum(picked * w), jnp.sum(w)


def normalized_loss(loss_sums, weight_sums, normalization: str = "tokens"):
    """One update's loss from per-microbatch sums [M]: "tokens" = sum / count over all target tokens;
    "microbatch" = mean over microbatches of each one's token mean (a microbatch without targets counts 0)."""
    if normalization == "tokens":
        return jnp.sum(loss_sums) / jnp.maximum(jnp.sum(weight_sums), 1.0)
    if normalization == "microbatch":
        return jnp.mean(loss_sums / jnp.maximum(weight_sums, 1.0))
    raise ValueError(f"loss normalization {normalization!r}; choose one of {LOSS_NORMALIZATIONS} "
                     "(--gin.LOSS_NORMALIZATION)")
