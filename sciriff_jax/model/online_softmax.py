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


def update(carry, scores, mask, v, pv: str):
    """Fold one tile: scores [..., q, s] (float32, scaled), mask broadcastable to them, v; `pv` is the einsum of
    the tile's probabilities with v (the layouts of scores, v and the output)."""
    m, l, acc = carry
    m_new = jnp.maximum(m, jnp.where(mask, scores, MASK_VALUE).max(-1))
    p = jnp.where(mask, jnp.exp(scores - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    out = jnp.einsum(pv, p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, l * corr + p.sum(-1), acc * corr[..., None] + out


def finish(carry):
    """(output [..., q, d], log-sum-exp [..., q]) of a folded carry; empty rows give 0."""
    m, l, acc = carry
    l = jnp.maximum(l, 1e-30)
    return acc / l[..., None], m + jnp.log(l)
