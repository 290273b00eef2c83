"""LoRA / QLoRA finetuning: the setup whose trainable tree is the adapters (model/lora.py) over a frozen base.

`build` returns a `LoraSetup`, a `TrainSetup` whose `param_shapes`, `sharding.params` / `.opt_state` and step
params are the adapters', so the loop, the checkpointer (adapters + their optimizer state), resume and the memory
check of `finetune` work unchanged. The frozen base (compute dtype, or int8 / int4 with `LoraConfig.quantize`) is
loaded once by `load_base` and passed to the jitted step as an argument (`sharding.base`), never differentiated:
the optimizer state exists only for the adapters. A checkpoint also records the LoRA config and the base it
belongs to (its path and fingerprint, io/lora_files.py), and a resume over another base stops.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sciriff_jax.io import loader, lora_files
from sciriff_jax.model import lora as lora_lib
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import Llama, init_params, param_shapes
from sciriff_jax.parallel.sharding import MeshConfig, Sharding
from sciriff_jax.train import losses, setup
from sciriff_jax.train.optim import OptimizerConfig
from sciriff_jax.train.step import _split_microbatches, guarded_update, loss_weights


def _step_count(opt_state):
    """The optimizer's update count (the dropout key's step: the same on a resume, restored with the state)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
        if jax.tree_util.keystr(path).endswith(".count") and jnp.ndim(leaf) == 0:
            return leaf
    return jnp.zeros((), jnp.int32)


def make_lora_step(model: Llama, tx: optax.GradientTransformation, *, microbatches: int = 1, loss=("tokens", None),
                   seed: int = 0):
    """`step(adapters, opt_state, batch, base) -> (adapters, opt_state, metrics)` (not jitted): train.step's loss,
    accumulation, clipping and NaN guard, with gradients for the adapters only."""
    config = model.config

    def loss_sums(adapters, base, batch, key):
        hidden = model.apply(lora_lib.with_adapters(base, adapters), batch["decoder_input_tokens"],
                             segment_ids=batch["decoder_segment_ids"], positions=batch["decoder_positions"],
                             return_hidden=True, rngs={"dropout": key})
        return losses.token_loss_sums(hidden, losses.output_head(base, config), batch["decoder_target_tokens"],
                                      batch["decoder_loss_weights"])
    grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

    def step(adapters, opt_state, batch, base):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), _step_count(opt_state))
        target_tokens = jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32))
        batch = dict(batch, decoder_loss_weights=loss_weights(batch["decoder_loss_weights"], *loss))
        if microbatches == 1:
            (loss_sum, _), grads = grad_fn(adapters, base, batch, key)
        else:
            def body(carry, xs):
                g_acc, l_acc = carry
                i, mb = xs
                (l, _), g = grad_fn(adapters, base, mb, jax.random.fold_in(key, i))
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l), None
            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), adapters)
            xs = (jnp.arange(microbatches), _split_microbatches(batch, microbatches))
            (grads, loss_sum), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), xs)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, adapters)
        new, new_opt, grad_norm, finite = guarded_update(tx, grads, opt_state, adapters, loss_sum)
        metrics = {"loss": loss_sum, "grad_norm": grad_norm, "target_tokens": target_tokens, "finite": finite}
        return new, new_opt, metrics
    return step


