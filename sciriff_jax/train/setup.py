"""One training setup: model, sharding, optimizer and the jitted step, built the same way to run (`finetune`)
and to compile from shapes alone (`sciriff-jax aot`)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from sciriff_jax.data.batches import BATCH_KEYS
from sciriff_jax.decoding.kv_memory import free_device_bytes
from sciriff_jax.model.attention import select_backend
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import Llama, param_shapes
from sciriff_jax.parallel.sharding import MeshConfig, Sharding
from sciriff_jax.train.optim import OptimizerConfig
from sciriff_jax.train.step import make_train_step


class RunConfigError(ValueError):
    """Settings that cannot work together on this run's devices; the message names the gin macros."""


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """Everything a training step needs, before any array is allocated."""

    config: LlamaConfig          # the model the step runs
    sharding: Sharding           # mesh, rules, param / batch / optimizer shardings
    model: Llama
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    param_shapes: Any            # pytree of ShapeDtypeStruct (unsharded)
    microbatches: int
    step: Callable               # train.step.make_train_step(...)
    loss: tuple = ("tokens", None)  # (normalization, rows per loss group): train.step.loss_weights

    @property
    def num_params(self) -> int:
        return int(sum(math.prod(x.shape) for x in jax.tree.leaves(self.param_shapes)))

    def opt_state_shapes(self):
        """Pytree of ShapeDtypeStruct of `tx.init(params)` (unsharded)."""
        return jax.eval_shape(self.tx.init, self.param_shapes)

    def abstract_params(self):
        return Sharding.abstract(self.param_shapes, self.sharding.params)

    def abstract_opt_state(self):
        return Sharding.abstract(self.opt_state_shapes(), self.sharding.opt_state)

    def abstract_batch(self, batch_size: int, length: int) -> dict:
        """The batch contract's arrays as sharded ShapeDtypeStructs."""
        return {k: jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=self.sharding.batch)
                for k in BATCH_KEYS}

    def check_batch(self, batch_size: int) -> None:
        """Refuse a global batch whose microbatches do not split evenly over the data-parallel devices."""
        dp = self.sharding.data_parallel
        if batch_size % (self.microbatches * dp):
            # Before any batch is built: an uneven split would only fail later, inside the data feed or XLA.
            per_pass = batch_size / self.microbatches
            raise RunConfigError(
                f"BATCH_SIZE={batch_size} / MICROBATCHES={self.microbatches} = {per_pass:g} rows per forward pass do "
                f"not divide over the {dp} data-parallel devices (data x fsdp of mesh "
                f"{dict(self.sharding.mesh.shape)}, MESH_LAYOUT={self.sharding.layout!r}). Use a BATCH_SIZE that is a "
                f"multiple of MICROBATCHES x {dp} (e.g. {self.microbatches * dp * max(1, round(per_pass / dp))}), or "
                "another MESH_SHAPE.")

    def with_step_config(self, config: LlamaConfig) -> "TrainSetup":
        """The same setup whose step runs `config` (same shapes; e.g. the attention backend of another platform)."""
        model = Llama(config, mesh=self.sharding.mesh)
        step = make_train_step(model, self.tx, microbatches=self.microbatches, sharding=self.sharding,
                               loss_normalization=self.loss[0], loss_group_rows=self.loss[1])
        return dataclasses.replace(self, config=config, model=model, step=step)

    def compile_step(self, batch_size: int, length: int):
        """The step compiled ahead of time for this batch shape (XLA's memory analysis is read from it)."""
        abstract = (self.abstract_params(), self.abstract_opt_state(), self.abstract_batch(batch_size, length))
        with self.sharding.context():
            return self.step.jitted.lower(*abstract).compile()

    def with_compiled_step(self, compiled) -> "TrainSetup":
        """The same setup whose step runs `compiled` (no second compilation at the first step)."""
        def run(params, opt_state, batch):
            with self.sharding.context():
                return compiled(params, opt_state, batch)
        run.jitted = self.step.jitted
        run.compiled = compiled
        return dataclasses.replace(self, step=run)


