"""`sciriff-jax data prefs`: preference pairs for SciRIFF tasks from a model's own sampled answers.

For every instance of each task of a SeqIO task or mixture: sample `--samples` answers from the model (the eval's
prompts, `--protocol`, default `train`: as the model was trained), score each with the task's own SciRIFF-Eval
metric on that one instance (scoring/rewards.task_score: what `sciriff-jax score` gives a one-line file), and pair
the best answer (chosen) with the worst (rejected). An answer that does not parse (a JSON task's answer that is
neither valid nor extractable JSON) ranks below every answer that does, whatever its score. No pair is made when
all samples rank the same (a tie; all unparseable is counted apart) or are the same text. Every count goes to
`<out>/prefs_summary.json` and the log. The pairs are written as a release-style folder,
`<out>/<task>/<split>-00000-of-00001.jsonl` (`_instance_id`, `input`, `chosen`, `rejected`, their scores), that
`runs/dpo.gin`'s PREFERENCE_DATA reads (seqio_tasks/preferences.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import jax

from sciriff_jax.eval.protocol import Protocol
from sciriff_jax.io import loader, paths, writes
from sciriff_jax.scoring import judge as judge_lib
from sciriff_jax.scoring import rewards

SUMMARY = "prefs_summary.json"
HELP = {"samples": "answers sampled per instance (at least 2)", "temperature": "sampling temperature",
        "top_p": "nucleus sampling", "max_new_tokens": "tokens per answer at most",
        "max_examples": "instances per task (default: all of the split)", "split": "the tasks' split to sample",
        "protocol": "eval prompts: train (as the model was trained) or release (the paper's)",
        "batch_size": "rows decoding at once", "seed": "the sampling seed"}


@dataclasses.dataclass(frozen=True)
class PrefsConfig:
    """What `data prefs` samples: answers per instance, how they are drawn, which instances."""

    samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_examples: int | None = None  # per task
    split: str = "train"
    protocol: str = "train"
    batch_size: int = 32
    seed: int = 0


@dataclasses.dataclass
class Sample:
    """One sampled answer and its score (parsed: the answer parses as the task's answer format)."""

    text: str
    score: float
    parsed: bool

    @property
    def rank(self) -> tuple:
        return (self.parsed, self.score)


def pair_of(samples: list[Sample]) -> tuple[str, Sample | None, Sample | None]:
    """(outcome, chosen, rejected): "pair", "tie" (all rank the same), "unparseable" (no sample parses) or
    "identical" (best and worst are the same text)."""
    best, worst = max(samples, key=lambda s: s.rank), min(samples, key=lambda s: s.rank)
    if not best.parsed:
        return "unparseable", None, None
    if best.rank == worst.rank:
        return "tie", None, None
    if best.text == worst.text:
        return "identical", None, None
    return "pair", best, worst


def sample_task(loaded, task: str, settings: PrefsConfig, judge=None) -> tuple[list[dict], list[list[Sample]]]:
    """(the task's instances, each one's scored samples)."""
    import seqio_tasks  # the data layer (TensorFlow, SeqIO): the task's instances and declared scorer

    scorer = rewards.check_rewardable(task, seqio_tasks.sample.SAMPLE_SCORERS, judge)
    examples = seqio_tasks.raw_examples(task, settings.split, settings.max_examples)
    fmt, protocol = loaded.chat_format, Protocol(settings.protocol)
    prompts = fmt.encode_prompts(protocol.prompts(examples, fmt, 0, scorer), add_bos=protocol.adds_bos,
                                 max_position=loaded.config.max_position, max_new_tokens=settings.max_new_tokens,
                                 label=task)
    repeated = [p for p in prompts for _ in range(settings.samples)]
    out = loaded.generate(repeated, max_new_tokens=settings.max_new_tokens, eos_id=fmt.eos_id,
                          temperature=settings.temperature, top_p=settings.top_p, batch_size=settings.batch_size,
                          rng=jax.random.PRNGKey(settings.seed))
    scored = []
    for i, ex in enumerate(examples):
        row = []
        for tokens in out[i * settings.samples:(i + 1) * settings.samples]:
            text = protocol.cut(fmt.decode(tokens), scorer)
            value, parsed = rewards.task_score(scorer, ex["output"], text, judge=judge)
            row.append(Sample(text, value, parsed))
        scored.append(row)
    return examples, scored


def build_pairs(examples: list[dict], scored: list[list[Sample]], task: str) -> tuple[list[dict], dict]:
    """(pair rows, counts) of one task."""
    rows, counts = [], {"instances": len(examples), "pair": 0, "tie": 0, "unparseable": 0, "identical": 0,
                        "unparseable_samples": sum(not s.parsed for row in scored for s in row)}
    for ex, samples in zip(examples, scored):
        outcome, chosen, rejected = pair_of(samples)
        counts[outcome] += 1
        if outcome == "pair":
            rows.append({"_instance_id": ex["_instance_id"], "input": ex["input"], "chosen": chosen.text,
                         "rejected": rejected.text, "chosen_score": chosen.score, "rejected_score": rejected.score,
                         "chosen_parsed": chosen.parsed, "rejected_parsed": rejected.parsed,
                         "metadata": ex.get("metadata", "{}"), "task": task})
    counts["pairs"] = counts.pop("pair")
    n = max(counts["pairs"], 1)
    counts["mean_chosen_score"] = sum(r["chosen_score"] for r in rows) / n
    counts["mean_rejected_score"] = sum(r["rejected_score"] for r in rows) / n
    return rows, counts


def _check_out(out) -> None:
    out = paths.resolve(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} is not empty: write the pairs into a new or empty folder")


def build(checkpoint: str, mixture: str, out: str, settings: PrefsConfig = PrefsConfig()) -> dict:
    """Sample, score and pair every task of `mixture`; write the folder; returns the summary."""
    import seqio_tasks  # the data layer (TensorFlow, SeqIO)

    _check_out(out)
    judge = judge_lib.judge_from_env()
    loaded = loader.load(checkpoint)
    root = paths.resolve(out)
    summary = {"checkpoint": str(checkpoint), "mixture": mixture, "settings": dataclasses.asdict(settings),
               "chat_format": loaded.chat_format.describe(), "tasks": {}}
    for task in seqio_tasks.task_names(mixture):
        examples, scored = sample_task(loaded, task, settings, judge)
        rows, counts = build_pairs(examples, scored, task)
        summary["tasks"][task] = counts
        print(f"[prefs] {task}: {counts['pairs']} pairs of {counts['instances']} instances ({counts['tie']} ties, "
              f"{counts['unparseable']} with no parseable sample, {counts['identical']} identical; "
              f"{counts['unparseable_samples']} unparseable samples), mean score chosen "
              f"{counts['mean_chosen_score']:.3f} / rejected {counts['mean_rejected_score']:.3f}", flush=True)
        if rows:
            path = root / task / f"{settings.split}-00000-of-00001.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            writes.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    totals = {k: sum(t[k] for t in summary["tasks"].values())
              for k in ("instances", "pairs", "tie", "unparseable", "identical", "unparseable_samples")}
    summary["totals"] = totals
    root.mkdir(parents=True, exist_ok=True)
    writes.write_text(root / SUMMARY, json.dumps(summary, indent=1))
    if not totals["pairs"]:
        raise ValueError(f"no preference pairs: every instance's samples tied or none parsed ({totals}); sample more "
                         "(--samples), at a higher --temperature, or from another checkpoint")
    print(f"[prefs] wrote {totals['pairs']} pairs to {root} ({SUMMARY}: the counts)", flush=True)
    return summary


def main(argv: list[str]) -> int:
    """`sciriff-jax data prefs --checkpoint C --mixture M --out DIR [...]`."""
    parser = argparse.ArgumentParser(prog="sciriff-jax data prefs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="an HF directory or a sciriff-jax run's MODEL_DIR")
    parser.add_argument("--mixture", required=True, help="a SeqIO task or mixture, e.g. sciriff_sample")
    parser.add_argument("--out", required=True, help="a new or empty folder for the pairs")
    defaults = PrefsConfig()
    for field in dataclasses.fields(PrefsConfig):
        kind = int if field.name in ("samples", "max_new_tokens", "batch_size", "seed", "max_examples") else (
            float if field.name in ("temperature", "top_p") else str)
        parser.add_argument(f"--{field.name}", type=kind, default=getattr(defaults, field.name),
                            help=f"{HELP[field.name]} (default: {getattr(defaults, field.name)})")
    args = parser.parse_args(argv)
    settings = PrefsConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PrefsConfig)})
    if settings.samples < 2:
        parser.error("--samples must be at least 2 (a pair compares two answers)")
    build(args.checkpoint, args.mixture, args.out, settings)
    return 0
