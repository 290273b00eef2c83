"""SciRIFF-Eval runs: decode a task or mixture's validation split with the model and score it.

Raw examples come from `seqio_tasks.raw_examples`, prompts from `eval.protocol` around the model's `ChatFormat`,
tokens from `decoding.generate`,
scores from `scoring.metrics`, the model from `io.loader`. Every task of a mixture goes through one continuous
batcher, so progress and ETA cover the whole mixture and no batch drains at a task's end. Outputs: one
predictions JSONL per task (scorable later with `sciriff-jax score`; kept as they finish and resumed by a
rerun, `eval.predictions`), summary.json and summary.md. This module imports `seqio_tasks` (hence
TensorFlow) only when examples or prompts are needed, so the gin entry point starts without it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from typing import Callable

import jax
import numpy as np

from sciriff_jax.decoding import constrain
from sciriff_jax.decoding.generate import DecodeHooks, GenerationConfig, generate
from sciriff_jax.scoring import metrics
from sciriff_jax.scoring.schemas import schema_for
from sciriff_jax.scoring import judge as judge_lib
from sciriff_jax.chat.format import AUTO, ChatFormat, resolve_template
from sciriff_jax.eval.protocol import PAPER_FEWSHOT, PROTOCOLS, Protocol
from sciriff_jax.eval.predictions import PredictionStore
from sciriff_jax.eval.progress import Progress
from sciriff_jax.io import loader, paths, writes
from sciriff_jax.parallel.sharding import MeshConfig, Sharding
# Judge tasks keep the prompt text in their predictions file: the judge reads the title / question from it.
JUDGE_SCORERS = ("qasper_abstractive_qa", "mup_single_document_summarization")


def fewshot_problem(fewshot) -> str | None:
    """None for a usable EvalConfig.fewshot, else what it must be (the gin macro check reads it from the field)."""
    if fewshot is not None and (not isinstance(fewshot, dict) or not all(
            isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0
            for k, n in fewshot.items())):
        return 'None or a dict of task name -> number of examples, e.g. {"evidence_inference": 1}'
    return None


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to decode and how: the eval runs' settings, and the decoding eval during training (gin scope
    `infer_eval/EvalConfig` in runs/finetune.gin; no mixture: no such eval)."""

    # None: no decoding eval, which only the one during training may be.
    mixture_or_task_name: str | None = dataclasses.field(default="sciriff_4096_eval",
                                                         metadata={"optional_in": ("infer_eval",)})
    split: str = dataclasses.field(default="validation", metadata={"choices": ("train", "validation", "test")})
    max_examples: int | None = dataclasses.field(default=None, metadata={"min": 1})  # per task; None = all
    max_new_tokens: int = dataclasses.field(default=1024, metadata={"min": 1})
    # Rows decoding at once (continuous batching slots).
    batch_size: int = dataclasses.field(default=32, metadata={"min": 1})
    kv_cache_bytes: int | None = None    # KV-cache budget per device; None: decoding.kv_memory.default_budget
    template: str = AUTO                 # "auto": the checkpoint's own; tulu | llama2 | plain | model | a .jinja
    # None: the paper's ({"evidence_inference": 1}).
    fewshot: dict | None = dataclasses.field(default=None, metadata={"check": fewshot_problem})
    # release: prompts, BOS and stops as the paper's eval; train: as training.
    protocol: str = dataclasses.field(default="release", metadata={"choices": PROTOCOLS})
    # Decode each JSON task's answer under its schema (scoring.schemas; decoding/constrain.py): off in the release
    # protocol's runs, as the paper did not constrain.
    constrained: bool = False
    # Prompt-lookup speculation (decoding/speculate.py): k draft tokens verified per decode step, the same answers
    # as plain greedy decoding; 0 = off.
    speculate: int = dataclasses.field(default=0, metadata={"min": 0})


def task_names_of(mixture_or_task_name: str) -> list[str]:
    """The task names of a registered SeqIO mixture, or [name] for a task."""
    import seqio_tasks  # the data layer (TensorFlow)

    return seqio_tasks.task_names(mixture_or_task_name)


