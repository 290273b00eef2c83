"""Ring attention over the mesh's "context" axis: each device keeps its query block and passes KV blocks on.

Rows are split along length over `context`; after step t a device holds the KV block of the device t
places before it. Scores for each block are folded into an online softmax, so no device ever holds
the whole row's keys. Gradients come from autodiff through `ppermute` (its transpose is the reverse ring).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

_NEG = -1e30


def _block_update(carry, q, k, v, mask, scale):
    m, l, acc = carry
    b, lq, h, d = q.shape
    kvh = k.shape[2]
    qg = q.reshape(b, lq, kvh, h // kvh, d)
    s = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32) * scale
    mask = mask[:, None, None]
    s = jnp.where(mask, s, _NEG)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv


def _specs(mesh, axis, batch, kv_heads):
    batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.shape and mesh.shape[a] > 1)
    if batch_axes and batch % math.prod(mesh.shape[a] for a in batch_axes):
        batch_axes = ()
    heads = "tensor" if "tensor" in mesh.shape and mesh.shape["tensor"] > 1 and kv_heads % mesh.shape["tensor"] == 0 \
        else None
    b = batch_axes if batch_axes else None
    return P(b, axis, heads, None), P(b, axis)


def ring_attention(q, k, v, *, segment_ids=None, causal: bool = True, mesh, axis: str = "context"):
    """Causal, segment-aware GQA attention with the length dimension sharded over `axis` of `mesh`."""
    cp = int(mesh.shape[axis])
    b, length, h, d = q.shape
    if length % cp:
        raise ValueError(f"ring attention: row length {length} is not divisible by the mesh's {axis!r} axis "
                         f"({cp}); pad rows to a multiple of {cp}.")
    seg = jnp.zeros((b, length), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    qkv_spec, seg_spec = _specs(mesh, axis, b, k.shape[2])
    scale = d ** -0.5
    perm = [(i, (i + 1) % cp) for i in range(cp)]

    def local(q, k, v, seg):
        idx = jax.lax.axis_index(axis)
        lb = q.shape[1]
        q_pos = idx * lb + jnp.arange(lb)
        bl, _, hl, _ = q.shape
        kvl = k.shape[2]
        carry = (jnp.full((bl, kvl, hl // kvl, lb), _NEG, jnp.float32),
                 jnp.zeros((bl, kvl, hl // kvl, lb), jnp.float32),
                 jnp.zeros((bl, kvl, hl // kvl, lb, d), jnp.float32))
        kb, vb, sb = k, v, seg
        for t in range(cp):
            src = (idx - t) % cp
            k_pos = src * lb + jnp.arange(lb)
            mask = seg[:, :, None] == sb[:, None, :]
            if causal:
                mask = mask & (q_pos[:, None] >= k_pos[None, :])[None]
            carry = _block_update(carry, q, kb, vb, mask, scale)
            if t < cp - 1:
                kb, vb, sb = jax.lax.ppermute((kb, vb, sb), axis, perm)
        m, l, acc = carry
        out = acc / jnp.maximum(l, 1e-30)[..., None]  # [b, kv, g, lq, d]
        return out.transpose(0, 3, 1, 2, 4).reshape(q.shape).astype(q.dtype)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec), out_specs=qkv_spec,
                       check_vma=False)
    return fn(q, k, v, seg)
