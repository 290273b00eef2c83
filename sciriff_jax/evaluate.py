"""SciRIFF-Eval runs: decode a task or mixture's validation split with the model and score it.

Raw examples come from `seqio_tasks.raw_examples`, prompts from `seqio_tasks.render.render_prompt`,
tokens from `sciriff_jax.decode.generate`, scores from `seqio_tasks.metrics`. Outputs: one
predictions JSONL per task (scorable later with `sciriff-jax score`), summary.json and summary.md.
"""
from __future__ import annotations

import json
import time
from typing import Callable

from sciriff_jax import paths

# Prompts are decoded in chunks of this many batches, longest first, so progress shows and OOM shows early.
CHUNK_BATCHES = 4
# Few-shot examples per scorer as in the paper (Evidence Inference was 1-shot), drawn like lm-eval's
# sampler (random.Random(1234), from the same split, never the instance itself).
PAPER_FEWSHOT = {"evidence_inference": 1}
FEWSHOT_SEED = 1234
FEWSHOT_DELIMITER = "\n\n\n"
# Judge tasks keep the prompt text in their predictions file: the judge reads the title / question from it.
JUDGE_SCORERS = ("qasper_abstractive_qa", "mup_single_document_summarization")


def scorer_for(task_name: str) -> str:
    """The metrics scorer of a registered task: the sample's own scorer, else the eval task it names."""
    from seqio_tasks import metrics, sample

    for key, info in sample.SAMPLE_TASKS.items():
        if task_name == key or task_name.endswith("_" + key):
            return info["scorer"]
    try:
        return metrics.resolve_scorer(task_name)
    except ValueError:
        raise ValueError(f"task {task_name!r} has no SciRIFF-Eval scorer: evaluate the eval mixture's tasks "
                         f"(names containing one of {', '.join(metrics.EVAL_TASKS)}) or a sciriff_sample_* task") from None


def task_names_of(mixture_or_task_name: str) -> list[str]:
    """The task names of a registered SeqIO mixture, or [name] for a task."""
    import seqio

    import seqio_tasks  # noqa: F401  registers the tasks and mixtures

    try:
        provider = seqio.get_mixture_or_task(mixture_or_task_name)
    except ValueError as err:
        raise ValueError(f"{mixture_or_task_name!r} is neither a registered SeqIO task nor a mixture "
                         f"(see `sciriff-jax data stats`): {err}") from None
    tasks = getattr(provider, "tasks", None)
    return [t.name for t in tasks] if tasks is not None else [provider.name]


def load_examples(task_names: list[str], split: str = "validation", max_examples: int | None = None) -> dict:
    """{task: (raw examples, scorer name)} from the data layer; fails early for a task without a scorer."""
    import seqio_tasks

    loaded = {}
    for name in task_names:
        scorer = scorer_for(name)
        loaded[name] = (seqio_tasks.raw_examples(name, split, max_examples=max_examples), scorer)
    return loaded