def load_examples(task_names: list[str], split: str = "validation", max_examples: int | None = None) -> dict:
    """{task: (raw examples, scorer name)} from the data layer; fails early for a task without a scorer. The runs
    load the whole split (max_examples None): it is the few-shot pool, and predict_tasks decodes its first
    EvalConfig.max_examples instances."""
    import seqio_tasks  # the data layer (TensorFlow)
    from seqio_tasks.sample import resolve_scorer  # knows the sample's tasks; the data layer (TensorFlow)

    scorers = {name: resolve_scorer(name) for name in task_names}
    return {name: (seqio_tasks.raw_examples(name, split, max_examples=max_examples), scorers[name])
            for name in task_names}


def check_max_new_tokens(max_position, max_new_tokens: int, setting: str = "--gin.MAX_NEW_TOKENS",
                         where: str = "the model") -> None:
    """Refuse max_new_tokens >= the model's context (max_position) before anything is decoded: no prompt token
    would fit, and decoding would run past the last position the model knows. `setting` is what the user sets."""
    if max_position and max_new_tokens >= max_position:
        raise ValueError(f"max_new_tokens={max_new_tokens} ({setting}) is not below the context of {where}, "
                         f"max_position={max_position} tokens: no prompt would fit. Set {setting} to at most "
                         f"{max_position - 1} (prompts keep their last max_position - max_new_tokens tokens).")


def decode_texts(config, params, prompt_texts: list[str], chat_format: ChatFormat, *, max_new_tokens: int = 1024,
                 batch_size: int = 32, sharding: Sharding | None = None, add_bos: bool = False,
                 label: str = "", kv_cache_bytes: int | None = None) -> list[str]:
    """Greedy-decode each rendered prompt; returns the answer texts in input order, printing progress."""
    prompts = chat_format.encode_prompts(prompt_texts, add_bos=add_bos, max_position=getattr(config, "max_position", 0),
                                         max_new_tokens=max_new_tokens, label=label)
    progress = Progress(len(prompts), label, work_total=(sum(map(len, prompts)), max_new_tokens * len(prompts)))
    hooks = DecodeHooks(on_finish=lambda i, tokens: progress.update(len(tokens)), on_step=progress.step)
    generated = generate(config, params, prompts, GenerationConfig(max_new_tokens, chat_format.eos_id),
                         batch_size=batch_size, sharding=sharding, kv_cache_bytes=kv_cache_bytes, hooks=hooks)
    return [chat_format.decode(tokens) for tokens in generated]


def prompt_format(eval_config: EvalConfig, chat_format: ChatFormat) -> ChatFormat:
    """The format prompts are written in: the model's, or its vocabulary with EvalConfig.template where that names
    another template ("auto": the model's own)."""
    template = resolve_template(eval_config.template, recorded=chat_format.template)
    if template == chat_format.template:
        return chat_format
    return ChatFormat(chat_format.vocabulary, template, f"{chat_format.describe()}; template {template!r} (TEMPLATE)")


def task_prompts(loaded: dict, chat_format: ChatFormat, eval_config: EvalConfig) -> dict:
    """{task: (the examples decoded, their prompt texts)}: the first EvalConfig.max_examples of each task's loaded
    examples (all when None), prompted with few-shot examples drawn from all of them (the split), so an instance's
    prompt is the same in a quick run and in the full run, as with lm-eval's --limit. `chat_format`: the one
    prompts are written in (prompt_format's)."""
    fewshot = PAPER_FEWSHOT if eval_config.fewshot is None else eval_config.fewshot
    protocol = Protocol(eval_config.protocol)
    out = {}
    for name, (pool, scorer) in loaded.items():
        examples = pool[:eval_config.max_examples] if eval_config.max_examples else pool
        out[name] = (examples, protocol.prompts(examples, chat_format, fewshot.get(scorer, 0), scorer, pool=pool))
    return out


