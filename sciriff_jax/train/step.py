"""The training step: token-normalised loss, microbatch accumulation, clipping, NaN guard.

No TensorFlow or SeqIO here: batches arrive as dicts of jax/numpy int32 arrays (docs/design.md).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import jax
import jax.numpy as jnp
import optax

def token_loss_sums(logits, targets, weights):
    """(sum of per-token cross entropy * weight, sum of weights) over a batch; float32."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    w = weights.astype(jnp.float32)
    return jnp.sum(ce * w), jnp.sum(w)


def _split_microbatches(batch, microbatches: int):
    """[B, ...] -> [M, B/M, ...] taking rows m, m+M, ... into microbatch m, so each keeps its data shards."""
    def split(x):
        b = x.shape[0]
        if b % microbatches:
            raise ValueError(
                f"microbatches={microbatches} (--gin.MICROBATCHES) must divide the global batch size {b}: set "
                "--gin.BATCH_SIZE to a multiple of it, or MICROBATCHES to a divisor of BATCH_SIZE.")
        return jnp.swapaxes(x.reshape(b // microbatches, microbatches, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def make_loss_fn(model) -> Callable:
    """`loss_sums(params, batch) -> (sum_loss, sum_weights)` for a module called like the Llama."""
    def loss_sums(params, batch):
        logits = model.apply({"params": params}, batch["decoder_input_tokens"],
                             segment_ids=batch["decoder_segment_ids"], positions=batch["decoder_positions"])
        return token_loss_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])
    return loss_sums


def make_train_step(model, tx: optax.GradientTransformation, *, microbatches: int = 1, sharding=None,
                    donate: bool = True):
    """Jitted `step(params, opt_state, batch) -> (params, opt_state, metrics)`.

    The loss is sum(CE * decoder_loss_weights) / sum(weights) over the whole global batch: every target
    token counts the same whichever row, microbatch or host it is on. A non-finite loss or gradient
    leaves params and optimizer state unchanged and reports `finite=False`. With a `parallel.sharding.Sharding`
    (its optimizer shardings set), the step is jitted with its param/optimizer/batch shardings and traced in its
    context.
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
    if sharding is not None:
        kwargs = dict(in_shardings=(sharding.params, sharding.opt_state, sharding.batch),
                      out_shardings=(sharding.params, sharding.opt_state, None))
    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else (), **kwargs)

    def run(params, opt_state, batch):
        with sharding.context() if sharding is not None else contextlib.nullcontext():
            return jitted(params, opt_state, batch)
    run.jitted = jitted
    return run