@dataclasses.dataclass(frozen=True)
class LoraSetup(setup.TrainSetup):
    """A TrainSetup whose params are the adapters; the frozen base is `base_shapes` (abstract) and, once loaded,
    `holder["base"]`."""

    lora: lora_lib.LoraConfig = None
    base_shapes: Any = None      # the frozen base's ShapeDtypeStructs (compute dtype; QArrays with QLoRA)
    holder: dict = dataclasses.field(default_factory=dict)  # {"base": arrays, "record": what checkpoints name}

    @property
    def base(self):
        if "base" not in self.holder:
            raise RuntimeError("LoraSetup: the base is not loaded yet (call load_base first)")
        return self.holder["base"]

    def abstract_base(self):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.base_shapes,
                            self.sharding.base)

    def compile_step(self, batch_size: int, length: int):
        abstract = (self.abstract_params(), self.abstract_opt_state(), self.abstract_batch(batch_size, length),
                    self.abstract_base())
        with self.sharding.context():
            return self.step.jitted.lower(*abstract).compile()

    def with_compiled_step(self, compiled) -> "LoraSetup":
        return dataclasses.replace(self, step=_bound(self, compiled, self.step.jitted))

    def with_step_config(self, config: LlamaConfig) -> "LoraSetup":
        return _with_step(dataclasses.replace(self, config=config, model=Llama(config, self.sharding.mesh, self.lora)))

    def load_base(self, path: str | None, seed: int = 0) -> dict:
        """Load (or, without a path, randomly initialise with `seed`) the frozen base onto the mesh, quantized when
        the LoRA config says so; returns the record checkpoints keep (base path + fingerprint, LoRA config)."""
        c, lora = self.config, self.lora
        plain = self.sharding.base_plain
        if path:
            params = loader.load(path, dtype=c.dtype, shardings=plain, with_tokenizer=False).params
        else:
            params = jax.jit(init_params, static_argnums=0, out_shardings=plain)(c, jax.random.PRNGKey(seed))
        base = jax.jit(lambda p: _frozen(p, c, lora), out_shardings=self.sharding.base)(params)
        del params
        self.holder["base"] = base
        self.holder["record"] = lora_files.record(lora, path, seed)
        return self.holder["record"]

    def init_adapters(self, seed: int):
        """Fresh adapters (B = 0: the model starts as the base) on the mesh."""
        return jax.jit(lambda k: lora_lib.init_adapters(self.base_shapes, self.lora, k, self.config.param_dtype),
                       out_shardings=self.sharding.params)(jax.random.PRNGKey(seed))

    def merged(self, adapters):
        """The base with the adapters folded in (plain params in param_dtype): for evaluations, not for steps."""
        return jax.jit(lambda b, a: lora_lib.merge(b, a, self.lora, jnp.dtype(self.config.param_dtype)),
                       out_shardings=self.sharding.base_plain)(self.base, adapters)

    @property
    def num_params(self) -> int:
        """Trainable parameters: the adapters'."""
        return lora_lib.num_adapter_params(self.param_shapes)


def _frozen(params, config: LlamaConfig, lora: lora_lib.LoraConfig):
    base = lora_lib.freeze_base(params, config)
    return lora_lib.quantize_base(base, lora.quantize) if lora.quantize else base


def _bound(run_setup: LoraSetup, fn, jitted):
    """`run(adapters, opt_state, batch)` calling `fn` with the setup's loaded base, in the sharding's context."""
    def run(params, opt_state, batch):
        with run_setup.sharding.context():
            return fn(params, opt_state, batch, run_setup.base)
    run.jitted = jitted
    return run


def _with_step(run_setup: LoraSetup) -> LoraSetup:
    s = run_setup.sharding
    step = make_lora_step(run_setup.model, run_setup.tx, microbatches=run_setup.microbatches, loss=run_setup.loss,
                          seed=run_setup.holder.get("seed", 0))
    jitted = jax.jit(step, donate_argnums=(0, 1), in_shardings=(s.params, s.opt_state, s.batch, s.base),
                     out_shardings=(s.params, s.opt_state, None))
    return dataclasses.replace(run_setup, step=_bound(run_setup, jitted, jitted))


def build(config: LlamaConfig, lora: lora_lib.LoraConfig, *, mesh: MeshConfig, optimizer: OptimizerConfig,
          train_steps: int, microbatches: int = 1, devices=None, loss: tuple = ("tokens", None),
          seed: int = 0) -> LoraSetup:
    """The LoRA setup for `config` on `mesh`: adapters trained with `optimizer`, the base frozen."""
    full = Sharding.create(config, mesh, devices=devices)
    setup.check_platform(config, full.mesh.devices.flat[0].platform)
    tx, schedule = optimizer.make(train_steps)
    plain_shapes = jax.eval_shape(lambda: lora_lib.freeze_base(init_params(config, jax.random.PRNGKey(0)), config))
    base_shapes = jax.eval_shape(lambda p: _frozen(p, config, lora), plain_shapes)
    sharding = full.for_lora(config, lora)
    sharding = dataclasses.replace(sharding, base=sharding.quantized(base_shapes), base_plain=full.params)
    shapes = lora_lib.adapter_shapes(param_shapes(config), lora, config.param_dtype)
    sharding = sharding.with_optimizer(tx, shapes)
    model = Llama(config, sharding.mesh, lora)
    run_setup = LoraSetup(config, sharding, model, tx, schedule, shapes, microbatches, None, tuple(loss), lora=lora,
                          base_shapes=base_shapes, holder={"seed": seed})
    return _with_step(run_setup)


def base_bytes(run_setup: LoraSetup) -> int:
    """Bytes of the frozen base as held (compute dtype or quantized; int4 counted as half a byte)."""
    return int(sum(math.prod(x.shape) * jax.dtypes.itemsize_bits(x.dtype) for x in jax.tree.leaves(run_setup.base_shapes))
               // 8)
