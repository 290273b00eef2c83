"""`sciriff-jax score`: SciRIFF-Eval metrics for predictions that came from any model (no JAX needed)."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence


# metrics and judge are pure Python: scoring works on a machine without TensorFlow or JAX.
from sciriff_jax.scoring import judge as judge_lib
from sciriff_jax.scoring import metrics
from sciriff_jax.scoring import jsonl


class PredictionFileError(ValueError):
    """A predictions file line that cannot be scored; the message names file:line."""


# Field -> what it must be. Every other field is ignored.
_STRING_FIELDS = {"_instance_id": "the SciRIFF instance id, 'task:split:index'", "output": "the reference answer text",
                  "input": "the prompt text", "task": "a task name", "scorer": "a scorer name"}


def read_predictions(path: str | pathlib.Path, *, need_task: bool = False) -> list[dict]:
    """Read a JSONL file of {_instance_id, output, prediction[, task, scorer, input]} lines; errors name file:line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PredictionFileError(f"{path}: no such predictions file")
    rows = []
    for lineno, row in jsonl.read_objects(path, error=PredictionFileError):
        needed = ["_instance_id", "output", "prediction"] + (["task"] if need_task else [])
        missing = [k for k in needed if k not in row]
        if missing:
            hint = " (or pass --task TASK)" if missing == ["task"] else ""
            raise PredictionFileError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}{hint}; each line needs "
                                      "'_instance_id', 'output' (the reference) and 'prediction' (the model's raw text)")
        if not isinstance(row["prediction"], str) and row["prediction"] is not None:
            raise PredictionFileError(f"{path}:{lineno}: 'prediction' must be the model's raw text (a string), not "
                                      f"{type(row['prediction']).__name__}")
        for key, what in _STRING_FIELDS.items():
            if key in row and not isinstance(row[key], str):
                raise PredictionFileError(f"{path}:{lineno}: '{key}' must be a string ({what}), not "
                                          f"{type(row[key]).__name__}")
        row["_source"] = f"{path}:{lineno}"
        rows.append(row)
    if not rows:
        raise PredictionFileError(f"{path}: no predictions in the file")
    return rows


def id_task(instance_id: str) -> str:
    """The task an `_instance_id` names: SciRIFF ids are `task:split:index`."""
    return instance_id.split(":", 1)[0]


def _belongs(instance_task: str, task: str) -> bool:
    # A registered name ends with the release task's (sciriff_4096_scierc_ner, sciriff_sample_ner).
    return task == instance_task or task.endswith("_" + instance_task)


def check_ids(task: str, rows: list[dict], references: dict | None = None) -> None:
    """Every id names `task` (or, for a generic scorer, one same task), none repeats, and each is in `references`."""
    generic = task in metrics.SCORERS and task not in metrics.EVAL_SCORERS  # label_f1 / token_f1: any one task
    first: dict[str, str] = {}
    for row in rows:
        iid, where = row["_instance_id"], row["_source"]
        owner = id_task(iid)
        if generic:
            expected = id_task(rows[0]["_instance_id"])
            if owner != expected:
                raise PredictionFileError(f"{where}: instance {iid!r} is from task {owner!r}, but this file's first "
                                          f"line is from {expected!r}; score one task per {task} scorer")
        elif not _belongs(owner, task):
            raise PredictionFileError(f"{where}: instance {iid!r} is not from task {task!r} (its id names {owner!r}); "
                                      "pass the --task the predictions are for")
        if iid in first:
            raise PredictionFileError(f"{where}: duplicate instance {iid!r} (also at {first[iid]}); each instance must "
                                      "be predicted once")
        first[iid] = where
        if references is not None:
            if iid not in references:
                raise PredictionFileError(f"{where}: instance {iid!r} is not in the references "
                                          f"({references[_SOURCE]})")
            if row.get("output") is not None and row["output"] != references[iid]:
                raise PredictionFileError(f"{where}: 'output' of {iid!r} differs from the reference in "
                                          f"{references[_SOURCE]}")


_SOURCE = object()  # key of the references file's name inside a references dict


