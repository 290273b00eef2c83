"""The training loop: steps, NaN policy, logging, evaluation hooks, periodic and preemption checkpoints."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator

NONFINITE_POLICIES = ("stop", "skip")
_LOGGED = ("loss", "grad_norm", "target_tokens", "finite")  # step metrics every log record has by name


class NonFiniteLossError(RuntimeError):
    """The loss or gradient of a step was NaN/Inf (policy 'stop')."""


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; exit status 143 like SIGTERM."""

    def __init__(self, step: int):
        super().__init__(143)
        self.step = step


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Which updates run (start_step+1..train_steps), when evaluations run, and what a NaN/Inf step does."""

    train_steps: int
    start_step: int = 0
    eval_every: int | None = None   # evaluate every this many steps (None: only with eval_at_start)
    eval_at_start: bool = False     # also evaluate the starting params (a run from step 0 only)
    on_nonfinite: str = "stop"      # stop | skip (gin: ON_NONFINITE)


def train_loop(*, step_fn, params, opt_state, batches: Iterator, settings: LoopConfig,
               schedule: Callable | None = None, checkpointer=None, logger=None, eval_fn=None,
               preemption=None) -> dict:
    """Run steps settings.start_step+1..settings.train_steps; log, evaluate, checkpoint; returns a summary dict.

    `batches` yields global batches and has `.state() -> dict` (its position, saved in checkpoints).
    """
    train_steps, start_step, on_nonfinite = settings.train_steps, settings.start_step, settings.on_nonfinite
    eval_every, eval_at_start = settings.eval_every, settings.eval_at_start
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"ON_NONFINITE={on_nonfinite!r}; choose one of {NONFINITE_POLICIES} (e.g. --gin.ON_NONFINITE='\"skip\"').")
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
        if not bool(metrics["finite"]):  # one host sync per step: the NaN guard needs it
            handle_nonfinite(step, metrics, batches, checkpointer, on_nonfinite)
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
                **{k: float(v) for k, v in metrics.items() if k not in _LOGGED},  # a step's own (e.g. DPO rewards)
            })
        if eval_fn is not None and eval_every and step % eval_every == 0:
            evaluate(step)
        checkpoint_step(step, params, opt_state, batches, checkpointer, preemption, last=step == train_steps)
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


def handle_nonfinite(step: int, metrics: dict, batches, checkpointer, policy: str) -> None:
    """A step whose loss or gradient is NaN/Inf (its update was not applied): stop, naming the batch and the
    last good checkpoint, or (policy "skip") say so and go on."""
    position = batches.state() if hasattr(batches, "state") else {}
    # "Good" means verified now: a checkpoint saved earlier may have been damaged since.
    last = checkpointer.last_good_step() if checkpointer is not None else None
    where = f"{checkpointer.directory}/{last} (checksums verified)" if last is not None else "none verified"
    msg = (f"non-finite loss/gradient at step {step} (loss={float(metrics['loss'])}, "
           f"grad_norm={float(metrics['grad_norm'])}), batch index {position.get('batches_consumed', step) - 1} "
           f"of the input stream ({position}); last good checkpoint: {where}.")
    if policy == "stop":
        raise NonFiniteLossError(msg + " The update was not applied. Lower LEARNING_RATE, check the data, or "
                                 "pass --gin.ON_NONFINITE='\"skip\"' to skip such batches.")
    print(f"[sciriff-jax] WARNING: skipping {msg}", flush=True)


def checkpoint_step(step: int, params, opt_state, batches, checkpointer, preemption, last: bool) -> None:
    """The periodic (and last) checkpoint; on a preemption request, a waited-for one, then exit (Preempted)."""
    if checkpointer is not None and (checkpointer.should_save(step) or last):
        checkpointer.save(step, params, opt_state, batches.state())
    if preemption is not None and preemption.requested():
        if checkpointer is not None:
            checkpointer.save(step, params, opt_state, batches.state(), wait=True)
            print(f"[sciriff-jax] preemption: saved step {step} to {checkpointer.directory}/{step}; exiting",
                  flush=True)
        raise Preempted(step)
