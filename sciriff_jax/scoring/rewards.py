"""Verifiable rewards: a SciRIFF task's metric on one (instance, sampled answer) pair, a number in [0, 1].

The task term is `metrics.score` on a single instance, the same code `sciriff-jax score` runs on a one-line
predictions file: the mean of the task's numeric headline numbers (`metrics.table_mean`), so list F1, NER F1,
relation F1, SciFact's label F1 + evidence token F1, token F1 and BLEU give exactly what the eval gives that
instance. The optional format term is 1 when the answer parses (a JSON task's answer is valid or extractable JSON;
a free-text answer is non-empty) and 0 otherwise; the total is (task + w * format) / (1 + w), still in [0, 1].
A task whose headline is rated by the LM judge (Qasper's answer, MUP) needs a judge: without one it is refused
when the reward is built, never scored with the judge part silently dropped. Pure Python (no JAX, no TF).

`variant="instance"` (GRPO's `REWARD_VARIANT`) changes one task, where the corpus-level metric cannot score a single
instance: SciFact's label F1 counts only SUPPORT / CONTRADICT references and its evidence F1 only the reference's
sentences, so on an NEI instance both are 0 whatever the answer (a correct NEI earns what a wrong verdict earns).
There the task term is the mean of label accuracy (1 when the verdicts agree, NEI included) and evidence token F1,
which is 1 for no evidence against none (an NEI reference) and 0 for evidence against none. Every other scorer,
and every non-NEI SciFact instance's evidence term, is the metric's. Default "metric": `sciriff-jax score` exactly.
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


VARIANTS = ("metric", "instance")


def _instance_fact_checking(reference: str, prediction: str) -> float:
    """SciFact on one instance with NEI counted (see the module docstring)."""
    default = metrics.SCORERS["scifact_entailment"][0]
    pred, _ = metrics.parse_answer(prediction, default)
    ref, _ = metrics.parse_answer(reference, default)
    pred = pred if isinstance(pred, dict) else {}
    label = float((pred.get("verdict") or "NEI") == (ref.get("verdict") or "NEI"))
    ev_pred = " ".join(metrics.normalize_entry(x) for x in metrics.flatten(pred.get("evidence") or []))
    ev_ref = " ".join(metrics.normalize_entry(x) for x in metrics.flatten(ref.get("evidence") or []))
    if not metrics.normalize_answer(ev_ref).split():
        evidence = float(not metrics.normalize_answer(ev_pred).split())
    else:
        evidence = metrics.token_f1(ev_pred, ev_ref)
    return (label + evidence) / 2


def task_score(scorer: str, reference: str, prediction: str, *, judge=None,
               variant: str = "metric") -> tuple[float, bool]:
    """(the headline mean `sciriff-jax score` gives this single instance, or its `variant`, whether it parsed)."""
    if variant not in VARIANTS:
        raise ValueError(f"GRPO reward: variant {variant!r} (REWARD_VARIANT); choose one of {VARIANTS}")
    result = metrics.score(scorer, [{"output": reference, "prediction": prediction}], judge=judge)
    value = metrics.table_mean(metrics.table_row({scorer: result}))
    parse = result.get("parse")
    parsed = (parse["extract_failure"] == 0) if parse else bool(metrics.clean_prediction(prediction))
    if variant == "instance" and scorer == "scifact_entailment":
        return _instance_fact_checking(reference, prediction), parsed
    return (0.0 if value is None else float(value)), parsed


def reward(scorer: str, reference: str, prediction: str, *, format_weight: float = 0.0, judge=None,
           variant: str = "metric") -> Reward:
    """The reward of one sampled answer (its raw text) against the instance's reference output."""
    if format_weight < 0:
        raise ValueError(f"GRPO reward: format_weight={format_weight} must be >= 0 (FORMAT_REWARD_WEIGHT)")
    task, parsed = task_score(scorer, reference, prediction, judge=judge, variant=variant)
    fmt = 1.0 if parsed else 0.0
    return Reward((task + format_weight * fmt) / (1.0 + format_weight), task, fmt)
