"""Verifiable rewards: a SciRIFF task's metric on one (instance, sampled answer) pair, a number in [0, 1].

The task term is `metrics.score` on a single instance, the same code `sciriff-jax score` runs on a one-line
predictions file: the mean of the task's numeric headline numbers (`metrics.table_mean`), so list F1, NER F1,
relation F1, SciFact's label F1 + evidence token F1, token F1 and BLEU give exactly what the eval gives that
instance. The optional format term is 1 when the answer parses (a JSON task's answer is valid or extractable JSON;
a free-text answer is non-empty) and 0 otherwise; the total is (task + w * format) / (1 + w), still in [0, 1].
A task whose headline is rated by the LM judge (Qasper's answer, MUP) needs a judge: without one it is refused
when the reward is built, never scored with the judge part silently dropped. Pure Python (no JAX, no TF).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from sciriff_jax.scoring import metrics


@dataclasses.dataclass(frozen=True)
class Reward:
    """One answer's reward: `total` (what the policy gradient uses), its task term, its format term (1: parses)."""

    total: float
    task: float
    format: float


def judge_scored(scorer: str) -> bool:
    """Whether a scorer's headline includes an LM-judge metric."""
    return any(key is metrics.JUDGE for key in metrics.SCORERS[scorer][2].values())


def check_rewardable(task: str, declared: Mapping[str, str] | None = None, judge=None) -> str:
    """The scorer of `task` (metrics.resolve_scorer with the data layer's `declared` table); refuses a task without a
    metric, and a judge-scored one when no judge is configured."""
    scorer = metrics.resolve_scorer(task, declared)
    if judge_scored(scorer) and judge is None:
        raise ValueError(f"GRPO reward: task {task!r} is scored by the LM judge ({scorer}); configure a judge "
                         "(SCIRIFF_JUDGE_URL and SCIRIFF_JUDGE_MODEL) or leave the task out of the RL mixture.")
    return scorer


def task_score(scorer: str, reference: str, prediction: str, *, judge=None) -> tuple[float, bool]:
    """(the headline mean `sciriff-jax score` gives this single instance, whether the answer parsed)."""
    result = metrics.score(scorer, [{"output": reference, "prediction": prediction}], judge=judge)
    value = metrics.table_mean(metrics.table_row({scorer: result}))
    parse = result.get("parse")
    parsed = (parse["extract_failure"] == 0) if parse else bool(metrics.clean_prediction(prediction))
    return (0.0 if value is None else float(value)), parsed


def reward(scorer: str, reference: str, prediction: str, *, format_weight: float = 0.0, judge=None) -> Reward:
    """The reward of one sampled answer (its raw text) against the instance's reference output."""
    if format_weight < 0:
        raise ValueError(f"GRPO reward: format_weight={format_weight} must be >= 0 (FORMAT_REWARD_WEIGHT)")
    task, parsed = task_score(scorer, reference, prediction, judge=judge)
    fmt = 1.0 if parsed else 0.0
    return Reward((task + format_weight * fmt) / (1.0 + format_weight), task, fmt)
