"""The online-softmax fold shared by the blockwise and ring attention backends, and the one mask value.

Scores arrive one key tile at a time; the running max `m`, normaliser `l` and weighted sum `acc` are
rescaled as each tile comes in, so no backend ever holds a whole row of scores.
"""
from __future__ import annotations

import jax.numpy as jnp

MASK_VALUE = -1e30  # finite, so fully-masked rows never produce NaN


def init(shape, head_dim: int):
    """The empty carry (m, l, acc) for scores of `shape` [..., q] and outputs of `head_dim`, in float32."""
    return (jnp.full(shape, MASK_VALUE, jnp.float32), jnp.zeros(shape, jnp.float32),
            jnp.zeros((*shape, head_dim), jnp.float32))


def update(carry, scores, mask, v, v_layout: str = "bksd"):
    """Fold one tile: scores [b, kv, g, q, s] (float32, scaled), mask broadcastable to it, v in `v_layout`."""
    m, l, acc = carry
    m_new = jnp.maximum(m, jnp.where(mask, scores, MASK_VALUE).max(-1))
    p = jnp.where(mask, jnp.exp(scores - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    pv = jnp.einsum(f"bkgqs,{v_layout}->bkgqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv


def finish(carry):
    """(output [b, kv, g, q, d], log-sum-exp [b, kv, g, q]) of a folded carry; empty rows give 0."""
    m, l, acc = carry
    l = jnp.maximum(l, 1e-30)
    return acc / l[..., None], m + jnp.log(l)
