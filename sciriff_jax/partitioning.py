"""Device meshes and one logical-axis -> mesh-axis rule table per parallelism layout.

Mesh axes are always ("data", "fsdp", "tensor", "context"); a layout leaves unused axes at size 1.
Use: `mesh = make_mesh("fsdp_tp")`, shard params with `param_shardings(config, mesh, "fsdp_tp")`,
batches with `batch_sharding(mesh, "fsdp_tp")`, and trace the step inside `activation_context(mesh,
layout)` so the model's activation constraints resolve against the same table.
"""
from __future__ import annotations

import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "context")
LAYOUTS = ("data", "fsdp", "fsdp_tp", "fsdp_tp_cp")
BATCH_AXES = ("data", "fsdp")

_PARAM_NAMES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", "layers")
_ACT_NAMES = ("activation_batch", "activation_length", "activation_embed", "activation_heads",
              "activation_kv_heads", "activation_head_dim", "activation_mlp", "activation_vocab")


def _table(layout: str) -> dict:
    rules = {name: None for name in _PARAM_NAMES + _ACT_NAMES}
    rules["activation_batch"] = BATCH_AXES
    if layout in ("fsdp", "fsdp_tp", "fsdp_tp_cp"):
        # ZeRO-3 style: every weight matrix is split along its model dimension over fsdp.
        rules["embed"] = "fsdp"
    if layout in ("fsdp_tp", "fsdp_tp_cp"):
        # Megatron style: heads and MLP columns split over tensor; activations follow.
        for name in ("heads", "kv_heads", "mlp", "vocab"):
            rules[name] = "tensor"
            rules["activation_" + name] = "tensor"
    if layout == "fsdp_tp_cp":
        rules["activation_length"] = "context"
    return rules


def logical_rules(layout: str) -> tuple[tuple[str, object], ...]:
    """The (logical axis name, mesh axes or None) table for a layout, in Flax's logical_axis_rules form."""
    if layout not in LAYOUTS:
        raise ValueError(f"partitioning layout {layout!r} is unknown; choose one of {LAYOUTS} "
                         "(gin: the run's `layout` binding).")
    return tuple(_table(layout).items())


def default_mesh_shape(layout: str, num_devices: int) -> dict[str, int]:
    """Sizes per mesh axis for a layout when the user gives none (tensor/context 2 where they fit)."""
    shape = dict.fromkeys(MESH_AXES, 1)
    if layout == "data":
        shape["data"] = num_devices
        return shape
    rest = num_devices
    if layout in ("fsdp_tp", "fsdp_tp_cp") and rest % 2 == 0:
        shape["tensor"], rest = 2, rest // 2
    if layout == "fsdp_tp_cp" and rest % 2 == 0:
        shape["context"], rest = 2, rest // 2
    shape["fsdp"] = rest
    return shape


def make_mesh(layout: str, mesh_shape: dict[str, int] | None = None, devices=None) -> Mesh:
    """A Mesh with axes ("data","fsdp","tensor","context") sized for `layout` (or `mesh_shape`)."""
    logical_rules(layout)  # validates the name
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if mesh_shape is None:
        shape = default_mesh_shape(layout, n)
    else:
        unknown = set(mesh_shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"mesh_shape has unknown axes {sorted(unknown)}; the axes are {MESH_AXES}.")
        shape = {a: int(mesh_shape.get(a, 1)) for a in MESH_AXES}
        # One axis may be -1 (or left out for the layout's main axis): it absorbs the remaining devices.
        fill = [a for a in MESH_AXES if shape[a] == -1]
        if not fill and math.prod(shape.values()) != n:
            main = "data" if layout == "data" else "fsdp"
            if main not in mesh_shape:
                fill = [main]
                shape[main] = -1
        if fill:
            known = math.prod(v for a, v in shape.items() if a != fill[0])
            if n % known:
                raise ValueError(f"mesh_shape {mesh_shape} does not divide the {n} devices.")
            shape[fill[0]] = n // known
    if math.prod(shape.values()) != n:
        raise ValueError(f"mesh shape {shape} has {math.prod(shape.values())} slots but there are {n} devices; "
                         "make the product of the sizes equal the device count.")
    sizes = tuple(shape[a] for a in MESH_AXES)
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # noqa: BLE001 - topology-aware placement is an optimisation; fall back to order
        grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES)


def param_shardings(config, mesh: Mesh, layout: str):
    """Pytree of NamedSharding for the model's params under `layout`'s rule table."""
    from sciriff_jax.model.llama import logical_axes

    return nn.logical_to_mesh_sharding(logical_axes(config), mesh, logical_rules(layout))


def param_specs(config, layout: str):
    """Pytree of mesh PartitionSpecs for the params (what `param_shardings` wraps)."""
    from sciriff_jax.model.llama import logical_axes

    return nn.logical_to_mesh(logical_axes(config), logical_rules(layout))


def batch_spec(layout: str) -> P:
    """PartitionSpec for [batch, length] arrays: batch over data+fsdp, length over context in *_cp."""
    return P(BATCH_AXES, "context" if layout == "fsdp_tp_cp" else None)


def batch_sharding(mesh: Mesh, layout: str) -> NamedSharding:
    """NamedSharding for [batch, length] input arrays under `layout`."""
    logical_rules(layout)
    return NamedSharding(mesh, batch_spec(layout))


@contextlib.contextmanager
def activation_context(mesh: Mesh, layout: str):
    """Trace/run the model inside this so its activation constraints use `layout`'s table on `mesh`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(logical_rules(layout)):
        yield
