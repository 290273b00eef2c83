"""Rotary position embeddings (Hugging Face "rotate half" layout) with linear and Llama-3 scaling."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float = 10000.0, scaling: dict | None = None) -> np.ndarray:
    """Per-pair inverse frequencies [head_dim // 2] (float64 numpy, so scaling matches HF exactly)."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return inv
    factor = float(scaling["factor"])
    if kind == "linear":
        # Linear interpolation: positions are divided by the factor, i.e. frequencies are.
        return inv / factor
    if kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
        scaled = np.where(wavelen > old_len / low, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return np.where(medium, smoothed, scaled)
    raise ValueError(f"rope_scaling type {kind!r} is not supported (use 'linear' or 'llama3').")


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: np.ndarray) -> jnp.ndarray:
    """Rotate x [B, L, H, D] by per-token positions [B, L]; computed in float32, returned in x.dtype."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)  # [B, L, D/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def positions_from_segments(segment_ids: jnp.ndarray) -> jnp.ndarray:
    """Per-document positions (restart at 0 where the segment id changes) for packed rows [B, L]."""
    length = segment_ids.shape[-1]
    idx = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), segment_ids.shape)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[..., :1], bool), segment_ids[..., 1:] != segment_ids[..., :-1]], axis=-1)
    start_idx = jnp.where(starts, idx, 0)
    start_idx = jax.lax.cummax(start_idx, axis=segment_ids.ndim - 1)
    return idx - start_idx
