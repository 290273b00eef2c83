"""`sciriff-jax report MODEL_DIR`: a run as pictures a user can open or paste, and one page that shows them.

Reads what every run writes (metrics.jsonl, train_summary.json, operative_config.gin, the decoding evals'
eval/step_<N>/summary.json and the eval mode's eval/<mixture>/summary.json) and writes MODEL_DIR/report/:
loss.png, learning_rate.png, grad_norm.png, tokens_per_s.png (over steps; the teacher-forced eval loss on the loss
plot), overview.png (the four together), decode_eval.png (each decoding eval's table over steps, and the JSON parse
rates) and index.html (the pictures, the run's summary, the eval tables and its config). A finished training run
writes it too (run/main.py); nothing here changes the run's records.
"""
from __future__ import annotations

import argparse
import dataclasses
import html
import io
import json
import math
import re
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sciriff_jax.io import paths, writes
from sciriff_jax.train.run_log import read_metrics

REPORT_DIR = "report"
TRAIN_PLOTS = {"loss": "loss", "learning_rate": "learning rate", "grad_norm": "gradient norm (before clipping)",
               "tokens_per_s": "tokens / s"}
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclasses.dataclass
class RunRecords:
    """What a MODEL_DIR holds that the report shows (each part empty where the run wrote none)."""

    model_dir: str
    train: list[dict]            # metrics.jsonl training records (with "loss")
    evals: list[dict]            # metrics.jsonl eval records (keys "eval/...")
    decode_steps: dict[int, dict]  # step -> the decoding eval's summary.json during training
    final_evals: dict[str, dict]   # eval/<name> -> summary.json of an eval run into MODEL_DIR
    summary: dict                # train_summary.json
    config: str                  # operative_config.gin


def read_run(model_dir) -> RunRecords:
    """The records of a run; a MODEL_DIR without metrics.jsonl or train_summary.json stops, naming it."""
    root = paths.resolve(model_dir)
    if not (root / "metrics.jsonl").exists() and not (root / "train_summary.json").exists():
        raise FileNotFoundError(f"{root}: no metrics.jsonl or train_summary.json; `sciriff-jax report` takes the "
                                "MODEL_DIR of a training run")
    records = read_metrics(root) if (root / "metrics.jsonl").exists() else []
    decode_steps, final_evals = {}, {}
    if (root / "eval").is_dir():
        for sub in sorted((root / "eval").iterdir()):
            if (sub / "summary.json").exists():
                found = _STEP_DIR.match(sub.name)
                target = decode_steps if found else final_evals
                target[int(found[1]) if found else sub.name] = json.loads((sub / "summary.json").read_text())
    return RunRecords(str(root), [r for r in records if "loss" in r], [r for r in records if _is_eval(r)],
                      dict(sorted(decode_steps.items())), final_evals, _read_json(root / "train_summary.json"),
                      (root / "operative_config.gin").read_text() if (root / "operative_config.gin").exists() else "")


def _is_eval(record: dict) -> bool:
    return any(k.startswith("eval/") for k in record)


def _read_json(path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if "step" in r and _finite(r.get(key))]
    return [p[0] for p in points], [p[1] for p in points]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _train_axes(ax, run: RunRecords, key: str) -> bool:
    """Draw one training metric over steps on `ax`; False when the run logged none of it."""
    steps, values = _series(run.train, key)
    if not steps:
        return False
    ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label="train")
    if key == "loss":
        eval_steps, eval_values = _series(run.evals, "eval/loss")
        if eval_steps:
            ax.plot(eval_steps, eval_values, marker="s", markersize=4, label="eval (teacher-forced)")
            ax.legend(fontsize=8)
    ax.set_title(TRAIN_PLOTS[key], fontsize=10)
    _step_axis(ax)
    return True


def _step_axis(ax) -> None:
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


def train_plots(run: RunRecords) -> dict[str, bytes]:
    """{file name: PNG} of each training metric the run logged, and overview.png: all of them, and the decoding
    evals' scores and parse rates over steps where the run has any."""
    out = {}
    for key in TRAIN_PLOTS:
        fig = Figure(figsize=(5, 3.2), layout="constrained")
        if _train_axes(fig.add_subplot(), run, key):
            out[f"{key}.png"] = _png(fig)
    if out:
        scores, parse = eval_table_over_steps(run)
        cols = 3 if scores or parse else 2
        fig = Figure(figsize=(4.5 * cols, 6), layout="constrained")
        fig.suptitle(f"{paths.resolve(run.model_dir).name}: {len(run.train)} logged steps", fontsize=11)
        for i, key in enumerate(TRAIN_PLOTS):
            _train_axes(fig.add_subplot(2, cols, i + 1 + (i >= 2) * (cols - 2)), run, key)
        if cols == 3:
            _eval_axes(fig.add_subplot(2, 3, 3), scores, "decoding eval: score", legend=False)
            _eval_axes(fig.add_subplot(2, 3, 6), parse, "decoding eval: JSON parse rate", legend=False)
        out["overview.png"] = _png(fig)
    return out


