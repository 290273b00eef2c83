"""Attention over a paged KV cache: each row's keys/values live in fixed-size pages of one shared pool.

The pool is [layers, pages, page_size, kv_heads, head_dim]; row b's token at position t sits in page
`page_table[b, t // page_size]`, slot `t % page_size`. Page 0 is scratch: table entries past a row's
allocation point at it, so writes that fall outside a row's pages (padding, idle rows) land there and are
never read unmasked. Attention walks the key blocks with a loop whose trip count is set by the longest
live row at run time, so one compiled program serves every cache fill and only live pages are read.
Scores are never larger than [query chunk, one key block] (online softmax), so a long prompt prefilled
in chunks never builds an S x S matrix. Plain JAX: the same function on CPU, GPU and TPU.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sciriff_jax.model import online_softmax


def _page_of(page_table, positions, page_size: int):
    """(page, slot) [B, L] of token positions [B, L]; positions past the table go to scratch page 0."""
    index = positions // page_size
    width = page_table.shape[1]
    pages = jnp.take_along_axis(page_table, jnp.clip(index, 0, width - 1), axis=1)
    return jnp.where(index < width, pages, 0), positions % page_size


def write(pool, layer, new, page_table, start):
    """pool with new [B, L, KV, D] written at positions start[b] + i of each row, in layer `layer`."""
    positions = start[:, None] + jnp.arange(new.shape[1], dtype=start.dtype)[None, :]
    pages, slots = _page_of(page_table, positions, pool.shape[2])
    return pool.at[layer, pages, slots].set(new.astype(pool.dtype))


def attend(q, pool_k, pool_v, layer, page_table, start, *, block_pages: int = 4):
    """Causal attention of q [B, Lq, H, D] (row b's queries at positions start[b] + i) over its cached keys.

    Keys at positions <= the query's own are attended (they must have been written already, this chunk's
    included); the rest of the pool is masked. Returns [B, Lq, H, D] in q.dtype.
    """
    b, lq, h, d = q.shape
    page_size, kv = pool_k.shape[2], pool_k.shape[3]
    g = h // kv
    width = page_table.shape[1]
    if width % block_pages:
        raise ValueError(f"paged attention: the page table's width {width} must be a multiple of "
                         f"block_pages={block_pages} (pad the table with scratch page 0).")
    block = block_pages * page_size
    qg = q.reshape(b, lq, kv, g, d).transpose(0, 2, 3, 1, 4)  # [B, KV, G, Lq, D]
    q_pos = start[:, None] + jnp.arange(lq, dtype=start.dtype)[None, :]  # [B, Lq]
    scale = d ** -0.5
    # Only blocks holding some row's keys up to its last query are visited.
    live = jnp.minimum((jnp.max(start) + lq + block - 1) // block, width // block_pages)

    def fold(j, carry):
        pages = jax.lax.dynamic_slice_in_dim(page_table, j * block_pages, block_pages, axis=1)  # [B, bp]
        kb = pool_k[layer, pages].reshape(b, block, kv, d).astype(q.dtype)
        vb = pool_v[layer, pages].reshape(b, block, kv, d).astype(q.dtype)
        s = jnp.einsum("bkgqd,bskd->bkgqs", qg, kb, preferred_element_type=jnp.float32) * scale
        k_pos = j * block + jnp.arange(block, dtype=start.dtype)
        mask = (k_pos[None, None, :] <= q_pos[:, :, None])[:, None, None]  # [B, 1, 1, Lq, block]
        return online_softmax.update(carry, s, mask, vb, "bkgqs,bskd->bkgqd")

    carry = jax.lax.fori_loop(0, live, fold, online_softmax.init((b, kv, g, lq), d))
    out, _ = online_softmax.finish(carry)  # [B, KV, G, Lq, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d).astype(q.dtype)
