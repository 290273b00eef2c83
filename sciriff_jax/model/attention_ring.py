"""Ring attention over the mesh's "context" axis: each device keeps its query block and passes KV blocks on.

Rows are split along length over `context`; after step t a device holds the KV block of the device t
places before it. Scores for each block are folded into an online softmax, so no device ever holds
the whole row's keys. Gradients come from autodiff through `ppermute` (its transpose is the reverse ring).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sciriff_jax.model import online_softmax
from sciriff_jax.model.attention_shard import shard_map_specs

def ring_attention(q, k, v, *, segment_ids=None, causal: bool = True, mesh, axis: str = "context"):
    """Causal, segment-aware GQA attention with the length dimension sharded over `axis` of `mesh`."""
    cp = int(mesh.shape[axis])
    b, length, h, d = q.shape
    if length % cp:
        raise ValueError(f"ring attention: row length {length} is not divisible by the mesh's {axis!r} axis "
                         f"({cp}); pad rows to a multiple of {cp}.")
    seg = jnp.zeros((b, length), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    qkv_spec, seg_spec = shard_map_specs(mesh, axis, b, k.shape[2])
    scale = d ** -0.5
    perm = [(i, (i + 1) % cp) for i in range(cp)]

    def local(q, k, v, seg):
        idx = jax.lax.axis_index(axis)
        lb = q.shape[1]
        q_pos = idx * lb + jnp.arange(lb)
        bl, _, hl, _ = q.shape
        kvl = k.shape[2]
        carry = online_softmax.init((bl, kvl, hl // kvl, lb), d)
        qg = q.reshape(bl, lb, kvl, hl // kvl, d)
        kb, vb, sb = k, v, seg
        for t in range(cp):
            src = (idx - t) % cp
            k_pos = src * lb + jnp.arange(lb)
            mask = seg[:, :, None] == sb[:, None, :]
            if causal:
                mask = mask & (q_pos[:, None] >= k_pos[None, :])[None]
            s = jnp.einsum("bqkgd,bskd->bkgqs", qg, kb, preferred_element_type=jnp.float32) * scale
            carry = online_softmax.update(carry, s, mask[:, None, None], vb, "bkgqs,bskd->bkgqd")
            if t < cp - 1:
                kb, vb, sb = jax.lax.ppermute((kb, vb, sb), axis, perm)
        out, _ = online_softmax.finish(carry)  # [b, kv, g, lq, d]
        return out.transpose(0, 3, 1, 2, 4).reshape(q.shape).astype(q.dtype)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec), out_specs=qkv_spec,
                       check_vma=False)
    return fn(q, k, v, seg)
