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
        step = make_train_step(model, self.tx, microbatches=self.microbatches, sharding=self.sharding)
        return dataclasses.replace(self, config=config, model=model, step=step)


def check_platform(config: LlamaConfig, platform: str) -> None:
    """Refuse settings the devices' platform cannot run (the target's, for aot from a CPU host), before any data is
    read or anything compiled: a kernel of another platform would fail only inside the first step."""
    q = jax.ShapeDtypeStruct((1, 128, config.num_heads, config.head_dim), jnp.dtype(config.dtype))
    try:
        select_backend(config.attention_backend, q, platform=platform)
    except ValueError as err:
        raise RunConfigError(f"ATTENTION_BACKEND: {err} Set it with e.g. --gin.ATTENTION_BACKEND='\"auto\"'.") from None


def build(config: LlamaConfig, *, mesh: MeshConfig, optimizer: OptimizerConfig, train_steps: int,
          microbatches: int = 1, devices=None) -> TrainSetup:
    """The setup for `config` on `mesh` (over `devices`, default all), optimised for `train_steps` updates."""
    sharding = Sharding.create(config, mesh, devices=devices)
    check_platform(config, sharding.mesh.devices.flat[0].platform)
    tx, schedule = optimizer.make(train_steps)
    shapes = param_shapes(config)
    sharding = sharding.with_optimizer(tx, shapes)
    model = Llama(config, mesh=sharding.mesh)
    step = make_train_step(model, tx, microbatches=microbatches, sharding=sharding)
    return TrainSetup(config, sharding, model, tx, schedule, shapes, microbatches, step)
