"""The training step: token-normalised loss, microbatch accumulation, clipping, NaN guard.

No TensorFlow or SeqIO here: batches arrive as dicts of jax/numpy int32 arrays (docs/design.md).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.train import losses

token_loss_sums = losses.loss_sums_from_logits  # the plain sums from full logits (kept name)


def loss_weights(weights, normalization: str = "tokens", group_rows: int | None = None):
    """Per-token float32 weights whose sum(CE * weight) is the update's loss (train/losses.LOSS_NORMALIZATIONS).

    "tokens": each target token of the global batch counts 1 / (their number). "microbatch" (open-instruct): the
    batch's consecutive groups of `group_rows` rows (None: the whole batch) each average their own target tokens,
    and the groups are averaged; a group without target tokens counts 0. The weights depend on the data only, so
    accumulating microbatches of any size sums the same loss and gradient.
    """
    w = weights.astype(jnp.float32)
    if normalization == "tokens":
        return w / jnp.maximum(jnp.sum(w), 1.0)  # a batch with no target tokens gives loss 0, not NaN
    if normalization != "microbatch":
        raise ValueError(f"loss normalization {normalization!r}; choose one of {losses.LOSS_NORMALIZATIONS} "
                         "(--gin.LOSS_NORMALIZATION)")
    b = w.shape[0]
    g = group_rows or b
    if b % g:
        raise ValueError(f"LOSS_MICROBATCH_ROWS={g} must divide the global batch size {b} (--gin.BATCH_SIZE).")
    per_group = jnp.sum(w.reshape(b // g, -1), axis=1)
    denom = jnp.repeat(jnp.maximum(per_group, 1.0), g) * (b // g)
    return w / denom[:, None]


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
    """`loss_sums(params, batch) -> (sum_loss, sum_weights)` for a module called like the Llama.

    A Llama-family module (its `config` a LlamaConfig) returns hidden states and the loss applies the output head a
    chunk at a time (train/losses.py: no [B, L, V] logits); any other module's logits go through the plain sums.
    """
    chunked = isinstance(getattr(model, "config", None), LlamaConfig)

    def loss_sums(params, batch):
        inputs = dict(segment_ids=batch["decoder_segment_ids"], positions=batch["decoder_positions"])
        targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        if chunked:
            hidden = model.apply({"params": params}, batch["decoder_input_tokens"], **inputs, return_hidden=True)
            return losses.token_loss_sums(hidden, losses.output_head(params, model.config), targets, weights)
        logits = model.apply({"params": params}, batch["decoder_input_tokens"], **inputs)
        return losses.loss_sums_from_logits(logits, targets, weights)
    return loss_sums


def guarded_update(tx: optax.GradientTransformation, grads, opt_state, params, loss):
    """(params, opt_state, grad_norm, finite) after one optimizer update; a non-finite loss or gradient leaves params
    and optimizer state unchanged (the one NaN guard of every trainer: SFT, LoRA, DPO, GRPO)."""
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(state):
        old_params, old_opt, g = state
        updates, new_opt = tx.update(g, old_opt, old_params)
        return optax.apply_updates(old_params, updates), new_opt

    # A branch, not jnp.where(finite, new, old): with the old values still read after the update, XLA copied every
    # moment of the donated optimizer state first (22 copies, 1 GB at SmolLM2-135M) and recomputed the moments in
    # the params' fusion; in a cond the update runs in place. AdamW at 135M params on a 2-core CPU: 0.50 -> 0.15 s
    # (BENCHMARKS.md section 9.8).
    new_params, new_opt = jax.lax.cond(finite, update, lambda state: state[:2], (params, opt_state, grads))
    return new_params, new_opt, grad_norm, finite


def make_train_step(model, tx: optax.GradientTransformation, *, microbatches: int = 1, sharding=None,
                    donate: bool = True, loss_normalization: str = "tokens", loss_group_rows: int | None = None):
    """Jitted `step(params, opt_state, batch) -> (params, opt_state, metrics)`.

    The loss is sum(CE * loss_weights(decoder_loss_weights)) over the whole global batch: with "tokens" every target
    token counts the same whichever row, microbatch or host it is on; with "microbatch" each group of
    `loss_group_rows` rows averages its own tokens first (open-instruct). A non-finite loss or gradient
    leaves params and optimizer state unchanged and reports `finite=False`. With a `parallel.sharding.Sharding`
    (its optimizer shardings set), the step is jitted with its param/optimizer/batch shardings and traced in its
    context.
    """
    loss_sums = make_loss_fn(model)
    grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

    def step(params, opt_state, batch):
        target_tokens = jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32))
        batch = dict(batch, decoder_loss_weights=loss_weights(batch["decoder_loss_weights"], loss_normalization,
                                                              loss_group_rows))
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
        del weight_sum  # the weights are normalised already: the loss is the weighted sum
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        loss = loss_sum
        new_params, new_opt, grad_norm, finite = guarded_update(tx, grads, opt_state, params, loss)
        metrics = {"loss": loss, "grad_norm": grad_norm, "target_tokens": target_tokens, "finite": finite}
        return new_params, new_opt, metrics

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
