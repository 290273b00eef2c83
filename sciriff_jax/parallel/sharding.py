"""Device meshes, one logical-axis -> mesh-axis rule table per parallelism layout, and the `Sharding` object.

Mesh axes are always ("data", "fsdp", "tensor", "context"); a layout leaves unused axes at size 1.
A run builds one `Sharding` (mesh + rule table + the shardings of params, batches and optimizer state)
and passes it to everything that places or traces arrays: `Sharding.create(config, MeshConfig("fsdp_tp"))`,
then `sharding.params` / `.batch` / `.opt_state`, and `with sharding.context():` around tracing so the
model's activation constraints resolve against the same table.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sciriff_jax.model import lora as lora_lib
from sciriff_jax.model.llama import logical_axes

MESH_AXES = ("data", "fsdp", "tensor", "context")
LAYOUTS = ("data", "fsdp", "fsdp_tp", "fsdp_tp_cp")
BATCH_AXES = ("data", "fsdp")

# "lora_rank": a LoRA adapter's rank axis (model/lora.py), replicated by every layout.
_PARAM_NAMES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", "layers", "lora_rank")
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
                         "(e.g. --gin.MESH_LAYOUT='\"fsdp\"').")
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
        grid = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # noqa: BLE001 - topology-aware placement is an optimisation; fall back to order
        grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES)


def batch_spec(layout: str) -> P:
    """PartitionSpec for [batch, length] arrays: batch over data+fsdp, length over context in *_cp."""
    return P(BATCH_AXES, "context" if layout == "fsdp_tp_cp" else None)


def mesh_shape_problem(shape) -> str | None:
    """None for a usable MeshConfig.shape, else what it must be (the gin macro check reads it from the field)."""
    sizes_ok = isinstance(shape, dict) and all(isinstance(n, int) and not isinstance(n, bool) and (n >= 1 or n == -1)
                                               for n in shape.values())
    if shape is not None and (not sizes_ok or set(shape) - set(MESH_AXES) or list(shape.values()).count(-1) > 1):
        return (f"None or a dict over the axes {MESH_AXES} of sizes >= 1 (one may be -1: the remaining devices), "
                'e.g. {"data": 1, "fsdp": -1}')
    return None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Which layout and mesh a run uses (gin binds it at the edges as `MESH_LAYOUT` / `MESH_SHAPE`)."""

    layout: str | None = dataclasses.field(default="data", metadata={"choices": LAYOUTS})  # None: one device (eval)
    # Sizes per mesh axis; None: the layout's default for the devices present.
    shape: dict | None = dataclasses.field(default=None, metadata={"check": mesh_shape_problem})


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params, mesh=None):
    """Shardings of `tx.init(params)`: params-shaped state (Adam moments) sharded like the params, the rest replicated.

    XLA's own propagation replicates the moments (zeros do not depend on the params), which puts a full copy of
    every moment on each device; optax knows which parts of the state mirror the params.
    """
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    replicated = NamedSharding(mesh, P()) if mesh is not None else None
    param_shardings = jax.tree.map(lambda p: p.sharding, abstract_params)
    return optax.tree_map_params(
        tx, lambda _, sharding: sharding, abstract_opt, param_shardings,
        transform_non_params=lambda leaf: replicated if replicated is not None else leaf.sharding,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


@dataclasses.dataclass(frozen=True)
class Sharding:
    """A run's mesh, its layout's rule table, and the shardings of params, batches and (once known) optimizer state."""

    layout: str
    mesh: Mesh
    params: Any                 # pytree of NamedSharding matching the model's params (LoRA: the adapters)
    opt_state: Any = None       # pytree of NamedSharding matching the optimizer state (`with_optimizer`)
    base: Any = None            # LoRA (`for_lora`): the frozen base's shardings; `params` are then the adapters'
    base_plain: Any = None      # LoRA: the base's shardings before quantization (QLoRA), as `create` made them

    @classmethod
    def create(cls, config, mesh_config: MeshConfig = MeshConfig(), devices=None) -> "Sharding":
        """Build the mesh for `mesh_config` on `devices` (default: all) and the param shardings of `config`."""
        mesh = make_mesh(mesh_config.layout, mesh_config.shape, devices=devices)
        params = nn.logical_to_mesh_sharding(logical_axes(config), mesh, logical_rules(mesh_config.layout))
        return cls(mesh_config.layout, mesh, params)

    def for_lora(self, config, lora) -> "Sharding":
        """This mesh and table for LoRA training: `params` become the adapters' shardings (the trainable tree; each
        adapter split as its kernel's axes, the rank axis replicated) and `base` the frozen base's."""
        axes = lora_lib.adapter_axes(logical_axes(config), lora)
        adapters = nn.logical_to_mesh_sharding(axes, self.mesh, self.rules)
        return dataclasses.replace(self, params=adapters, opt_state=None, base=self.params, base_plain=self.params)

    def quantized(self, abstract_base) -> Any:
        """Shardings for a QLoRA base (`abstract_base`: its eval_shape, qwix QArrays for the kernels): a kernel's
        integers as the kernel, its scales likewise except the axes they do not span (size 1, or blocks)."""
        def place(sharding, leaf):
            if not lora_lib.is_quantized(leaf):
                return sharding
            spec = tuple(sharding.spec) + (None,) * (leaf.qvalue.ndim - len(sharding.spec))
            scale_spec = P(*(a if n == full else None for a, n, full in zip(spec, leaf.scale.shape, leaf.qvalue.shape)))
            return jax.tree.unflatten(jax.tree.structure(leaf), [sharding, NamedSharding(self.mesh, scale_spec)])
        base = self.base_plain if self.base_plain is not None else self.params
        return jax.tree.map(place, base, abstract_base, is_leaf=lambda x: isinstance(x, NamedSharding))

    @property
    def rules(self) -> tuple:
        """The layout's (logical axis, mesh axes) table."""
        return logical_rules(self.layout)

    @property
    def batch(self) -> NamedSharding:
        """NamedSharding for [batch, length] input arrays."""
        return NamedSharding(self.mesh, batch_spec(self.layout))

    @property
    def data_parallel(self) -> int:
        """Devices the batch dimension is split over (data x fsdp)."""
        return math.prod(self.mesh.shape[a] for a in BATCH_AXES)

    def with_optimizer(self, tx: optax.GradientTransformation, param_shapes) -> "Sharding":
        """This sharding plus the optimizer state's (moments follow the params), for params shaped like `param_shapes`."""
        abstract = self.abstract(param_shapes, self.params)
        return dataclasses.replace(self, opt_state=opt_state_shardings(tx, abstract, mesh=self.mesh))

    @staticmethod
    def abstract(shapes, shardings):
        """ShapeDtypeStructs of `shapes` (a pytree of arrays or structs) carrying the matching `shardings`."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)

    def for_decoding(self) -> "Sharding":
        """The same mesh without context parallelism: decoding splits rows and heads, never a row's length."""
        return dataclasses.replace(self, layout="fsdp_tp") if self.layout == "fsdp_tp_cp" else self

    @contextlib.contextmanager
    def context(self):
        """Make the mesh current and the layout's logical axis rules active (trace and run the model inside)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield
