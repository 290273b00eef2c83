"""Attention over a paged KV cache computes causal attention over each row's own keys, wherever its pages sit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sciriff_jax.model import attention_paged
from sciriff_jax.model.attention import make_mask, reference_attention

PAGE, KV, H, D = 4, 2, 4, 8


def _rows(rng, lengths):
    return [jax.random.normal(k, (n, KV, D)) for k, n in zip(jax.random.split(rng, len(lengths)), lengths)]


@pytest.mark.parametrize("chunk", [1, 5])
def test_paged_attention_equals_reference_attention_per_row(chunk):
    lengths = [13, 6]  # positions already cached + this chunk, per row
    k_rows, v_rows = _rows(jax.random.PRNGKey(0), lengths), _rows(jax.random.PRNGKey(1), lengths)
    q = jax.random.normal(jax.random.PRNGKey(2), (2, chunk, H, D))
    # Row 0 holds pages 5, 2, 7, 1 (out of order); row 1 holds pages 3, 6; the rest of each table is scratch.
    table = jnp.array([[5, 2, 7, 1, 0, 0, 0, 0], [3, 6, 0, 0, 0, 0, 0, 0]], jnp.int32)
    pool_k = jnp.full((1, 8, PAGE, KV, D), 9.0)  # stale values everywhere: only the row's own keys may count
    pool_v = jnp.full((1, 8, PAGE, KV, D), -9.0)
    start = jnp.array([n - chunk for n in lengths], jnp.int32)
    for b, n in enumerate(lengths):
        pool_k = attention_paged.write(pool_k, 0, k_rows[b][None], table[b:b + 1], jnp.array([0], jnp.int32))
        pool_v = attention_paged.write(pool_v, 0, v_rows[b][None], table[b:b + 1], jnp.array([0], jnp.int32))
    got = attention_paged.attend(q, pool_k, pool_v, 0, table, start, block_pages=2)
    for b, n in enumerate(lengths):
        mask = make_mask(chunk, n, causal=True, q_offset=n - chunk)
        want = reference_attention(q[b:b + 1], k_rows[b][None], v_rows[b][None], mask)
        np.testing.assert_allclose(np.asarray(got[b:b + 1]), np.asarray(want), atol=1e-5)


def test_writes_past_a_rows_pages_go_to_the_scratch_page():
    pool = jnp.zeros((1, 3, PAGE, KV, D))
    table = jnp.array([[2]], jnp.int32)  # one page: positions 0..3
    new = jnp.ones((1, 6, KV, D))
    out = attention_paged.write(pool, 0, new, table, jnp.array([0], jnp.int32))
    assert float(out[0, 2].sum()) == PAGE * KV * D  # its own page, full
    assert float(out[0, 1].sum()) == 0.0            # another row's page untouched
    assert float(out[0, 0, :2].sum()) == 2 * KV * D  # the overflow landed in scratch


def test_a_table_width_that_is_not_whole_key_blocks_is_refused():
    pool = jnp.zeros((1, 4, PAGE, KV, D))
    with pytest.raises(ValueError, match="multiple of block_pages=4"):
        attention_paged.attend(jnp.zeros((1, 1, H, D)), pool, pool, 0, jnp.zeros((1, 3), jnp.int32),
                               jnp.array([0], jnp.int32), block_pages=4)