def predict_tasks(config, params, loaded: dict, chat_format: ChatFormat, *, eval_config: EvalConfig = EvalConfig(),
                  sharding: Sharding | None = None, output_dir=None, settings: dict | None = None,
                  label: str = "", prompt_report: dict | None = None) -> dict:
    """{task: prediction records} for the first EvalConfig.max_examples of each task's loaded examples (all when
    None; the few-shot examples are drawn from all of them, so a prompt is the same in a quick run and in a full
    one), all tasks through one batcher; with output_dir, writes predictions/<task>.jsonl (as each task completes)
    and resumes from what a stopped run left there. `prompt_report`, when given, receives per task the prompt
    budget and how many prompts were cut (ChatFormat.encode_prompts' report).

    `chat_format`: the model's (resolved once: io.loader.load, or the training run's); prompts, BOS, tokens and
    EOS are its. `settings`: what identifies these predictions (checkpoint, decoding settings), kept beside them so
    a rerun with other settings is refused rather than mixed in.
    """
    chat_format = prompt_format(eval_config, chat_format)
    fewshot = PAPER_FEWSHOT if eval_config.fewshot is None else eval_config.fewshot
    protocol = Protocol(eval_config.protocol)
    store = None
    if output_dir is not None:
        store = PredictionStore(output_dir, {**(settings or {}), "params": params_digest(params),
                                             "split": eval_config.split,
                                             "max_new_tokens": eval_config.max_new_tokens,
                                             "template": chat_format.template, "fewshot": fewshot,
                                             "protocol": protocol.name,
                                             **({"constrained": True} if eval_config.constrained else {})})
    records: dict[str, list] = {}
    jobs = []  # (task, index, record without prediction, prompt tokens)
    for name, (examples, texts) in task_prompts(loaded, chat_format, eval_config).items():
        scorer = loaded[name][1]
        report = prompt_report.setdefault(name, {}) if prompt_report is not None else None
        tokens = chat_format.encode_prompts(texts, add_bos=protocol.adds_bos,
                                            max_position=getattr(config, "max_position", 0),
                                            max_new_tokens=eval_config.max_new_tokens, label=name, report=report)
        done = store.finished(name) if store is not None else {}
        records[name] = [None] * len(examples)
        for i, ex in enumerate(examples):
            base = {"task": name, "scorer": scorer, "_instance_id": ex.get("_instance_id", f"{name}:{i}"),
                    "output": ex["output"], **({"input": ex["input"]} if scorer in JUDGE_SCORERS else {})}
            if base["_instance_id"] in done:
                records[name][i] = done.pop(base["_instance_id"])
            else:
                jobs.append((name, i, base, tokens[i]))
        if done:  # an earlier run decoded more (a larger MAX_EXAMPLES): a rerun never shrinks the file or its scores
            records[name].extend(done.values())
            print(f"[eval] {name}: {store.dir} holds {len(done)} prediction(s) of an earlier run beyond the "
                  f"{len(examples)} asked for (MAX_EXAMPLES={eval_config.max_examples}): kept and scored with them; "
                  "pass another OUTPUT_DIR to score only those", flush=True)
    resumed = sum(len(rows) for rows in records.values()) - len(jobs)
    left = {name: sum(r is None for r in rows) for name, rows in records.items()}
    if resumed:
        print(f"[eval] resuming: {resumed} prediction(s) already in {store.dir} are kept; decoding {len(jobs)}", flush=True)

    def complete(name):
        if store is not None:
            path = store.complete(name, records[name])
            print(f"[eval] {name}: wrote {len(records[name])} predictions to {path}", flush=True)

    for name, n in left.items():
        if n == 0:
            complete(name)
    # A task list's name is every task's: the line names how many instead.
    label = label if label and "," not in label else f"{len(loaded)} task(s)"
    progress = Progress(len(jobs), label, resumed=resumed,
                        work_total=(sum(len(job[3]) for job in jobs), eval_config.max_new_tokens * len(jobs)))

    def on_finish(j, tokens):
        name, i, base, _ = jobs[j]
        records[name][i] = {**base, "prediction": protocol.cut(chat_format.decode(tokens), base["scorer"])}
        if store is not None:
            store.add(name, records[name][i])
        left[name] -= 1
        if left[name] == 0:
            complete(name)
        progress.update(len(tokens), tasks_done=sum(n == 0 for n in left.values()))

    constraint = task_constraint(config, chat_format, [job[0] for job in jobs]) if eval_config.constrained else None
    generate(config, params, [job[3] for job in jobs],
             GenerationConfig(eval_config.max_new_tokens, chat_format.eos_id, constraint=constraint,
                              speculate=eval_config.speculate),
             batch_size=eval_config.batch_size, sharding=sharding, kv_cache_bytes=eval_config.kv_cache_bytes,
             hooks=DecodeHooks(on_finish=on_finish, on_step=progress.step))
    return records


