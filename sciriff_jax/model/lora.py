"""LoRA: low-rank adapters on the model's linear maps over a frozen base (QLoRA: the base quantized with qwix).

A targeted kernel W (our layout [in..., out...]) gets two adapter matrices, A [in..., rank] and B [rank, out...],
and its map becomes  y = x W + (alpha / rank) * dropout(x) A B  (alpha / sqrt(rank) with `rslora`), as in PEFT. B
starts at zero, so a fresh adapter computes the base model exactly. Adapters live in their own Flax collection,
"lora", beside the base's "params", under the same module paths (`layers/attn/q_proj_a`, ...), with the base's
logical axis names plus "lora_rank" (replicated by every layout's rule table: parallel/sharding.py).

    lora = LoraConfig(rank=16, alpha=32.0)
    model = Llama(config, lora=lora)
    adapters = init_adapters(param_shapes(config), lora, rng)  # float32
    base = freeze_base(params, config)                       # the frozen base, in the compute dtype
    logits = model.apply({"params": base, "lora": adapters}, tokens, segment_ids=...)

**The base without adapters** (the DPO / GRPO reference model, no second copy of the weights): apply the same
module (or `Llama(config)`) with the base alone, `model.apply({"params": base}, tokens, ...)`: without a "lora"
collection every adapter is skipped. `with_adapters(base, adapters)` / `base_of(variables)` build and take apart
the variables dict; `merge(base, adapters, lora)` folds the adapters into a plain parameter tree (export, eval).

The merge is never done per training step: the step computes x A B beside x W, so the only full-size weights in
memory are the frozen base's (in the compute dtype, or int8 / int4 with QLoRA: `quantize_base`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

COLLECTION = "lora"
# Our kernel name -> PEFT's / Hugging Face's module name (the same words: target_modules in adapter_config.json).
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANTIZATIONS = (None, "int8", "int4")
# int4 is blockwise (one scale per block of the input axis), as QLoRA's 4-bit types are: per-channel int4 loses
# too much. int8 is per output channel.
INT4_BLOCK = 64


def _targets_problem(targets) -> str | None:
    """None for a usable `targets`, else what it must be (the gin macro check reads it from the field)."""
    if not isinstance(targets, (tuple, list)) or not targets or any(t not in TARGETS for t in targets):
        return f"a non-empty list of the linear maps {list(TARGETS)}"
    return None


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which linear maps get adapters and how (gin: LORA_RANK, LORA_ALPHA, LORA_DROPOUT, LORA_TARGETS,
    LORA_QUANTIZE); `quantize` holds the frozen base in int8 / int4 (QLoRA, with qwix)."""

    # None: no adapters (finetune trains every parameter); the one switch of runs/finetune.gin (LORA_RANK).
    rank: int | None = dataclasses.field(default=16, metadata={"min": 1})
    alpha: float = dataclasses.field(default=32.0, metadata={"min": 0, "above": True})
    dropout: float = dataclasses.field(default=0.0, metadata={"min": 0, "below": 1.0})
    targets: tuple = dataclasses.field(default=TARGETS, metadata={"check": _targets_problem})
    rslora: bool = False  # scale alpha / sqrt(rank) (PEFT's use_rslora) instead of alpha / rank
    quantize: str | None = dataclasses.field(default=None, metadata={"choices": QUANTIZATIONS})

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))  # hashable: a static jit argument
        problem = _targets_problem(self.targets)
        if problem:
            raise ValueError(f"LoraConfig.targets={list(self.targets)}: must be {problem} (LORA_TARGETS).")
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f"LoraConfig.rank={self.rank} must be >= 1 (LORA_RANK).")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoraConfig.dropout={self.dropout} must be in [0, 1) (LORA_DROPOUT).")
        if self.quantize not in QUANTIZATIONS:
            raise ValueError(f"LoraConfig.quantize={self.quantize!r}; choose one of {QUANTIZATIONS} (LORA_QUANTIZE).")

    @property
    def scale(self) -> float:
        """The factor on x A B."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (checkpoints record it)."""
        return {**dataclasses.asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: dict) -> "LoraConfig":
        """Inverse of `to_dict`."""
        return cls(**d)


def _init_a(fan_in: int):
    # PEFT's default: kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