def read_references(path) -> dict:
    """{_instance_id: output} of a release split file (.jsonl or .parquet) to check predictions against."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PredictionFileError(f"{path}: no such references file")
    refs: dict = {_SOURCE: str(path)}
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # pyarrow: ~0.4 s, only for .parquet references (not `score --help`)

            table = pq.read_table(path, columns=["_instance_id", "output"])
        except Exception as err:  # pyarrow raises several types for a file it cannot read
            raise PredictionFileError(f"{path}: not a parquet file with _instance_id and output columns ({err})") \
                from None
        rows = enumerate(table.to_pylist(), start=1)
    else:
        rows = jsonl.read_objects(path, error=PredictionFileError)
    for lineno, row in rows:
        iid, output = row.get("_instance_id"), row.get("output")
        if not isinstance(iid, str) or not isinstance(output, str):
            raise PredictionFileError(f"{path}:{lineno}: a reference needs string '_instance_id' and 'output'")
        if iid in refs:
            raise PredictionFileError(f"{path}:{lineno}: duplicate reference {iid!r}")
        refs[iid] = output
    return refs


def score_file(path, task: str | None = None, judge=None, references=None, declared=None) -> dict:
    """Score one predictions file: a single task's metrics, or (no task) per-task metrics + table + mean.

    `declared`: the data layer's {task: scorer} table (e.g. seqio_tasks.sample.SAMPLE_SCORERS), or a function
    returning it, read only for a task name the metrics do not know by themselves (sciriff_sample_ner).

    Instance ids must belong to the task and appear once; with `references` (a release split file) each must be one
    of its instances with the same reference answer, and the count of reference instances without a prediction is
    reported as `n_missing`.
    """
    rows = read_predictions(path, need_task=task is None)
    refs = read_references(references) if references is not None else None
    if task is not None:
        for row in rows:
            if "task" in row and not (_belongs(row["task"], task) or _belongs(task, row["task"])):
                raise PredictionFileError(f"{row['_source']}: the line's task is {row['task']!r} but --task is {task!r}")
        by_task = {task: rows}
    else:
        by_task: dict[str, list[dict]] = {}
        for row in rows:
            by_task.setdefault(row["task"], []).append(row)
    results = {}
    for name, group in by_task.items():
        # Eval runs write each line's scorer; else the task name picks it (metrics.resolve_scorer).
        scorer = name if task is not None else (group[0].get("scorer") or name)
        resolved = _resolve(scorer, group[0], declared)
        check_ids(name, group, refs)
        result = metrics.score(scorer if resolved is None else resolved, group, judge=judge)
        if resolved is not None:
            result["task"] = scorer
        if refs is not None:
            owners = {id_task(r["_instance_id"]) for r in group}
            wanted = [i for i in refs if i is not _SOURCE and id_task(i) in owners]
            result["n_missing"] = len(set(wanted) - {r["_instance_id"] for r in group})
        results[name] = result if task is not None else {**result, "task": name}
    if task is not None:
        return results[task]
    row = metrics.table_row(results)
    return {"tasks": results, "table": row, "mean": metrics.table_mean(row)}


def _resolve(name: str, first_row: dict, declared=None) -> str | None:
    """None when the metrics know `name` themselves; else the scorer the data layer declares for it."""
    try:
        metrics.resolve_scorer(name)
        return None
    except ValueError as err:
        table = declared() if callable(declared) else declared
        try:
            return metrics.resolve_scorer(name, table) if table else None
        except ValueError:
            pass
        raise PredictionFileError(f"{first_row['_source']}: {err}") from None


def metrics_path(predictions_path) -> pathlib.Path:
    """FILE.jsonl -> FILE.metrics.json, next to the predictions."""
    path = pathlib.Path(predictions_path)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(stem + ".metrics.json")


def main(argv: Sequence[str] | None = None, declared=None) -> int:
    """Entry point of `sciriff-jax score`; prints the metrics as one JSON object on stdout. `declared`: as
    score_file's (the CLI passes the sample's scorers, read only when a task name needs them)."""
    parser = argparse.ArgumentParser(
        prog="sciriff-jax score",
        description="Score predictions with the SciRIFF-Eval metrics. Each JSONL line has _instance_id, output "
        "(the reference answer) and prediction (the model's raw text); 'input' is used by the LM judge.")
    parser.add_argument("--task", help=f"task or scorer ({', '.join(metrics.SCORERS)}); omit when lines carry a 'task' field")
    parser.add_argument("--predictions", required=True, help="JSONL file of predictions")
    parser.add_argument("--judge_url", help="OpenAI-compatible server for LM-judge metrics (env SCIRIFF_JUDGE_URL)")
    parser.add_argument("--judge_model", help="judge model name (env SCIRIFF_JUDGE_MODEL)")
    parser.add_argument("--judge_api_key", help="judge API key (env SCIRIFF_JUDGE_API_KEY; prefer the env var)")
    parser.add_argument("--judge_protocol", choices=judge_lib.JUDGE_PROTOCOLS,
                        help="release (default; env SCIRIFF_JUDGE_PROTOCOL): the release's judge prompts, rating "
                        "readings, defaults and MUP sample, exactly; lenient: our earlier variant")
    parser.add_argument("--references", help="the release split file (.jsonl or .parquet) the predictions are for: "
                        "every id must be one of its instances, with the same 'output'")
    parser.add_argument("--output", help="where to write the metrics JSON (default: FILE.metrics.json next to the file)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.output) if args.output else metrics_path(args.predictions)
    inputs = [p for p in (args.predictions, args.references) if p]
    clash = [p for p in inputs if _same_file(out, p)]
    if clash:
        print(f"error: --output {out} is the input file {clash[0]}; writing the metrics there would destroy it. "
              "Choose another --output (or leave it out: FILE.metrics.json).", file=sys.stderr)
        return 2
    problem = output_problem(out)
    if problem:  # before scoring: judge calls cost money, and the scores must have somewhere to go
        print(f"error: --output {out}: {problem}", file=sys.stderr)
        return 2
    try:
        judge = judge_lib.judge_from_env(args.judge_url, args.judge_model, args.judge_api_key,
                                         protocol=args.judge_protocol)
        result = score_file(args.predictions, args.task, judge=judge, references=args.references, declared=declared)
    except (PredictionFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)  # first: a failed write below still leaves the scores on stdout
    for name, res in (result.get("tasks") or {args.task: result}).items():
        verdict = res.get("judge") or {}
        if verdict.get("n_failed"):
            print(f"warning: {name}: {verdict['n_failed']} of {res['n']} judgments failed "
                  f"({verdict.get('n_errors', 0)} judge calls failed, the rest gave no readable rating); the judge "
                  "metric is over the rest", file=sys.stderr)
        if res.get("n_missing"):
            print(f"note: {name}: {res['n_missing']} reference instance(s) have no prediction", file=sys.stderr)
    try:
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    except OSError as err:  # e.g. the disk filled while scoring
        print(f"error: could not write the metrics to {out}: {err.strerror or err} (they are on stdout above)",
              file=sys.stderr)
        return 2
    print(f"wrote {out}", file=sys.stderr)
    return 0


def output_problem(out: pathlib.Path) -> str | None:
    """Why the metrics cannot be written to `out` (a directory, a missing folder, no permission), or None. Tried
    for real (os.access can disagree with what a write meets: ACLs, NFS, root), leaving nothing behind."""
    if out.is_dir():
        return f"is a directory; name a file, e.g. {out / 'FILE.metrics.json'}"
    if not out.parent.is_dir():
        return (f"its folder {out.parent} does not exist" if not out.parent.exists() else
                f"{out.parent} is not a folder") + "; create it or choose another --output"
    existed = out.exists()
    try:
        with open(out, "a", encoding="utf-8"):
            pass
    except OSError as err:
        return f"cannot be written ({err.strerror or err}); choose another --output"
    if not existed:
        out.unlink()
    return None


def _same_file(a, b) -> bool:
    a, b = pathlib.Path(a), pathlib.Path(b)
    if a.exists() and b.exists():
        return a.samefile(b)  # also through links and different spellings of one path
    return a.resolve() == b.resolve()


if __name__ == "__main__":
    sys.exit(main())
