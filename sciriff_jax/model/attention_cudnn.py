"""cuDNN flash attention (GPU): the public JAX entry for unpacked rows, cuDNN's variable-length path for packed ones.

The variable-length path lives in a private JAX module (`jax._src.cudnn.fused_attention_stablehlo`);
it skips the masked-out blocks between documents, which a mask or bias cannot (ANCHORS.md: 2-6x faster
than masking). It is wrapped here, pinned by a GPU test, and falls back to the public API with a
segment mask when the private function is missing or a row has more documents than `MAX_SEGMENTS`.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

# Static bound on documents per packed row for the variable-length path (its arrays are [B, M]).
MAX_SEGMENTS = 64


def _private_varlen():
    try:
        # cuDNN kernels: jax internals that load only when a GPU run picks this backend
        from jax._src.cudnn.fused_attention_stablehlo import MaskType, dot_product_attention
    except ImportError as err:  # pragma: no cover - depends on the installed jax
        log.warning("cuDNN variable-length attention unavailable (%s); packed rows use a segment mask.", err)
        return None
    return dot_product_attention, MaskType


def segment_runs(segment_ids, max_segments: int = MAX_SEGMENTS):
    """Per-row (lengths [B, M], offsets [B, M+1], count [B]) of runs of equal segment id, -1 padded."""
    b, length = segment_ids.shape
    start = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    run = jnp.cumsum(start, axis=1) - 1  # run index of every token
    count = run[:, -1] + 1
    slots = jnp.arange(max_segments)
    lengths = jnp.sum(run[:, :, None] == slots[None, None, :], axis=1).astype(jnp.int32)  # [B, M]
    pos = jnp.arange(length)
    # Start of run j = first token whose run index is j.
    starts = jnp.min(jnp.where(run[:, :, None] == slots[None, None, :], pos[None, :, None], length), axis=1)
    valid = slots[None, :] < count[:, None]
    lengths = jnp.where(valid, lengths, -1)
    offsets = jnp.where(valid, starts, -1).astype(jnp.int32)
    offsets = jnp.concatenate([offsets, jnp.full((b, 1), -1, jnp.int32)], axis=1)
    return lengths, offsets, count


def _masked(q, k, v, segment_ids, causal):
    mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="cudnn")


def cudnn_attention(q, k, v, *, segment_ids=None, causal: bool = True, max_segments: int = MAX_SEGMENTS):
    """cuDNN fused attention; packed rows through the variable-length kernel where possible."""
    if segment_ids is None:
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")
    private = _private_varlen()
    if private is None or not causal:
        return _masked(q, k, v, segment_ids, causal)
    varlen, mask_type = private
    lengths, offsets, count = segment_runs(segment_ids, max_segments)

    def packed(q, k, v):
        return varlen(q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
                      scale=q.shape[-1] ** -0.5, mask_type=mask_type.CAUSAL, qkv_layout="BTNH")

    # Rows with more documents than the static bound would be truncated: take the masked path instead.
    return jax.lax.cond(jnp.all(count <= max_segments), packed,
                        lambda q, k, v: _masked(q, k, v, segment_ids, causal), q, k, v)
