"""Pallas splash attention (TPU): block-sparse causal + segment masking, skipping fully masked blocks.

Grouped-query attention maps onto splash's multi-query kernel: each KV head serves its G query heads.
`interpret=True` runs the same kernel through the Pallas interpreter (CPU tests).
Given a mesh, the kernel runs per device under `shard_map` (batch over "data"/"fsdp", heads over "tensor"):
XLA cannot partition a Mosaic kernel itself.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sciriff_jax.model.attention_shard import shard_map_specs


@functools.lru_cache(maxsize=32)
def _kernel(length: int, group: int, causal: bool, interpret: bool):
    # Pallas kernels: load only when a TPU run picks this backend
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm  # Pallas kernels

    base = sm.CausalMask((length, length)) if causal else sm.FullMask((length, length))
    mask = sm.MultiHeadMask([base] * group)
    block = min(512, length)
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return sk.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, *, segment_ids=None, causal: bool = True, interpret: bool = False, mesh=None):
    """Splash attention with the same semantics as `reference_attention` + causal/segment mask."""
    b, length, h, d = q.shape
    if length % 128 and not interpret:
        raise ValueError(f"splash attention needs rows that are a multiple of 128 tokens (got {length}); "
                         "pad rows or use attention_backend='blockwise'.")
    seg = jnp.zeros((b, length), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    local = functools.partial(_local, causal=causal, interpret=interpret)
    if mesh is None:
        return local(q, k, v, seg)
    # Rows stay whole on each device (no length axis): only batch and heads are split.
    qkv_spec, seg_spec = shard_map_specs(mesh, None, b, k.shape[2])
    fn = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec), out_specs=qkv_spec,
                       check_vma=False)
    return fn(q, k, v, seg)


def _local(q, k, v, seg, *, causal: bool, interpret: bool):
    """The kernel over one device's rows and heads: q [B, L, H, D], k/v [B, L, KV, D], seg [B, L] int32."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk  # Pallas kernels

    b, length, h, d = q.shape
    kvh = k.shape[2]
    g = h // kvh
    # Built eagerly even inside a trace: the kernel object is cached across calls, so it must hold no tracers.
    with jax.ensure_compile_time_eval():
        kernel = _kernel(length, g, causal, interpret)
    # Splash does not scale the logits itself.
    qh = (q * (d ** -0.5)).reshape(b, length, kvh, g, d).transpose(0, 2, 3, 1, 4)  # [B, KV, G, L, D]
    kh = k.transpose(0, 2, 1, 3)  # [B, KV, L, D]
    vh = v.transpose(0, 2, 1, 3)

    def one(qx, kx, vx, sx):
        return kernel(qx, kx, vx, segment_ids=sk.SegmentIds(q=sx, kv=sx))

    per_head = jax.vmap(one, in_axes=(0, 0, 0, None))  # over KV heads
    out = jax.vmap(per_head, in_axes=(0, 0, 0, 0))(qh, kh, vh, seg)  # [B, KV, G, L, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, length, h, d).astype(q.dtype)
