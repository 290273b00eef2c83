"""Preference losses and the preference training step: DPO (Rafailov et al. 2023) and SimPO (Meng et al. 2024,
reference-free).

A preference batch is the batch contract (data/batches.BATCH_KEYS) with 2B rows: row 2i is pair i's chosen
conversation, row 2i+1 its rejected one, each unpacked (one conversation per row) with loss weights on the assistant
turns only. A row's log-probability is the sum of its weighted target tokens' log-probabilities.
No TensorFlow or SeqIO here.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from sciriff_jax.train import losses
from sciriff_jax.train.step import guarded_update

LOSSES = ("dpo", "simpo")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """Which preference loss and its constants (gin: `DPOConfig.*`, runs/dpo.gin's LOSS / BETA / SIMPO_GAMMA_RATIO).

    dpo: -log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)))), the reference being
    the frozen starting policy. simpo: reference-free, -log sigmoid(beta * (mean log pi(y_w) - mean log pi(y_l))
    - gamma) over each answer's tokens, with gamma = beta * simpo_gamma_ratio (SimPO's gamma / beta).
    """

    loss: str = dataclasses.field(default="dpo", metadata={"choices": LOSSES})
    beta: float = dataclasses.field(default=0.1, metadata={"min": 0, "above": True})
    simpo_gamma_ratio: float = dataclasses.field(default=0.5, metadata={"min": 0})

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"DPOConfig.loss={self.loss!r}; choose one of {LOSSES} (--gin.LOSS='\"simpo\"')")

    @property
    def needs_reference(self) -> bool:
        return self.loss == "dpo"


def make_variables_logprob_fn(model, chunk_size: int | None = None) -> Callable:
    """`logps(variables, batch) -> (per-row sum of log p(target) * weight, per-row weight)`, float32 [rows], for a
    Llama applied to a whole variables dict ({"params": ...}; LoRA: {"params": base, "lora": adapters}, and the base
    alone is the model without adapters), through train/losses.py's chunked token log-probabilities (never the
    whole [rows, length, vocab] logits)."""
    def logps(variables, batch):
        hidden = model.apply(variables, batch["decoder_input_tokens"], segment_ids=batch["decoder_segment_ids"],
                             positions=batch["decoder_positions"], return_hidden=True)
        token = losses.token_logprobs(hidden, losses.output_head(variables["params"], model.config),
                                      batch["decoder_target_tokens"], chunk_size=chunk_size)
        w = batch["decoder_loss_weights"].astype(jnp.float32)
        return jnp.sum(token * w, axis=-1), jnp.sum(w, axis=-1)
    return logps


def make_logprob_fn(model, chunk_size: int | None = None) -> Callable:
    """`logps(params, batch)`: `make_variables_logprob_fn` of a plain parameter tree."""
    logps = make_variables_logprob_fn(model, chunk_size)
    return lambda params, batch: logps({"params": params}, batch)


def pair_losses(config: DPOConfig, logps, counts, ref_logps=None):
    """Per pair (loss, chosen reward, rejected reward) from per-row values with chosen rows even, rejected odd."""
    chosen, rejected = logps[0::2], logps[1::2]
    if config.loss == "dpo":
        if ref_logps is None:
            raise ValueError("DPO needs the reference's log-probabilities (DPOConfig.loss='dpo')")
        reward_c = config.beta * (chosen - ref_logps[0::2])
        reward_r = config.beta * (rejected - ref_logps[1::2])
        margin = reward_c - reward_r
    else:  # simpo: length-normalised, no reference
        reward_c = config.beta * chosen / jnp.maximum(counts[0::2], 1.0)
        reward_r = config.beta * rejected / jnp.maximum(counts[1::2], 1.0)
        margin = reward_c - reward_r - config.beta * config.simpo_gamma_ratio
    return -jax.nn.log_sigmoid(margin), reward_c, reward_r


def _pair_sums(config: DPOConfig, logps, counts, ref_logps):
    """(sum of pair losses, {metric: sum over pairs}, target tokens) of one (micro)batch."""
    losses, reward_c, reward_r = pair_losses(config, logps, counts, ref_logps)
    sums = {"rewards/chosen": jnp.sum(reward_c), "rewards/rejected": jnp.sum(reward_r),
            "rewards/margins": jnp.sum(reward_c - reward_r),
            "rewards/accuracy": jnp.sum((reward_c > reward_r).astype(jnp.float32))}
    return jnp.sum(losses), sums, jnp.sum(counts)


def _split_pairs(batch, microbatches: int):
    """[2B, ...] -> [M, 2B/M, ...] keeping each (chosen, rejected) pair of rows together in one microbatch."""
    def split(x):
        pairs = x.shape[0] // 2
        if x.shape[0] % 2 or pairs % microbatches:
            raise ValueError(f"MICROBATCHES={microbatches} must divide the {pairs} preference pairs of a batch "
                             "(BATCH_SIZE): set BATCH_SIZE to a multiple of it")
        y = x.reshape(pairs // microbatches, microbatches, 2, *x.shape[1:])
        return jnp.swapaxes(y, 0, 1).reshape(microbatches, 2 * (pairs // microbatches), *x.shape[1:])
    return jax.tree.map(split, batch)


def make_preference_loss(config: DPOConfig, policy_logps: Callable, reference_logps: Callable | None = None):
    """`loss_sums(params, frozen, batch) -> (sum of pair losses, (metric sums, target tokens))` with `params` the
    trained tree and `frozen` what the step holds fixed (full DPO: the reference's params; LoRA: the base, which
    without adapters is the reference): `policy_logps(params, frozen, batch)`, `reference_logps(params, frozen,
    batch)`, whose log-probabilities carry no gradient."""
    def loss_sums(params, frozen, batch):
        logps, counts = policy_logps(params, frozen, batch)
        ref = None
        if config.needs_reference:
            ref = jax.lax.stop_gradient(reference_logps(params, frozen, batch)[0])
        total, sums, tokens = _pair_sums(config, logps, counts, ref)
        return total, (sums, tokens)
    return loss_sums


def make_preference_step(loss_sums: Callable, tx: optax.GradientTransformation, *, microbatches: int = 1,
                         shardings=None, context=None, donate: bool = True):
    """Jitted `step(params, opt_state, batch, reference) -> (params, opt_state, metrics)` for `loss_sums` of
    `make_preference_loss`: the loss is the mean over the batch's pairs; metrics are the loss, the mean chosen /
    rejected rewards, margins and accuracy (chosen reward above rejected), grad_norm, target_tokens and `finite`
    (a NaN/Inf step leaves params and optimizer state unchanged, as train/step.py). `shardings`: (params, optimizer
    state, batch, reference) in-shardings; `context`: the Sharding's rule context to trace in."""
    grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

    def step(params, opt_state, batch, reference):
        pairs = batch["decoder_target_tokens"].shape[0] // 2
        if microbatches == 1:
            (total, (sums, tokens)), grads = grad_fn(params, reference, batch)
        else:
            def body(carry, mb):
                (l, (s, t)), g = grad_fn(params, reference, mb)
                return jax.tree.map(jnp.add, carry, (g, l, s, t)), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            init = (zeros, jnp.zeros(()), {k: jnp.zeros(()) for k in METRICS}, jnp.zeros(()))
            (grads, total, sums, tokens), _ = jax.lax.scan(body, init, _split_pairs(batch, microbatches))
        grads = jax.tree.map(lambda g, p: (g / pairs).astype(p.dtype), grads, params)
        loss = total / pairs
        new_params, new_opt, grad_norm, finite = guarded_update(tx, grads, opt_state, params, loss)
        metrics = {"loss": loss, "grad_norm": grad_norm, "target_tokens": tokens, "finite": finite,
                   **{k: v / pairs for k, v in sums.items()}}
        return new_params, new_opt, metrics

    kwargs = {}
    if shardings is not None:
        kwargs = dict(in_shardings=shardings, out_shardings=(shardings[0], shardings[1], None))
    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else (), **kwargs)

    def run(params, opt_state, batch, reference):
        with context() if context is not None else contextlib.nullcontext():
            return jitted(params, opt_state, batch, reference)
    run.jitted = jitted
    return run
