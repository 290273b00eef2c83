"""Per-device specs shared by the attention backends that run under shard_map (ring, splash)."""
from __future__ import annotations

import math

from jax.sharding import PartitionSpec as P


def shard_map_specs(mesh, length_axis, batch: int, kv_heads: int):
    """(q/k/v spec, segment-ids spec) for running a backend per device under shard_map: batch over data/fsdp
    where it divides, the length over `length_axis` (or whole rows with None), heads over tensor where it divides."""
    batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.shape and mesh.shape[a] > 1)
    if batch_axes and batch % math.prod(mesh.shape[a] for a in batch_axes):
        batch_axes = ()
    tp = mesh.shape.get("tensor", 1)
    heads = "tensor" if tp > 1 and kv_heads % tp == 0 else None
    b = batch_axes if batch_axes else None
    return P(b, length_axis, heads, None), P(b, length_axis)