def _variable(module: nn.Module, name: str, init, shape, axes):
    """One adapter matrix in the "lora" collection, created (with its logical axes) when the model is initialised."""
    dtype = jnp.dtype(module.config.param_dtype)
    boxed = nn.with_logical_partitioning(init, axes)
    return module.variable(COLLECTION, name, lambda: boxed(module.make_rng("params"), shape, dtype)).value


def adapt(module: nn.Module, name: str, x, y, kernel_shape: tuple, kernel_axes: tuple, n_in: int):
    """`y` (= x W for kernel `name` of `module`, shape [.., out...]) plus the adapter's scale * dropout(x) A B when
    the module's LoRA targets it and its adapters are present; else `y` unchanged (the base model).

    `kernel_shape` / `kernel_axes` are W's; its first `n_in` axes are contracted with x's last `n_in`.
    """
    lora = getattr(module, "lora", None)
    if lora is None or name not in lora.targets:
        return y
    if not module.is_initializing() and not module.has_variable(COLLECTION, f"{name}_a"):
        return y  # the base without adapters: the same module applied to {"params": base} alone
    a = _variable(module, f"{name}_a", _init_a(math.prod(kernel_shape[:n_in])),
                  (*kernel_shape[:n_in], lora.rank), (*kernel_axes[:n_in], "lora_rank"))
    b = _variable(module, f"{name}_b", nn.initializers.zeros, (lora.rank, *kernel_shape[n_in:]),
                  ("lora_rank", *kernel_axes[n_in:]))
    dt = y.dtype
    h = x
    if lora.dropout and module.has_rng("dropout"):  # training only: evaluation passes no dropout key
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - lora.dropout, x.shape)
        h = jnp.where(keep, x / (1.0 - lora.dropout), 0).astype(x.dtype)
    low = jnp.tensordot(h, a.astype(dt), axes=n_in)  # [..., rank]: the only new activation
    return y + (lora.scale * jnp.tensordot(low, b.astype(dt), axes=1)).astype(dt)


def _walk(tree, lora: LoraConfig, fn, stacked: bool = False) -> dict:
    """The adapter tree for a base-shaped `tree` (params, shapes or logical specs): for each targeted kernel `x`,
    {name_a, name_b} = fn(x, n_in, stacked); modules without a targeted kernel are left out, as Flax leaves them out
    of the "lora" collection."""
    out = {}
    for key, sub in tree.items():
        if isinstance(sub, Mapping):
            found = _walk(sub, lora, fn, stacked or key == "layers")
            if found:
                out[key] = found
        elif key in lora.targets:
            out[f"{key}_a"], out[f"{key}_b"] = fn(sub, KERNEL_INPUTS[key], stacked)
    return out


def adapter_shapes(base_shapes, lora: LoraConfig, dtype="float32") -> dict:
    """ShapeDtypeStructs of the adapters of a base with these shapes (A [.., in..., r], B [.., r, out...])."""
    def fn(x, n_in, stacked):
        lead = int(stacked) + n_in
        return (jax.ShapeDtypeStruct((*x.shape[:lead], lora.rank), jnp.dtype(dtype)),
                jax.ShapeDtypeStruct((*x.shape[:int(stacked)], lora.rank, *x.shape[lead:]), jnp.dtype(dtype)))
    return _walk(base_shapes, lora, fn)


def adapter_axes(base_axes, lora: LoraConfig) -> dict:
    """Logical PartitionSpecs of the adapters: the kernel's axis names, "lora_rank" for the rank axis."""
    def fn(spec, n_in, stacked):
        lead = int(stacked) + n_in
        return P(*spec[:lead], "lora_rank"), P(*spec[:int(stacked)], "lora_rank", *spec[lead:])
    return _walk(base_axes, lora, fn)


def init_adapters(base_shapes, lora: LoraConfig, rng, dtype="float32") -> dict:
    """Fresh adapters for a base of these shapes: A uniform in +-1/sqrt(fan_in) (PEFT's default), B zero, so the
    model starts as the base. Kernels draw from `rng` folded with their order in the tree."""
    order = iter(range(1 << 30))

    def fn(x, n_in, stacked):
        lead = int(stacked) + n_in
        key = jax.random.fold_in(rng, next(order))
        a = _init_a(math.prod(x.shape[int(stacked):lead]))(key, (*x.shape[:lead], lora.rank), jnp.dtype(dtype))
        return a, jnp.zeros((*x.shape[:int(stacked)], lora.rank, *x.shape[lead:]), jnp.dtype(dtype))
    return _walk(base_shapes, lora, fn)