def decode_texts(config, params, prompt_texts: list[str], vocabulary, *, max_new_tokens: int = 1024,
                 batch_size: int = 32, mesh=None, bos_id: int | None = None, label: str = "") -> list[str]:
    """Greedy-decode each rendered prompt; returns the answer texts in input order, printing progress."""
    from sciriff_jax import decode

    prompts = [list(vocabulary.encode(t)) for t in prompt_texts]
    # As lm-eval (the release's harness): a prompt longer than max_position - max_new_tokens keeps its last
    # tokens, so the answer always has room within the model's context.
    room = int(getattr(config, "max_position", 0) or 0) - max_new_tokens
    truncated = sum(len(p) > room for p in prompts) if room > 0 else 0
    if truncated:
        prompts = [p[-room:] for p in prompts]
        print(f"[eval] {label}: {truncated} prompt(s) longer than {room} tokens (max_position - max_new_tokens) "
              "were cut from the left", flush=True)
    if bos_id is not None:
        prompts = [[bos_id] + p for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list = [None] * len(prompts)
    chunk = max(1, batch_size * CHUNK_BATCHES)
    started, new_tokens = time.time(), 0
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        generated = decode.generate(config, params, [prompts[i] for i in idx], max_new_tokens=max_new_tokens,
                                    eos_id=vocabulary.eos_id, batch_size=batch_size, mesh=mesh)
        for i, tokens in zip(idx, generated):
            outputs[i] = [int(t) for t in tokens]
            new_tokens += len(tokens)
        elapsed = max(time.time() - started, 1e-9)
        print(f"[eval] {label}: {min(start + chunk, len(order))}/{len(order)} examples, {new_tokens} new tokens, "
              f"{new_tokens / elapsed:.1f} tok/s, {elapsed:.0f}s", flush=True)
    return [_decode_answer(vocabulary, tokens) for tokens in outputs]


def _decode_answer(vocabulary, tokens: list[int]) -> str:
    eos = vocabulary.eos_id
    if eos in tokens:
        tokens = tokens[: tokens.index(eos)]
    return vocabulary.decode(tokens)


def build_prompts(examples: list[dict], template: str = "tulu", num_fewshot: int = 0) -> list[str]:
    """Rendered prompts; with num_fewshot, solved examples of the same split go first (lm-eval's format)."""
    import random

    from seqio_tasks import render

    rng = random.Random(FEWSHOT_SEED)
    prompts = []
    for ex in examples:
        shots = ""
        if num_fewshot and len(examples) > 1:
            drawn = rng.sample(examples, min(num_fewshot + 1, len(examples)))
            chosen = [d for d in drawn if d is not ex][:num_fewshot]
            shots = "".join(render.render_prompt(d["input"], template) + d["output"] + FEWSHOT_DELIMITER for d in chosen)
        prompts.append(shots + render.render_prompt(ex["input"], template))
    return prompts


def predict_tasks(config, params, loaded: dict, vocabulary, *, max_new_tokens=1024, batch_size=32,
                  template="tulu", mesh=None, bos_id=None, output_dir=None, fewshot: dict | None = None) -> dict:
    """{task: prediction records} for loaded examples; writes predictions/<task>.jsonl under output_dir."""
    fewshot = PAPER_FEWSHOT if fewshot is None else fewshot
    records = {}
    for name, (examples, scorer) in loaded.items():
        texts = build_prompts(examples, template, fewshot.get(scorer, 0))
        answers = decode_texts(config, params, texts, vocabulary, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, mesh=mesh, bos_id=bos_id, label=name)
        records[name] = [
            {"task": name, "scorer": scorer, "_instance_id": ex.get("_instance_id", f"{name}:{i}"), "output": ex["output"], "prediction": ans,
             **({"input": ex["input"]} if scorer in JUDGE_SCORERS else {})}
            for i, (ex, ans) in enumerate(zip(examples, answers))]
        if output_dir is not None:
            path = paths.resolve(output_dir) / "predictions" / f"{name}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records[name])
            print(f"[eval] {name}: wrote {len(records[name])} predictions to {path}", flush=True)
    return records


def score_records(records: dict, scorers: dict, *, judge=None) -> dict:
    """Score {task: records}; returns per-task results, the table row, its mean and the pooled JSON parse rate."""
    from seqio_tasks import metrics

    results = {name: {**metrics.score(scorers[name], rows, judge=judge), "task": name} for name, rows in records.items()}
    row = metrics.table_row(results)
    parsed = [r for r in results.values() if r.get("parse")]
    total = sum(r["n"] for r in parsed)
    rate = sum(r["parse"]["valid_json"] + r["parse"]["extract_success"] for r in parsed) / total if total else None
    return {"tasks": results, "table": row, "mean": metrics.table_mean(row), "json_parse_rate": rate}


def evaluate_tasks(config, params, task_names: list[str], vocabulary, *, split="validation", max_examples=None,
                   max_new_tokens=1024, batch_size=32, template="tulu", judge=None, output_dir=None, mesh=None,
                   bos_id=None, fewshot: dict | None = None) -> dict:
    """Decode and score tasks: per-task metrics + parse counts + the table mean; writes outputs to output_dir."""
    loaded = load_examples(task_names, split, max_examples)
    records = predict_tasks(config, params, loaded, vocabulary, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            template=template, mesh=mesh, bos_id=bos_id, output_dir=output_dir, fewshot=fewshot)
    summary = score_records(records, {name: scorer for name, (_, scorer) in loaded.items()}, judge=judge)
    if output_dir is not None:
        write_summary(summary, output_dir)
    return summary


def write_summary(summary: dict, output_dir) -> None:
    """summary.json (everything) and summary.md (the headline table, x100, with parse rates)."""
    out = paths.resolve(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    print(f"[eval] wrote {out / 'summary.md'} and {out / 'summary.json'}", flush=True)


def summary_markdown(summary: dict) -> str:
    """The results table: one line per headline metric (x100), JSON parse rate and counts, then the mean."""

    fmt = lambda v: f"{100 * v:.1f}" if isinstance(v, (int, float)) else ("skipped" if v == "skipped" else "n/a")  # noqa: E731
    lines = ["| task | metric | score | n | JSON parsed | valid / extracted / failed |", "|---|---|---|---|---|---|"]
    for name, res in summary["tasks"].items():
        parse = res.get("parse")
        counts = f"{parse['valid_json']} / {parse['extract_success']} / {parse['extract_failure']}" if parse else "-"
        for metric, value in res["headline"].items():
            lines.append(f"| {name} | {metric} | {fmt(value)} | {res['n']} | {fmt(res.get('json_parse_rate'))} | {counts} |")
    numeric = sum(isinstance(v, (int, float)) for v in summary["table"].values())
    lines.append(f"| **mean** | {numeric} of {len(summary['table'])} numbers | {fmt(summary['mean'])} | | "
                 f"{fmt(summary.get('json_parse_rate'))} | |")
    return "\n".join(lines) + "\n"


def flat_metrics(summary: dict) -> dict:
    """Flat {name: number} for logs: mean, pooled and per-task json_parse_rate, per-task headline numbers."""
    flat = {"mean": summary["mean"], "json_parse_rate": summary["json_parse_rate"]}
    for name, res in summary["tasks"].items():
        if res.get("json_parse_rate") is not None:
            flat[f"{name}/json_parse_rate"] = res["json_parse_rate"]
        for metric, value in res["headline"].items():
            if isinstance(value, (int, float)):
                flat[f"{name}/{metric}"] = value
    return {k: v for k, v in flat.items() if v is not None}


def make_eval_hook(mixture_or_task_name: str, *, config, vocabulary, max_examples: int | None = 16,
                   max_new_tokens: int = 256, batch_size: int = 8, template: str = "tulu", mesh=None,
                   split: str = "validation", output_dir=None, bos_id=None) -> Callable[[object, int], dict]:
    """An eval callback for the training loop: `hook(params, step) -> flat metrics` (examples loaded once)."""
    names = task_names_of(mixture_or_task_name)
    loaded = load_examples(names, split, max_examples)
    scorers = {name: scorer for name, (_, scorer) in loaded.items()}
    if bos_id is None:
        bos_id = training_bos_id(vocabulary)

    def hook(params, step: int) -> dict:
        step_dir = None if output_dir is None else paths.resolve(output_dir) / f"step_{step}"
        records = predict_tasks(config, params, loaded, vocabulary, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                template=template, mesh=mesh, bos_id=bos_id, output_dir=step_dir)
        summary = score_records(records, scorers)
        if step_dir is not None:
            write_summary(summary, step_dir)
        return flat_metrics(summary)

    return hook


# ----------------------------------------------------------------------------- gin-configured runs


def load_for_eval(checkpoint_path: str, *, vocabulary_path: str | None = None, dtype: str = "bfloat16"):
    """(config, params, vocabulary, bos_id) from an Orbax checkpoint or a Hugging Face model directory."""
    from seqio_tasks import vocab as vocab_lib

    path = paths.resolve(checkpoint_path)
    if not path.exists():
        raise FileNotFoundError(f"CHECKPOINT_PATH {checkpoint_path!r} does not exist; pass an Orbax checkpoint "
                                "(MODEL_DIR or a step directory) or a Hugging Face model directory")
    if (path / "config.json").is_file():
        from sciriff_jax import hf

        params, config = hf.load_hf_params(path, dtype=dtype)
        spm = path / "tokenizer.model"
        vocabulary = vocab_lib.get_vocabulary(vocabulary_path or (str(spm) if spm.is_file() else None))
        bos_id = _hf_bos_id(path, vocabulary) if spm.is_file() and not vocabulary_path else None
        return config, params, vocabulary, bos_id
    from sciriff_jax import checkpoint

    params, config = checkpoint.load_params(path)
    vocabulary = vocab_lib.get_vocabulary(vocabulary_path)
    return config, params, vocabulary, training_bos_id(vocabulary)


def training_bos_id(vocabulary) -> int | None:
    """The BOS that training put before every document (seqio_tasks.render), so eval prompts start the same way."""
    from seqio_tasks import render

    bos = render.bos_ids(vocabulary)
    return bos[0] if bos else None


def _hf_bos_id(path, vocabulary) -> int | None:
    """BOS to prepend as the model's own tokenizer does (Llama: yes), which a SeqIO vocabulary does not."""
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.is_file() and json.loads(tokenizer_config.read_text()).get("add_bos_token") is False:
        return None
    bos = training_bos_id(vocabulary)
    return bos if bos is not None else json.loads((path / "config.json").read_text()).get("bos_token_id")


def _shard(config, params, mesh_layout, mesh_shape):
    """(params, mesh, context): params placed on a mesh with the training rule table, or left as they are."""
    import contextlib

    if mesh_layout is None:
        return params, None, contextlib.nullcontext()
    import jax

    from sciriff_jax import partitioning

    mesh = partitioning.make_mesh(mesh_layout, mesh_shape)
    params = jax.device_put(params, partitioning.param_shardings(config, mesh, mesh_layout))
    print(f"[eval] params sharded over mesh {dict(mesh.shape)} ({mesh_layout})", flush=True)
    return params, mesh, partitioning.activation_context(mesh, mesh_layout)


def _default_output_dir(checkpoint_path: str, mixture_or_task_name: str):
    """MODEL_DIR/eval/<mixture> for a training run's MODEL_DIR (as t5x keeps inference beside the run), else ./sciriff_eval."""
    path = paths.resolve(checkpoint_path)
    if (path / "checkpoints").is_dir():
        return path / "eval" / mixture_or_task_name
    return paths.resolve("sciriff_eval") / path.name / mixture_or_task_name


def evaluate_run(*, checkpoint_path: str, mixture_or_task_name: str = "sciriff_4096_eval", output_dir: str | None = None,
                 max_examples: int | None = None, split: str = "validation", max_new_tokens: int = 1024,
                 batch_size: int = 32, template: str = "tulu", vocabulary_path: str | None = None,
                 judge_url: str | None = None, judge_model: str | None = None, dtype: str = "bfloat16",
                 fewshot: dict | None = None, mesh_layout: str | None = None, mesh_shape: dict | None = None) -> dict:
    """The `eval` mode: load a checkpoint (Orbax or Hugging Face), decode the tasks, score, write the table."""
    from seqio_tasks import judge as judge_lib

    out = paths.resolve(output_dir) if output_dir else _default_output_dir(checkpoint_path, mixture_or_task_name)
    names = task_names_of(mixture_or_task_name)
    judge = judge_lib.judge_from_env(judge_url, judge_model)
    print(f"[eval] {mixture_or_task_name}: {len(names)} task(s), split {split}, max_examples={max_examples}, "
          f"judge={'none (judge metrics skipped)' if judge is None else judge}; writing to {out}", flush=True)
    config, params, vocabulary, bos_id = load_for_eval(checkpoint_path, vocabulary_path=vocabulary_path, dtype=dtype)
    params, mesh, context = _shard(config, params, mesh_layout, mesh_shape)
    with context:
        summary = evaluate_tasks(config, params, names, vocabulary, split=split, max_examples=max_examples,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, template=template, judge=judge,
                                 output_dir=out, bos_id=bos_id, fewshot=fewshot, mesh=mesh)
    print(summary_markdown(summary), flush=True)
    return summary


def infer_run(*, checkpoint_path: str, mixture_or_task_name: str = "sciriff_4096_eval", output_dir: str | None = None,
              max_examples: int | None = None, split: str = "validation", max_new_tokens: int = 1024,
              batch_size: int = 32, template: str = "tulu", vocabulary_path: str | None = None,
              dtype: str = "bfloat16", fewshot: dict | None = None, mesh_layout: str | None = None,
              mesh_shape: dict | None = None) -> dict:
    """The `infer` mode: decode and write predictions/<task>.jsonl only (score them later with `sciriff-jax score`)."""
    out = paths.resolve(output_dir) if output_dir else _default_output_dir(checkpoint_path, mixture_or_task_name)
    names = task_names_of(mixture_or_task_name)
    config, params, vocabulary, bos_id = load_for_eval(checkpoint_path, vocabulary_path=vocabulary_path, dtype=dtype)
    loaded = load_examples(names, split, max_examples)
    params, mesh, context = _shard(config, params, mesh_layout, mesh_shape)
    with context:
        records = predict_tasks(config, params, loaded, vocabulary, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                template=template, bos_id=bos_id, output_dir=out, fewshot=fewshot, mesh=mesh)
    return {"output_dir": str(out), "predictions": {name: len(rows) for name, rows in records.items()}}