def eval_table_over_steps(run: RunRecords) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    """({task/metric: {step: score}}, {task: {step: JSON parse rate}}) of the decoding evals during training, and of
    the evals into MODEL_DIR after it (at the run's final step, where no eval during training has that step)."""
    scores: dict[str, dict[int, float]] = {}
    parse: dict[str, dict[int, float]] = {}
    final_step = run.summary.get("final_step")
    after = [(final_step, s) for s in run.final_evals.values()] if final_step not in (None, *run.decode_steps) else []
    for step, summary in [*run.decode_steps.items(), *after]:
        for key, value in (summary.get("table") or {}).items():
            if _finite(value):
                scores.setdefault(key, {})[step] = value
        for task, result in (summary.get("tasks") or {}).items():
            if _finite(result.get("json_parse_rate")):
                parse.setdefault(task, {})[step] = result["json_parse_rate"]
    return scores, parse


def decode_eval_plot(run: RunRecords) -> bytes | None:
    """decode_eval.png: each table entry over steps (left) and each task's JSON parse rate (right); None without
    decoding evals."""
    scores, parse = eval_table_over_steps(run)
    if not scores and not parse:
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    _eval_axes(fig.add_subplot(1, 2, 1), scores, "decoding eval: score (task/metric)")
    _eval_axes(fig.add_subplot(1, 2, 2), parse, "decoding eval: JSON parse rate")
    return _png(fig)


def _eval_axes(ax, data: dict[str, dict[int, float]], title: str, legend: bool = True) -> None:
    for name, by_step in sorted(data.items()):
        points = sorted(by_step.items())
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4, label=name)
    ax.set_title(title, fontsize=10)
    _step_axis(ax)
    if all(0 <= v <= 1 for by_step in data.values() for v in by_step.values()):
        ax.set_ylim(-0.05, 1.05)
    if data and legend:
        ax.legend(fontsize=6, loc="best")


def write_report(model_dir) -> str:
    """Write MODEL_DIR/report/ (the PNGs and index.html); returns the page's path."""
    run = read_run(model_dir)
    out = paths.resolve(run.model_dir) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    images = train_plots(run)
    decode = decode_eval_plot(run)
    if decode is not None:
        images["decode_eval.png"] = decode
    for name, data in images.items():
        with writes.naming(out / name):
            (out / name).write_bytes(data)
    page = out / "index.html"
    writes.write_text(page, render_html(run, [n for n in images if n != "overview.png"]))
    return str(page)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def eval_rows(summary: dict) -> list[tuple]:
    """(task, metric, score, n, JSON parse rate) rows of an eval summary.json."""
    rows = []
    for task, result in sorted((summary.get("tasks") or {}).items()):
        for metric, score in (result.get("headline") or {}).items():
            rows.append((task, metric, score, result.get("n"), result.get("json_parse_rate")))
    rows.append(("mean", "", summary.get("mean"), None, summary.get("json_parse_rate")))
    return rows


def _summary_rows(summary: dict) -> list[tuple]:
    return [(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in summary.items()
            if k not in ("losses", "evals", "earlier_runs")]


def render_html(run: RunRecords, images: Sequence[str]) -> str:
    """The report page: pictures, the run's summary, each eval's table and the operative config."""
    name = html.escape(paths.resolve(run.model_dir).name)
    parts = [f"<h1>Run {name}</h1>", f"<p>MODEL_DIR: <code>{html.escape(run.model_dir)}</code></p>"]
    parts += [f'<figure><img src="{html.escape(img)}" alt="{html.escape(img[:-4])}"></figure>' for img in images]
    if run.summary:
        parts += ["<h2>Summary (train_summary.json)</h2>", _table(("field", "value"), _summary_rows(run.summary))]
    header = ("task", "metric", "score", "n", "JSON parse rate")
    for step, summary in run.decode_steps.items():
        parts += [f"<h2>Decoding eval at step {step}</h2>", _table(header, eval_rows(summary))]
    for eval_name, summary in run.final_evals.items():
        parts += [f"<h2>Eval {html.escape(eval_name)}</h2>", _table(header, eval_rows(summary))]
    if run.config:
        parts += ["<h2>Config (operative_config.gin)</h2>", f"<pre>{html.escape(run.config)}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
             "pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sciriff-jax run {name}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def main(argv: Sequence[str]) -> int:
    """`sciriff-jax report MODEL_DIR`: write the report and print where it is."""
    parser = argparse.ArgumentParser(prog="sciriff-jax report", description="Plots and one HTML page of a run: "
                                     "loss, learning rate, grad norm, tokens/s, decoding evals over steps.")
    parser.add_argument("model_dir", help="the MODEL_DIR of a training run (local or URL)")
    args = parser.parse_args(list(argv))
    print(f"wrote {write_report(args.model_dir)}")
    return 0