def with_adapters(base, adapters) -> dict:
    """The variables dict a LoRA model is applied to."""
    return {"params": base, COLLECTION: adapters}


def base_of(variables: dict) -> dict:
    """The variables of the base without adapters (the reference model): the same arrays, no copy."""
    return {"params": variables["params"]}


def freeze_base(params, config):
    """The base parameters held in the compute dtype (`config.dtype`) rather than `param_dtype`: they get no updates,
    so their float32 master copy is not needed (bf16 halves the base's memory)."""
    dt = jnp.dtype(config.dtype)
    return jax.tree.map(lambda p: p.astype(dt) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def _delta(a, b, scale: float, stacked: bool):
    """scale * A B in W's shape: A [in..., r] @ B [r, out...] (each with a leading [layers] axis when `stacked`)."""
    if stacked:
        return jax.vmap(lambda x, y: scale * jnp.tensordot(x, y, axes=1))(a, b)
    return scale * jnp.tensordot(a, b, axes=1)


def merge(base, adapters, lora: LoraConfig, dtype=None):
    """A plain parameter tree: every adapted kernel W + scale * A B (summed in float32, then `dtype` or W's dtype),
    the other parameters as they are (a QLoRA base is dequantized). For export and evaluation, never per step."""
    def visit(params: dict, adapter_tree: dict, stacked: bool) -> dict:
        out = dict(params)
        for key, sub in adapter_tree.items():
            if isinstance(sub, dict):
                out[key] = visit(params[key], sub, stacked or key == "layers")
            elif key.endswith("_a"):
                name = key[:-2]
                w = dense(params[name])
                d = _delta(jnp.asarray(sub, jnp.float32), jnp.asarray(adapter_tree[f"{name}_b"], jnp.float32),
                           lora.scale, stacked)
                out[name] = (w.astype(jnp.float32) + d).astype(dtype or w.dtype)
        return out
    return jax.tree.map(dense, visit(base, adapters, False), is_leaf=is_quantized)


def num_adapter_params(adapters) -> int:
    """How many trainable numbers the adapters hold."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(adapters)))


def is_quantized(x: Any) -> bool:
    """True for a qwix QArray (a QLoRA base kernel)."""
    return type(x).__name__ == "QArray"


def dense(w):
    """A kernel as a plain array: a QLoRA base's QArray dequantized (to its scale's dtype), anything else as is."""
    if not is_quantized(w):
        return w
    import qwix  # optional (the qlora extra, ~2 s to import): only a quantized base reaches here

    return qwix.dequantize(w)


def _quantize_kernel(w, qtype: str, n_in: int, stacked: bool):
    """One kernel [layers?, in..., out...] quantized: a scale per output channel (int8), per output channel and
    block of INT4_BLOCK inputs (int4); scales in the kernel's dtype."""
    import qwix  # optional (the qlora extra)

    first_in = 1 if stacked else 0
    last_in = first_in + n_in - 1
    channelwise = [i for i in range(w.ndim) if i != last_in]
    tiled = None
    if qtype == "int4":
        size = w.shape[last_in]
        tiled = {last_in: INT4_BLOCK if size % INT4_BLOCK == 0 else size}
    return qwix.quantize(w, {"int8": jnp.int8, "int4": jnp.int4}[qtype], channelwise_axes=channelwise,
                         tiled_axes=tiled)


# How many leading axes of each linear kernel are its inputs (the rest are outputs).
KERNEL_INPUTS = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 1, "up_proj": 1, "down_proj": 1}


def quantize_base(base, qtype: str):
    """The frozen base with every linear kernel of the layers (q, k, v, o, gate, up, down) held as a qwix QArray
    (int8 or int4); embedding, output head and norms stay in their dtype (QLoRA's base)."""
    if qtype not in QUANTIZATIONS[1:]:
        raise ValueError(f"quantize_base: {qtype!r}; choose one of {QUANTIZATIONS[1:]} (LORA_QUANTIZE).")

    def visit(tree: dict, stacked: bool) -> dict:
        out = {}
        for key, sub in tree.items():
            if isinstance(sub, dict):
                out[key] = visit(sub, stacked or key == "layers")
            elif key in KERNEL_INPUTS:
                out[key] = _quantize_kernel(sub, qtype, KERNEL_INPUTS[key], stacked)
            else:
                out[key] = sub
        return out
    return visit(base, False)