def check_platform(config: LlamaConfig, platform: str) -> None:
    """Refuse settings the devices' platform cannot run (the target's, for aot from a CPU host), before any data is
    read or anything compiled: a kernel of another platform would fail only inside the first step."""
    q = jax.ShapeDtypeStruct((1, 128, config.num_heads, config.head_dim), jnp.dtype(config.dtype))
    try:
        select_backend(config.attention_backend, q, platform=platform)
    except ValueError as err:
        raise RunConfigError(f"ATTENTION_BACKEND: {err} Set it with e.g. --gin.ATTENTION_BACKEND='\"auto\"'.") from None


def build(config: LlamaConfig, *, mesh: MeshConfig, optimizer: OptimizerConfig, train_steps: int,
          microbatches: int = 1, devices=None, loss: tuple = ("tokens", None)) -> TrainSetup:
    """The setup for `config` on `mesh` (over `devices`, default all), optimised for `train_steps` updates, its loss
    normalised as `loss` = (normalization, rows per loss group) says (train.step.loss_weights)."""
    sharding = Sharding.create(config, mesh, devices=devices)
    check_platform(config, sharding.mesh.devices.flat[0].platform)
    tx, schedule = optimizer.make(train_steps)
    shapes = param_shapes(config)
    sharding = sharding.with_optimizer(tx, shapes)
    model = Llama(config, mesh=sharding.mesh)
    step = make_train_step(model, tx, microbatches=microbatches, sharding=sharding, loss_normalization=loss[0],
                           loss_group_rows=loss[1])
    return TrainSetup(config, sharding, model, tx, schedule, shapes, microbatches, step, tuple(loss))


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """What the compiled step needs per device (XLA's memory analysis) and what the devices have."""

    arguments: int            # params + optimizer state + batch
    temporaries: int          # activations, gradients, loss chunks ...
    outputs: int              # new params / optimizer state not written in place (donation aliases the rest)
    devices: int              # devices sharing the memory: every local CPU device shares the host's RAM
    available: int | None     # bytes free for them (host MemAvailable; an accelerator's bytes_limit), None: unknown
    where: str                # "host RAM" or "device memory"

    @property
    def needed(self) -> int:
        return (self.arguments + self.temporaries + self.outputs) * self.devices

    def describe(self) -> str:
        gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
        per = f" ({self.devices} devices)" if self.devices > 1 else ""
        have = "unknown" if self.available is None else gb(self.available)
        return (f"the training step needs about {gb(self.needed)} of {self.where}{per}: params + optimizer state + "
                f"batch {gb(self.arguments * self.devices)}, temporaries {gb(self.temporaries * self.devices)}, "
                f"new state {gb(self.outputs * self.devices)} (XLA's estimate); available: {have}")


def estimate_memory(compiled, devices) -> MemoryEstimate:
    """The compiled step's footprint next to the free memory of the devices it runs on."""
    mem = compiled.memory_analysis()
    local = [d for d in devices if d.process_index == jax.process_index()]
    outputs = max(0, mem.output_size_in_bytes - mem.alias_size_in_bytes)
    available = free_device_bytes(local[0])  # MemAvailable on a CPU, the allocator's limit - use elsewhere
    if local[0].platform == "cpu":  # the CPU devices of a process share its host RAM
        return MemoryEstimate(mem.argument_size_in_bytes, mem.temp_size_in_bytes, outputs, len(local), available,
                              "host RAM")
    return MemoryEstimate(mem.argument_size_in_bytes, mem.temp_size_in_bytes, outputs, 1, available,
                          "device memory per device")


def check_memory(estimate: MemoryEstimate, *, microbatches: int, batch_size: int, length: int,
                 remat_policy: str) -> None:
    """Stop before the first step when the step will not fit, with the numbers and the settings that shrink it."""
    if estimate.available is None or estimate.needed <= 0.95 * estimate.available:
        return
    rows = batch_size // microbatches
    remat = "" if remat_policy == "full" else f", REMAT_POLICY='\"full\"' (now {remat_policy!r})"
    raise RunConfigError(
        f"{estimate.describe()}: it will not fit. Raise MICROBATCHES (now {microbatches}: {rows} rows of {length} "
        f"tokens per forward pass){remat}, or shorten TASK_FEATURE_LENGTHS (now {length}); CHECK_MEMORY=False "
        "runs it anyway.")