def task_constraint(config, chat_format: ChatFormat, tasks: list[str]) -> constrain.Constraint:
    """Each prompt's answer constrained to its task's JSON schema (`scoring.schemas.schema_for`; free text: none)."""
    return constrain.Constraint.create(chat_format.vocabulary, [schema_for(t) for t in tasks],
                                       vocab_size=config.vocab_size, eos_id=chat_format.eos_id)


def constraint_record(eval_config: EvalConfig, task_names: list[str]) -> dict:
    """What summary.json says of constrained decoding: on or off, and when on the library and which tasks had a
    schema (the others decoded free)."""
    if not eval_config.constrained:
        return {"on": False}
    return {"on": True, "library": constrain.library_version(),
            "schema_tasks": [t for t in task_names if schema_for(t) is not None],
            "free_tasks": [t for t in task_names if schema_for(t) is None]}


def params_digest(params) -> str:
    """A short fingerprint of the weights (a slice of every leaf), so resumed predictions come from the same model."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.asarray(jax.device_get(leaf.reshape(-1)[:64]), np.float32).tobytes())
    return h.hexdigest()[:16]


def score_records(records: dict, scorers: dict, *, judge=None) -> dict:
    """Score {task: records}; returns per-task results, the table row, its mean and the pooled JSON parse rate."""
    results = {name: {**metrics.score(scorers[name], rows, judge=judge), "task": name} for name, rows in records.items()}
    row = metrics.table_row(results)
    parsed = [r for r in results.values() if r.get("parse")]
    total = sum(r["n"] for r in parsed)
    rate = sum(r["parse"]["valid_json"] + r["parse"]["extract_success"] for r in parsed) / total if total else None
    return {"tasks": results, "table": row, "mean": metrics.table_mean(row), "json_parse_rate": rate}


def evaluate_tasks(config, params, task_names: list[str], chat_format: ChatFormat, *,
                   eval_config: EvalConfig = EvalConfig(), judge=None, output_dir=None,
                   sharding: Sharding | None = None, settings: dict | None = None) -> dict:
    """Decode and score tasks: per-task metrics + parse counts + the table mean; writes outputs to output_dir."""
    loaded = load_examples(task_names, eval_config.split)  # the whole split: the few-shot pool
    cuts: dict = {}
    records = predict_tasks(config, params, loaded, chat_format, eval_config=eval_config, sharding=sharding,
                            output_dir=output_dir, settings=settings, label=eval_config.mixture_or_task_name or "",
                            prompt_report=cuts)
    summary = score_records(records, {name: scorer for name, (_, scorer) in loaded.items()}, judge=judge)
    summary["mixture_or_task_name"] = eval_config.mixture_or_task_name  # a task list's text in full
    summary["protocol"] = Protocol(eval_config.protocol).describe()
    summary["prompts"] = prompt_summary(config, eval_config, cuts)
    summary["judge"] = {"protocol": getattr(judge, "protocol", "lenient")} if judge is not None else None
    summary["constrained"] = constraint_record(eval_config, list(loaded))
    summary["speculate"] = eval_config.speculate  # draft tokens per verify step (0: plain greedy)
    if settings:
        summary["settings"] = settings  # e.g. which checkpoint, tokenizer and template
    if output_dir is not None:
        write_summary(summary, output_dir)
    return summary


def prompt_summary(config, eval_config: EvalConfig, cuts: dict) -> dict:
    """The prompt budget (the checkpoint's own context, max_position, less max_new_tokens) and, per task, how many
    prompts were cut from the left and by how many tokens; says it on the log when any were."""
    max_position = getattr(config, "max_position", 0) or None
    budget = max_position - eval_config.max_new_tokens if max_position else None
    tasks = {name: {k: v for k, v in report.items() if k != "budget"} for name, report in cuts.items()}
    n_cut = sum(t.get("n_cut", 0) for t in tasks.values())
    if n_cut:
        print(f"[eval] {n_cut} of {sum(t.get('n', 0) for t in tasks.values())} prompt(s) were cut from the left to "
              f"the budget of {budget} tokens (the model's max_position {max_position} - max_new_tokens "
              f"{eval_config.max_new_tokens}); per task in summary.json 'prompts'", flush=True)
    return {"max_position": max_position, "max_new_tokens": eval_config.max_new_tokens, "budget": budget,
            "n_cut": n_cut, "tasks": tasks}


def write_summary(summary: dict, output_dir) -> None:
    """summary.json (everything) and summary.md (the headline table, x100, with parse rates)."""
    out = paths.resolve(output_dir)
    with writes.naming(out):
        out.mkdir(parents=True, exist_ok=True)
    # Each whole or not at all (temporary file + rename): a failed write (disk full) leaves the earlier one.
    writes.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    writes.write_text(out / "summary.md", summary_markdown(summary))
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


def make_eval_hook(eval_config: EvalConfig, *, config, chat_format: ChatFormat, sharding: Sharding | None = None,
                   output_dir=None) -> Callable[[object, int], dict]:
    """An eval callback for the training loop: `hook(params, step) -> flat metrics` (examples loaded once).
    `chat_format`: the run's; EvalConfig.template, when not "auto", prompts with another template."""
    check_max_new_tokens(getattr(config, "max_position", 0), eval_config.max_new_tokens,
                         "infer_eval/EvalConfig.max_new_tokens", "the trained model")
    names = task_names_of(eval_config.mixture_or_task_name)
    loaded = load_examples(names, eval_config.split)  # the whole split: the few-shot pool; max_examples decoded
    scorers = {name: scorer for name, (_, scorer) in loaded.items()}

    def hook(params, step: int) -> dict:
        step_dir = None if output_dir is None else paths.resolve(output_dir) / f"step_{step}"
        records = predict_tasks(config, params, loaded, chat_format, eval_config=eval_config, sharding=sharding,
                                output_dir=step_dir, settings={"step": step},
                                label=f"{eval_config.mixture_or_task_name} step {step}")
        summary = score_records(records, scorers)
        if step_dir is not None:
            write_summary(summary, step_dir)
        return flat_metrics(summary)

    return hook


# ----------------------------------------------------------------------------- gin-configured runs


def load_checkpoint(checkpoint_path: str, vocabulary_path: str | None, dtype: str, eval_config: EvalConfig,
          mesh: MeshConfig | None):
    """(loaded model, sharding or None) with params placed on the mesh when one is configured."""
    if not paths.resolve(checkpoint_path).exists():
        raise FileNotFoundError(f"CHECKPOINT_PATH {checkpoint_path!r} does not exist; pass an Orbax checkpoint "
                                "(MODEL_DIR or a step directory) or a Hugging Face model directory")
    config = loader.load_config(checkpoint_path)
    check_max_new_tokens(config.max_position, eval_config.max_new_tokens, where=str(checkpoint_path))
    sharding = None
    if mesh is not None and mesh.layout is not None:
        sharding = Sharding.create(config, mesh).for_decoding()
    model = loader.load(checkpoint_path, dtype=dtype, vocabulary_path=vocabulary_path, template=eval_config.template,
                        shardings=sharding.params if sharding is not None else None)
    if sharding is not None:
        print(f"[eval] params sharded over mesh {dict(sharding.mesh.shape)} ({mesh.layout})", flush=True)
    print(f"[eval] tokenizer: {model.chat_format.describe()}", flush=True)
    print(f"[eval] params in {model.config.param_dtype}, compute in {model.config.dtype} (DTYPE={dtype!r})", flush=True)
    return model, sharding


def default_output_dir(checkpoint_path: str, mixture_or_task_name: str):
    """MODEL_DIR/eval/<mixture> for a training run's MODEL_DIR (as t5x keeps inference beside the run), else ./sciriff_eval."""
    path = paths.resolve(checkpoint_path)
    folder = list_folder_name(mixture_or_task_name)
    if (path / "checkpoints").is_dir():
        return path / "eval" / folder
    return paths.resolve("sciriff_eval") / path.name / folder


def list_folder_name(mixture_or_task_name: str) -> str:
    """A folder name for a mixture, task or task list: a list ('a,b:2') is `tasks_<its first task>_and_<N-1>_<hash>`
    (the whole list is in summary.json), never its text with commas and colons."""
    if "," not in mixture_or_task_name and ":" not in mixture_or_task_name:
        return mixture_or_task_name
    items = [item.split(":")[0].strip() for item in mixture_or_task_name.split(",") if item.strip()]
    digest = hashlib.sha256(mixture_or_task_name.encode()).hexdigest()[:8]
    return f"tasks_{items[0]}_and_{len(items) - 1}_{digest}"


def evaluate_run(*, checkpoint_path: str, eval_config: EvalConfig = EvalConfig(), output_dir: str | None = None,
                 vocabulary_path: str | None = None, dtype: str = "auto", mesh: MeshConfig | None = None,
                 judge_url: str | None = None, judge_model: str | None = None,
                 judge_protocol: str | None = None) -> dict:
    """The `eval` mode: load a checkpoint (Orbax or Hugging Face), decode the tasks, score, write the table.
    `judge_protocol`: the judge's (scoring.judge.JUDGE_PROTOCOLS); None: SCIRIFF_JUDGE_PROTOCOL, else "release"."""
    name = eval_config.mixture_or_task_name
    out = paths.resolve(output_dir) if output_dir else default_output_dir(checkpoint_path, name)
    names = task_names_of(name)
    if eval_config.constrained:
        constrain.library("CONSTRAINED = True (runs/decode.gin)")  # before any loading: fail fast when missing
    judge = judge_lib.judge_from_env(judge_url, judge_model, protocol=judge_protocol)
    print(f"[eval] {name}: {len(names)} task(s), split {eval_config.split}, max_examples={eval_config.max_examples}, "
          f"judge={'none (judge metrics skipped)' if judge is None else judge}; writing to {out}", flush=True)
    model, sharding = load_checkpoint(checkpoint_path, vocabulary_path, dtype, eval_config, mesh)
    fmt = model.chat_format  # "auto" resolved by the loader: the checkpoint's own
    with sharding.context() if sharding is not None else contextlib.nullcontext():
        summary = evaluate_tasks(model.config, model.params, names, fmt, eval_config=eval_config,
                                 judge=judge, output_dir=out, sharding=sharding,
                                 settings={"checkpoint": str(checkpoint_path), "dtype": model.config.param_dtype,
                                           "compute_dtype": model.config.dtype,
                                           "tokenizer": fmt.describe()})
    print(summary_markdown(summary), flush=True)
    return summary


def infer_run(*, checkpoint_path: str, eval_config: EvalConfig = EvalConfig(), output_dir: str | None = None,
              vocabulary_path: str | None = None, dtype: str = "auto", mesh: MeshConfig | None = None) -> dict:
    """The `infer` mode: decode and write predictions/<task>.jsonl only (score them later with `sciriff-jax score`)."""
    name = eval_config.mixture_or_task_name
    out = paths.resolve(output_dir) if output_dir else default_output_dir(checkpoint_path, name)
    names = task_names_of(name)
    if eval_config.constrained:
        constrain.library("CONSTRAINED = True (runs/decode.gin)")  # before any loading: fail fast when missing
    model, sharding = load_checkpoint(checkpoint_path, vocabulary_path, dtype, eval_config, mesh)
    loaded = load_examples(names, eval_config.split)  # the whole split: the few-shot pool; max_examples decoded
    with sharding.context() if sharding is not None else contextlib.nullcontext():
        records = predict_tasks(model.config, model.params, loaded, model.chat_format, eval_config=eval_config,
                                output_dir=out, sharding=sharding, label=name,
                                settings={"checkpoint": str(checkpoint_path), "dtype": model.config.param_dtype,
                                           "compute_dtype": model.config.dtype,  # as evaluate_run's,
                                          "tokenizer": model.chat_format.describe()})  # so eval scores these
    return {"output_dir": str(out), "predictions": {name: len(rows) for name, rows in records.items()}}
