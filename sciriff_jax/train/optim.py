"""The optimizer: optax AdamW with warmup + linear/cosine/constant schedule, weight decay and clipping."""
from __future__ import annotations

import dataclasses
import math

import jax
import optax

SCHEDULES = ("linear", "cosine", "constant")


def warmup_steps_for(train_steps: int, warmup_ratio: float) -> int:
    """Warmup length as Hugging Face computes it from a ratio: ceil(ratio * steps)."""
    return int(math.ceil(warmup_ratio * train_steps))


def make_schedule(learning_rate: float, train_steps: int, warmup_ratio: float = 0.03,
                  schedule: str = "linear", warmup_steps: int | None = None) -> optax.Schedule:
    """LR(step): linear warmup from 0 to `learning_rate`, then linear decay to 0, cosine to 0, or constant."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not known; choose one of {SCHEDULES} (--gin.SCHEDULE='\"cosine\"').")
    if train_steps <= 0:
        raise ValueError(f"train_steps={train_steps} must be positive (--gin.TRAIN_STEPS, or None for NUM_EPOCHS).")
    warm = warmup_steps_for(train_steps, warmup_ratio) if warmup_steps is None else int(warmup_steps)
    warm = min(warm, train_steps)
    decay = max(train_steps - warm, 1)
    # Step s uses the LR of update s (0-based), like Hugging Face's get_linear_schedule_with_warmup.
    if schedule == "linear":
        after = optax.linear_schedule(learning_rate, 0.0, decay)
    elif schedule == "cosine":
        after = optax.cosine_decay_schedule(learning_rate, decay)
    else:
        after = optax.constant_schedule(learning_rate)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warm), after], [warm])


def decay_mask(params):
    """True where weight decay applies: not on norm scales or biases (as in Hugging Face's Trainer)."""
    def decayed(path, _):
        name = jax.tree_util.keystr(path).lower()
        return not any(word in name for word in ("norm", "scale", "bias"))
    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(learning_rate: float, train_steps: int, *, warmup_ratio: float = 0.03, schedule: str = "linear",
                   weight_decay: float = 0.0, grad_clip: float | None = 1.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, warmup_steps: int | None = None):
    """`(optax.GradientTransformation, schedule)`: AdamW on the schedule, after global-norm clipping."""
    sched = make_schedule(learning_rate, train_steps, warmup_ratio, schedule, warmup_steps)
    parts = []
    if grad_clip is not None and grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask))
    return optax.chain(*parts), sched


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer of a run (defaults: the SciTulu recipe, AdamW lr 2e-5, linear decay, 3% warmup, no decay)."""

    learning_rate: float = dataclasses.field(default=2e-5, metadata={"min": 0, "above": True})
    warmup_ratio: float = dataclasses.field(default=0.03, metadata={"min": 0, "below": 1.0})
    schedule: str = dataclasses.field(default="linear", metadata={"choices": SCHEDULES})
    weight_decay: float = dataclasses.field(default=0.0, metadata={"min": 0})
    grad_clip: float | None = dataclasses.field(default=1.0, metadata={"min": 0})

    def make(self, train_steps: int):
        """`(optax.GradientTransformation, schedule)` for a run of `train_steps` updates."""
        return make_optimizer(self.learning_rate, train_steps, warmup_ratio=self.warmup_ratio, schedule=self.schedule,
                              weight_decay=self.weight_decay, grad_clip=self.grad_clip)
