"""`sciriff-jax score`: SciRIFF-Eval metrics for predictions that came from any model (no JAX needed)."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

# metrics and judge are pure Python: scoring works on a machine without TensorFlow or JAX.
from sciriff_jax.eval import judge as judge_lib
from sciriff_jax.eval import metrics
from sciriff_jax.io import jsonl


class PredictionFileError(ValueError):
    """A predictions file line that cannot be scored; the message names file:line."""


def read_predictions(path: str | pathlib.Path, *, need_task: bool = False) -> list[dict]:
    """Read a JSONL file of {_instance_id, output, prediction[, task, scorer, input]} lines; errors name file:line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PredictionFileError(f"{path}: no such predictions file")
    rows = []
    for lineno, row in jsonl.read_objects(path, error=PredictionFileError):
        needed = ["output", "prediction"] + (["task"] if need_task else [])
        missing = [k for k in needed if k not in row]
        if missing:
            hint = " (or pass --task TASK)" if missing == ["task"] else ""
            raise PredictionFileError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}{hint}; each line needs "
                                      "'output' (the reference) and 'prediction' (the model's raw text)")
        if not isinstance(row["prediction"], str) and row["prediction"] is not None:
            raise PredictionFileError(f"{path}:{lineno}: 'prediction' must be the model's raw text (a string)")
        row["_source"] = f"{path}:{lineno}"
        rows.append(row)
    if not rows:
        raise PredictionFileError(f"{path}: no predictions in the file")
    return rows


def score_file(path, task: str | None = None, judge=None) -> dict:
    """Score one predictions file: a single task's metrics, or (no task) per-task metrics + table + mean."""
    rows = read_predictions(path, need_task=task is None)
    if task is not None:
        return metrics.score(task, rows, judge=judge)
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    # Eval runs write each line's scorer; else the task name picks it (metrics.resolve_scorer).
    results = {name: {**metrics.score(group[0].get("scorer") or name, group, judge=judge), "task": name}
               for name, group in by_task.items()}
    row = metrics.table_row(results)
    return {"tasks": results, "table": row, "mean": metrics.table_mean(row)}


def metrics_path(predictions_path) -> pathlib.Path:
    """FILE.jsonl -> FILE.metrics.json, next to the predictions."""
    path = pathlib.Path(predictions_path)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(stem + ".metrics.json")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `sciriff-jax score`; prints the metrics as one JSON object on stdout."""
    parser = argparse.ArgumentParser(
        prog="sciriff-jax score",
        description="Score predictions with the SciRIFF-Eval metrics. Each JSONL line has _instance_id, output "
        "(the reference answer) and prediction (the model's raw text); 'input' is used by the LM judge.")
    parser.add_argument("--task", help=f"task or scorer ({', '.join(metrics.TASKS)}); omit when lines carry a 'task' field")
    parser.add_argument("--predictions", required=True, help="JSONL file of predictions")
    parser.add_argument("--judge_url", help="OpenAI-compatible server for LM-judge metrics (env SCIRIFF_JUDGE_URL)")
    parser.add_argument("--judge_model", help="judge model name (env SCIRIFF_JUDGE_MODEL)")
    parser.add_argument("--judge_api_key", help="judge API key (env SCIRIFF_JUDGE_API_KEY; prefer the env var)")
    parser.add_argument("--output", help="where to write the metrics JSON (default: FILE.metrics.json next to the file)")
    args = parser.parse_args(argv)
    try:
        judge = judge_lib.judge_from_env(args.judge_url, args.judge_model, args.judge_api_key)
        result = score_file(args.predictions, args.task, judge=judge)
    except (PredictionFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.output) if args.output else metrics_path(args.predictions)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result), flush=True)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
