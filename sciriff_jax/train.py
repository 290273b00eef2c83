"""The training step (token-normalised loss, microbatch accumulation, clipping, NaN guard) and the loop.

No TensorFlow or SeqIO here: batches arrive as dicts of jax/numpy int32 arrays (docs/design.md).
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """The loss or gradient of a step was NaN/Inf (policy 'stop')."""


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; exit status 143 like SIGTERM."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


def token_loss_sums(logits, targets, weights):
    """(sum of per-token cross entropy * weight, sum of weights) over a batch; float32."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    w = weights.astype(jnp.float32)
    return jnp.sum(ce * w), jnp.sum(w)


def mesh_context(mesh=None, rules=None):
    """Context that makes `mesh` current and Flax logical axis `rules` active (both optional)."""
    stack = contextlib.ExitStack()
    if mesh is not None:
        stack.enter_context(jax.set_mesh(mesh))
    if rules is not None:
        stack.enter_context(nn.logical_axis_rules(rules))
    return stack


def _split_microbatches(batch, microbatches: int):
    """[B, ...] -> [M, B/M, ...] taking rows m, m+M, ... into microbatch m, so each keeps its data shards."""
    def split(x):
        b = x.shape[0]
        if b % microbatches:
            raise ValueError(
                f"finetune.microbatches={microbatches} must divide the global batch size {b} "
                "(set BATCH_SIZE to a multiple of it).")
        return jnp.swapaxes(x.reshape(b // microbatches, microbatches, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def make_loss_fn(model) -> Callable:
    """`loss_sums(params, batch) -> (sum_loss, sum_weights)` for a module called like the Llama."""
    def loss_sums(params, batch):
        logits = model.apply({"params": params}, batch["decoder_input_tokens"],
                             segment_ids=batch["decoder_segment_ids"], positions=batch["decoder_positions"])
        return token_loss_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])
    return loss_sums


def make_train_step(model, tx: optax.GradientTransformation, *, microbatches: int = 1, mesh=None, rules=None,
                    param_shardings=None, opt_shardings=None, batch_sharding=None, donate: bool = True):
    """Jitted `step(params, opt_state, batch) -> (params, opt_state, metrics)`.

    The loss is sum(CE * decoder_loss_weights) / sum(weights) over the whole global batch: every target
    token counts the same whichever row, microbatch or host it is on. A non-finite loss or gradient
    leaves params and optimizer state unchanged and reports `finite=False`.
    """
    loss_sums = make_loss_fn(model)
    grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

    def step(params, opt_state, batch):
        if microbatches == 1:
            (loss_sum, weight_sum), grads = grad_fn(params, batch)
        else:
            def body(carry, mb):
                g_acc, l_acc, w_acc = carry
                (l, w), g = grad_fn(params, mb)
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, w_acc + w), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            (grads, loss_sum, weight_sum), _ = jax.lax.scan(body, init, _split_microbatches(batch, microbatches))
        denom = jnp.maximum(weight_sum, 1.0)  # a batch with no target tokens gives loss 0, not NaN
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, params)
        loss = loss_sum / denom
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731  skip the update on NaN/Inf
        metrics = {"loss": loss, "grad_norm": grad_norm, "target_tokens": weight_sum, "finite": finite}
        return jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt, opt_state), metrics

    kwargs = {}
    if param_shardings is not None:
        kwargs = dict(in_shardings=(param_shardings, opt_shardings, batch_sharding),
                      out_shardings=(param_shardings, opt_shardings, None))
    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else (), **kwargs)

    def run(params, opt_state, batch):
        with mesh_context(mesh, rules):
            return jitted(params, opt_state, batch)
    run.jitted = jitted
    return run


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


def train_loop(*, step_fn, params, opt_state, batches: Iterator, train_steps: int, start_step: int = 0,
               schedule: Callable | None = None, checkpointer=None, logger=None, eval_fn=None,
               eval_every: int | None = None, eval_at_start: bool = False, on_nonfinite: str = "stop",
               preemption=None) -> dict:
    """Run steps start_step+1..train_steps; log, evaluate, checkpoint; returns a summary dict.

    `batches` yields global batches and has `.state() -> dict` (its position, saved in checkpoints).
    """
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"finetune.on_nonfinite={on_nonfinite!r}; choose one of {NONFINITE_POLICIES}.")
    summary: dict = {"start_step": start_step, "steps": 0, "skipped_steps": [], "losses": {}}
    started = time.time()

    def evaluate(step):
        results = eval_fn(params, step)
        if logger is not None:
            logger.log_eval(step, results)
        summary.setdefault("evals", {})[step] = results
        return results

    if eval_fn is not None and eval_at_start and start_step == 0:
        summary["initial_eval"] = evaluate(0)

    step = start_step
    for step in range(start_step + 1, train_steps + 1):
        batch = next(batches)
        params, opt_state, metrics = step_fn(params, opt_state, batch)
        finite = bool(metrics["finite"])  # one host sync per step: the NaN guard needs it
        if not finite:
            position = batches.state() if hasattr(batches, "state") else {}
            last = checkpointer.last_saved_step if checkpointer is not None else None
            where = (f"{checkpointer.directory}/{last}" if last is not None else "none saved yet")
            msg = (f"non-finite loss/gradient at step {step} (loss={float(metrics['loss'])}, "
                   f"grad_norm={float(metrics['grad_norm'])}), batch index {position.get('batches_consumed', step) - 1} "
                   f"of the input stream ({position}); last good checkpoint: {where}.")
            if on_nonfinite == "stop":
                raise NonFiniteLossError(msg + " The update was not applied. Lower LEARNING_RATE, check the data, or "
                                         "set finetune.on_nonfinite='skip' to skip such batches.")
            print(f"[sciriff-jax] WARNING: skipping {msg}", flush=True)
            summary["skipped_steps"].append(step)
        loss = float(metrics["loss"])
        if step == start_step + 1 and float(metrics["target_tokens"]) == 0:
            print("[sciriff-jax] WARNING: the first batch has no target tokens (decoder_loss_weights all 0): "
                  "prompts may fill TASK_FEATURE_LENGTHS['targets']; use a longer length.", flush=True)
        summary["losses"][step] = loss
        summary.setdefault("first_loss", loss)
        summary["last_loss"] = loss
        summary["steps"] += 1
        if logger is not None:
            logger.log_train(step, {
                "loss": loss, "grad_norm": float(metrics["grad_norm"]),
                "learning_rate": float(schedule(step - 1)) if schedule is not None else None,
                "target_tokens": float(metrics["target_tokens"]),
            })
        if eval_fn is not None and eval_every and step % eval_every == 0:
            evaluate(step)
        if checkpointer is not None and (checkpointer.should_save(step) or step == train_steps):
            checkpointer.save(step, params, opt_state, batches.state())
        if preemption is not None and preemption.requested():
            if checkpointer is not None:
                checkpointer.save(step, params, opt_state, batches.state(), wait=True)
                print(f"[sciriff-jax] preemption: saved step {step} to {checkpointer.directory}/{step}; exiting",
                      flush=True)
            raise Preempted(step)
    if eval_fn is not None and eval_every and step % eval_every and step > start_step:
        summary["final_eval"] = evaluate(step)
    elif "evals" in summary and step in summary["evals"]:
        summary["final_eval"] = summary["evals"][step]
    if checkpointer is not None:
        checkpointer.wait()
    summary["final_step"] = step
    summary["seconds"] = time.time() - started
    summary["params"] = params
    summary["opt_state"] = opt_state
    return summary
