"""Pallas splash attention: the TPU kernel run through the Pallas interpreter equals the reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sciriff_jax.model.attention import make_mask, reference_attention
from sciriff_jax.model.attention_splash import splash_attention


def test_splash_in_interpret_mode_matches_reference_on_packed_gqa_rows():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q = jax.random.normal(keys[0], (1, 128, 4, 128))
    k = jax.random.normal(keys[1], (1, 128, 2, 128))
    v = jax.random.normal(keys[2], (1, 128, 2, 128))
    seg = jnp.array([[1] * 50 + [2] * 70 + [0] * 8])
    mask = make_mask(128, 128, seg)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    splash = lambda q, k, v: splash_attention(q, k, v, segment_ids=seg, interpret=True)  # noqa: E731
    ref = lambda q, k, v: reference_attention(q, k, v, mask)  # noqa: E731
    np.testing.assert_allclose(splash(q, k, v), ref(q, k, v), atol=2e-5)
    got = jax.grad(loss(splash), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.tpu
def test_splash_on_tpu_matches_reference_in_bf16():
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    q = jax.random.normal(keys[0], (2, 512, 8, 128), jnp.bfloat16)
    k = jax.random.normal(keys[1], (2, 512, 2, 128), jnp.bfloat16)
    v = jax.random.normal(keys[2], (2, 512, 2, 128), jnp.bfloat16)
    seg = jnp.array([[1] * 200 + [2] * 312, [1] * 512])
    want = reference_attention(q, k, v, make_mask(512, 512, seg)).astype(jnp.float32)
    got = splash_attention(q, k, v, segment_ids=seg).astype(jnp.float32)
    np.testing.assert_allclose(got, want, atol=3e-2)


def test_splash_on_a_sharded_mesh_runs_per_device_and_matches_reference():
    # XLA cannot partition a Mosaic kernel, so with a mesh splash must run under shard_map.
    from sciriff_jax.parallel import sharding as partitioning

    mesh = partitioning.make_mesh("fsdp_tp", {"data": 2, "fsdp": 2, "tensor": 2})
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    q = jax.random.normal(keys[0], (4, 128, 4, 64))
    k = jax.random.normal(keys[1], (4, 128, 2, 64))
    v = jax.random.normal(keys[2], (4, 128, 2, 64))
    seg = jnp.array([[1] * 50 + [2] * 70 + [0] * 8, [1] * 128, [1] * 100 + [2] * 28, [1] * 10 + [0] * 118])
    mask = make_mask(128, 128, seg)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    splash = lambda q, k, v: splash_attention(q, k, v, segment_ids=seg, interpret=True, mesh=mesh)  # noqa: E731
    ref = lambda q, k, v: reference_attention(q, k, v, mask)  # noqa: E731
    assert "shard_map" in str(jax.make_jaxpr(splash)(q, k, v))
    np.testing.assert_allclose(jax.jit(splash)(q, k, v), ref(q, k, v), atol=2e-5)
    got = jax.jit(jax.grad(loss(splash), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-4)
