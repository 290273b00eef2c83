"""Every attention backend computes the reference function: values and gradients, packed and unpacked, GQA."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sciriff_jax.parallel import sharding as partitioning
from sciriff_jax.model.attention import (attention, blockwise_tile, make_mask, platform_of, reference_attention,
                                         select_backend)
from sciriff_jax.model.attention_blockwise import blockwise_attention, live_blocks
from sciriff_jax.model.attention_cudnn import segment_runs


def qkv(length=24, heads=4, kv_heads=2, dim=8, batch=2, dtype=jnp.float32, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(k1, (batch, length, heads, dim), dtype),
            jax.random.normal(k2, (batch, length, kv_heads, dim), dtype),
            jax.random.normal(k3, (batch, length, kv_heads, dim), dtype))


def packed_segments(length=24):
    # Row 0: three documents and right padding; row 1: one document filling the row.
    row0 = [1] * 7 + [2] * 10 + [3] * 4 + [0] * (length - 21)
    return jnp.array([row0, [1] * length])


def value_and_grads(fn, q, k, v):
    """Output and d(sum(sin(out)))/d(q, k, v): a loss whose gradient depends on every output element."""
    out = jax.jit(fn)(q, k, v)
    grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v))), argnums=(0, 1, 2)))(q, k, v)
    return out, grads


def assert_same(fn, q, k, v, segment_ids, causal=True, atol=2e-5):
    mask = make_mask(q.shape[1], k.shape[1], segment_ids, causal=causal)
    want, want_g = value_and_grads(lambda q, k, v: reference_attention(q, k, v, mask), q, k, v)
    got, got_g = value_and_grads(fn, q, k, v)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=atol, rtol=atol)
    for a, b in zip(got_g, want_g):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=atol * 5, rtol=atol * 5)


def test_reference_never_attends_across_documents_or_to_the_future():
    q, k, v = qkv()
    seg = packed_segments()
    ref = jax.jit(lambda q, k, v: reference_attention(q, k, v, make_mask(24, 24, seg)))
    out = ref(q, k, v)
    # Changing document 2's values and anything later must not move document 1's outputs.
    v2 = v.at[0, 7:].add(5.0)
    out2 = ref(q, k, v2)
    np.testing.assert_allclose(out2[0, :7], out[0, :7], atol=1e-6)
    assert np.abs(np.asarray(out2[0, 7:17] - out[0, 7:17])).max() > 1e-2


@pytest.mark.parametrize("kv_heads,packed", [(1, True), (2, False), (4, True)])
def test_blockwise_matches_reference(kv_heads, packed):
    q, k, v = qkv(kv_heads=kv_heads)
    seg = packed_segments() if packed else None
    # Blocks of 8 and 16 over 24 tokens: several blocks plus padding of the last one.
    assert_same(lambda q, k, v: blockwise_attention(q, k, v, segment_ids=seg, block_q=8, block_k=16), q, k, v, seg)


def test_blockwise_skips_key_blocks_of_other_documents():
    # Blocks of 8: documents 1 | 2 | 3 | padding in row 0, and 1 | 2 (over two blocks) | padding in row 1.
    seg = jnp.array([[1] * 8 + [2] * 8 + [3] * 8 + [0] * 8, [1] * 8 + [2] * 16 + [0] * 8])
    blocks = seg.reshape(2, 4, 8).transpose(1, 0, 2)
    live = np.asarray(live_blocks(blocks, blocks, True, 8, 8))
    np.testing.assert_array_equal(live, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    q, k, v = qkv(length=32)
    assert_same(lambda q, k, v: blockwise_attention(q, k, v, segment_ids=seg, block_q=8, block_k=8), q, k, v, seg)


def test_blockwise_block_ranges_keep_documents_that_straddle_blocks():
    # Block 1 holds the end of document 1 and padding; block 2 only padding (0) and blockwise's own (-1).
    seg = jnp.array([[1] * 12 + [0] * 8])
    blocks = jnp.pad(seg, ((0, 0), (0, 4)), constant_values=-1).reshape(1, 3, 8).transpose(1, 0, 2)
    live = np.asarray(live_blocks(blocks, blocks, False, 8, 8))
    np.testing.assert_array_equal(live, [[1, 1, 0], [1, 1, 1], [0, 1, 1]])


def test_blockwise_gradient_never_materialises_the_score_matrix():
    length = 4096
    q = jax.ShapeDtypeStruct((1, length, 2, 16), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, length, 1, 16), jnp.float32)

    def temp_bytes(fn):
        loss = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))
        return jax.jit(loss).lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes

    scores = 2 * length * length * 4  # fp32 [heads, S, S]
    blockwise = temp_bytes(lambda q, k, v: blockwise_attention(q, k, v, block_q=256, block_k=256))
    reference = temp_bytes(lambda q, k, v: reference_attention(q, k, v, make_mask(length, length)))
    assert reference >= scores  # the check below can fail: the reference really holds S x S
    assert blockwise < scores / 8


def test_blockwise_under_a_scan_over_layers_keeps_its_tile_masks_inside_the_tile_loop():
    # A model scans its layers; differentiating the scan hoists what depends on its constants alone. The masks
    # depend on the segment ids only and were hoisted for every (query block, key block) pair at once.
    b, length, heads, d, tile = 1, 512, 2, 16, 128
    seg = jnp.ones((b, length), jnp.int32)

    def loss(x, scales):
        def layer(h, s):
            return blockwise_attention(h * s, h, h, segment_ids=seg, block_q=tile, block_k=tile), None
        return jnp.sum(jax.lax.scan(layer, x, scales)[0])

    hlo = jax.jit(jax.grad(loss, argnums=1)).lower(jnp.ones((b, length, heads, d)), jnp.ones(3)).compile().as_text()
    tiles = [np.prod([int(n) for n in dims.split(",")]) // (tile * tile)
             for dims in re.findall(rf"(?:f32|pred)\[([\d,]*{tile},{tile})\]", hlo)]
    assert tiles, "no score tile in the compiled gradient: the check below would pass vacuously"
    assert max(tiles) <= b * heads  # one [B, KV, G * bq, bk] tile at a time, never a stack of them


def test_blockwise_matches_reference_without_causal_mask():
    q, k, v = qkv()
    seg = packed_segments()
    assert_same(lambda q, k, v: blockwise_attention(q, k, v, segment_ids=seg, causal=False, block_q=16, block_k=8),
                q, k, v, seg, causal=False)


@pytest.mark.parametrize("packed", [False, True])
def test_ring_over_the_context_axis_matches_reference(packed):
    mesh = partitioning.make_mesh("fsdp_tp_cp", {"context": 4, "tensor": 2, "fsdp": 1})
    q, k, v = qkv()
    seg = packed_segments() if packed else None
    assert_same(lambda q, k, v: attention(q, k, v, segment_ids=seg, backend="ring", mesh=mesh), q, k, v, seg)


def test_auto_picks_reference_for_short_rows_blockwise_for_long_and_ring_on_a_context_mesh():
    q_short = jnp.zeros((1, 128, 4, 8))
    q_long = jax.ShapeDtypeStruct((1, 8192, 4, 8), jnp.float32)
    assert select_backend("auto", q_short) == "reference"
    assert select_backend("auto", q_long) == "blockwise"
    mesh = partitioning.make_mesh("fsdp_tp_cp")
    assert select_backend("auto", q_short, mesh=mesh) == "ring"
    with pytest.raises(ValueError, match="unknown"):
        select_backend("flash9000", q_short)


def test_auto_follows_the_given_platform_not_the_host():
    # Ahead-of-time compilation on a CPU host must pick what the GPU/TPU target would.
    bf16 = jax.ShapeDtypeStruct((1, 256, 4, 64), jnp.bfloat16)
    assert select_backend("auto", bf16, platform="gpu") == "cudnn"
    assert select_backend("auto", bf16.update(dtype=jnp.float32), platform="gpu") == "reference"
    assert select_backend("auto", bf16, platform="tpu") == "splash"
    assert select_backend("auto", jax.ShapeDtypeStruct((1, 200, 4, 64), jnp.bfloat16), platform="tpu") == "reference"
    assert select_backend("auto", bf16, platform="cpu") == "reference"
    assert select_backend("auto", bf16) == select_backend("auto", bf16, platform=jax.default_backend())


def test_blockwise_tile_follows_the_meshs_platform_not_the_compiling_host():
    # 256-token tiles where they were measured fastest (a CPU), 512 elsewhere; inside the model the platform is the
    # mesh's devices' (ahead-of-time compilation for a TPU / GPU target on a CPU host keeps the target's tile).
    assert blockwise_tile("cpu") == 256 and blockwise_tile("tpu") == 512 and blockwise_tile("gpu") == 512
    assert platform_of(None) is None
    assert platform_of(partitioning.make_mesh("fsdp")) == jax.default_backend()


def test_segment_runs_describe_each_document_for_the_varlen_kernel():
    lengths, offsets, count = segment_runs(packed_segments(), max_segments=5)
    np.testing.assert_array_equal(lengths, [[7, 10, 4, 3, -1], [24, -1, -1, -1, -1]])
    np.testing.assert_array_equal(offsets, [[0, 7, 17, 21, -1, -1], [0, -1, -1, -1, -1, -1]])
    np.testing.assert_array_equal(count, [4, 1])


@pytest.mark.gpu
@pytest.mark.parametrize("packed", [False, True])
def test_cudnn_matches_reference_in_bf16(packed):
    from sciriff_jax.model.attention_cudnn import cudnn_attention

    q, k, v = qkv(length=256, heads=8, kv_heads=2, dim=64, dtype=jnp.bfloat16)
    seg = jnp.array([[1] * 100 + [2] * 120 + [0] * 36, [1] * 256]) if packed else None
    assert_same(lambda q, k, v: cudnn_attention(q, k, v, segment_ids=seg), q, k, v, seg, atol=3e-2)


@pytest.mark.gpu
def test_cudnn_private_varlen_entry_point_still_exists():
    from sciriff_jax.model.attention_cudnn import _private_varlen

    assert _private_varlen() is not None, "jax moved the cuDNN variable-length attention; update attention_cudnn.py"
