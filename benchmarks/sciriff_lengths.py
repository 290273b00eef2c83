"""SciRIFF-Eval prompt and answer lengths (Llama-2 tokens) for the decoding benchmarks, without a tokenizer.

Six of the nine eval tasks have every validation instance in ../shared/sciriff/eval_sample: their prompt
(the release protocol's tulu prompt, `eval.protocol`; Evidence Inference with its one shot) and
reference-answer lengths are the texts' characters times a per-task tokens-per-character ratio fitted so
the task's mean equals `tasks.tsv`'s mean in Llama-2 tokens. The other three have `tasks.tsv`'s median and
mean only: their lengths are drawn from the log-normal with that median and mean (seeded). Prompts are cut
to max_length - max_new tokens and answers are the reference plus EOS, at most max_new: the release's
lm-eval settings (4096, 1024). Pure Python: no TensorFlow, so the GPU benchmarks can use it.
"""
from __future__ import annotations

import csv
import json
import math
import pathlib
import random

from sciriff_jax.chat.format import ChatFormat
from sciriff_jax.eval.protocol import PAPER_FEWSHOT, Protocol

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "sciriff"
FEWSHOT = PAPER_FEWSHOT
RELEASE = Protocol("release")         # the prompts `sciriff-jax eval` builds by default (pure Python)


def _stats(shared: pathlib.Path) -> dict[str, dict]:
    with (shared / "tasks.tsv").open() as f:
        return {r["name"]: r for r in csv.DictReader(f, delimiter="\t") if r["eval_task"] == "yes"}


def _lognormal(rng: random.Random, median: float, mean: float, n: int) -> list[float]:
    sigma = math.sqrt(2 * math.log(mean / median)) if mean > median else 0.0
    return [rng.lognormvariate(math.log(median), sigma) for _ in range(n)]


def eval_lengths(shared: pathlib.Path = SHARED, *, max_length: int = 4096, max_new: int = 1024,
                 seed: int = 0) -> dict[str, dict]:
    """{task: {"prompt": [...], "answer": [...], "source": "instances" | "tasks.tsv"}} for the nine eval tasks."""
    if not (shared / "tasks.tsv").is_file():
        raise FileNotFoundError(f"{shared}/tasks.tsv not found: the SciRIFF length benchmarks read ../shared/sciriff "
                                "(pass --shared DIR pointing at a folder with tasks.tsv and eval_sample/).")
    room, rng = max_length - max_new, random.Random(seed)
    out = {}
    for task, st in _stats(shared).items():
        path = shared / "eval_sample" / f"{task}.jsonl"
        if path.is_file():
            rows = [json.loads(line) for line in path.open()]
            per_char_in = float(st["mean_toks_input"]) / (sum(len(r["input"]) for r in rows) / len(rows))
            per_char_out = float(st["mean_toks_output"]) / max(1e-9, sum(len(r["output"]) for r in rows) / len(rows))
            prompt = [len(p) * per_char_in for p in RELEASE.prompts(rows, ChatFormat(None, "tulu"), FEWSHOT.get(task, 0), task)]
            answer = [len(r["output"]) * per_char_out for r in rows]
            source = "instances"
        else:
            n = int(st["n_validation"])
            prompt = _lognormal(rng, float(st["median_toks_input"]), float(st["mean_toks_input"]), n)
            answer = _lognormal(rng, float(st["median_toks_output"]), float(st["mean_toks_output"]), n)
            source = "tasks.tsv"
        out[task] = {"prompt": [min(room, max(1, round(p))) for p in prompt],
                     "answer": [min(max_new, max(1, round(a)) + 1) for a in answer], "source": source}
    return out
