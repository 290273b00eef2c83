"""`sciriff-jax data stats|show`: per-task counts, lengths and fill rate; rendered examples with the loss mask."""
import argparse
import json
import re
import sys
import time

import numpy as np
import seqio

import seqio_tasks  # the package (its __init__ registers the tasks): configure, name_for
from sciriff_jax.chat import render
from sciriff_jax.chat.format import ChatFormat
from seqio_tasks import sources
from seqio_tasks.converter import OVERLONG_POLICIES
from seqio_tasks.datasets import get_dataset, get_provider, raw_examples, resolve_task_name
from seqio_tasks.tasks import SETTINGS, chat_format_of


def _tasks_of(name: str) -> list:
    provider = get_provider(name)
    return list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]


def task_stats(task: seqio.Task, split: str, length: int, max_examples: int | None = None,
               pack_rows: int = 0) -> dict:
    """Instances, tokens, over-long (truncated or dropped per SETTINGS.overlong) and packed fill of one task."""
    ds = task.get_dataset({"inputs": 10**9, "targets": 10**9}, split, shuffle=False)  # untruncated lengths
    if max_examples:
        ds = ds.take(max_examples)
    pairs = np.array([(len(ex["inputs"]), len(ex["targets"])) for ex in ds.as_numpy_iterator()], np.int64)
    prompts, lengths = pairs.reshape(-1, 2)[:, 0], pairs.reshape(-1, 2).sum(axis=1)
    over = int((lengths > length).sum())
    # Truncated, a prompt longer than the row leaves no answer token: the converter drops the row.
    untrained = int((prompts > length).sum()) if SETTINGS.overlong == "truncate_trained" else 0
    kept = {"drop": lengths[lengths <= length], "truncate_trained": lengths[prompts <= length]}.get(SETTINGS.overlong,
                                                                                                   lengths)
    stats = {"task": task.name, "instances": int(len(lengths)), "tokens": int(np.minimum(kept, length).sum()),
             "mean_len": float(lengths.mean()) if len(lengths) else 0.0, "max_len": int(lengths.max(initial=0)),
             "truncated": over - untrained if SETTINGS.overlong != "drop" else 0,
             "dropped": over if SETTINGS.overlong == "drop" else untrained}
    if pack_rows and len(kept):
        stats["fill"] = packed_fill(task.name, split, length, pack_rows)
    release = _RELEASE_TASK.match(task.name)
    if release:  # instances the source skipped for an empty / null output (sources.skip_empty_outputs)
        stats["empty_output"] = sources.empty_outputs(int(release["config"]), split).get(release["task"], 0)
    return stats


_RELEASE_TASK = re.compile(r"^sciriff_(?P<config>\d+)_(?P<task>.+?)(?:_first\d+)?$")


def packed_fill(name: str, split: str, length: int, rows: int) -> float:
    """Fraction of non-padding tokens in the first `rows` packed rows of a task or mixture."""
    ds = get_dataset(name, split, {"targets": length}, batch_size=1, shuffle=False, num_epochs=1)  # what training reads
    seg = [batch["decoder_segment_ids"][0] for batch in ds.take(rows).as_numpy_iterator()]
    return float(np.mean([(s > 0).mean() for s in seg])) if seg else 0.0


def data_stats(mixture: str, split: str = "train", length: int = 4096, max_examples: int | None = None,
               pack_rows: int = 64, out=None, failures: list | None = None) -> list[dict]:
    """Print (and return) per-task instances / tokens / truncated / dropped / packed fill / skipped empty outputs for
    a task or mixture. A task whose data cannot be read is listed as unavailable and appended to `failures`."""
    out = out or sys.stdout  # looked up per call, so a redirected stdout is honoured
    tasks = _tasks_of(mixture)
    rows = []
    header = (f"{'task':<52} {'instances':>9} {'tokens':>11} {'mean':>7} {'max':>7} {'trunc':>6} {'drop':>6} "
              f"{'fill':>6} {'empty':>6}")
    print(f"{mixture} [{split}], length {length}, template {chat_format_of(mixture).template}, "
          f"overlong={SETTINGS.overlong}",
          file=out)
    print(header, file=out)
    start = time.time()
    for i, task in enumerate(tasks):
        try:
            s = task_stats(task, split, length, max_examples, pack_rows)
        except Exception as e:  # the table goes on, but the command fails (main) and names what could not be read
            print(f"{task.name:<52} unavailable: {str(e).splitlines()[0][:160]}", file=out)
            if failures is not None:
                failures.append((task.name, e))
            continue
        rows.append(s)
        fill = f"{s['fill']:.1%}" if "fill" in s else "-"
        empty = f"{s['empty_output']:,}" if "empty_output" in s else "-"
        print(f"{s['task']:<52} {s['instances']:>9,} {s['tokens']:>11,} {s['mean_len']:>7.0f} {s['max_len']:>7,} "
              f"{s['truncated']:>6,} {s['dropped']:>6,} {fill:>6} {empty:>6}", file=out, flush=True)
        if len(tasks) > 5:
            print(f"  ({i + 1}/{len(tasks)} tasks, {time.time() - start:.0f}s)", file=sys.stderr, flush=True)
    total = {k: sum(r[k] for r in rows) for k in ("instances", "tokens", "truncated", "dropped")}
    print(f"{'total':<52} {total['instances']:>9,} {total['tokens']:>11,} {'':>7} {'':>7} "
          f"{total['truncated']:>6,} {total['dropped']:>6,}", file=out)
    return rows


def _piece_text(vocab, token: int) -> str:
    # Piece by piece (decode() of one token drops its leading space); byte pieces become their character.
    if hasattr(vocab, "token_text"):  # a Hugging Face tokenizer.json: byte-level pieces spell spaces Ġ, newlines Ċ
        piece = vocab.token_text(int(token))
        return piece.replace("\u0120", " ").replace("\u010a", "\n").replace("\u2581", " ")
    piece = vocab.tokenizer.id_to_piece(int(token))
    if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
        return bytes([int(piece[3:5], 16)]).decode("latin-1")
    return piece.replace("\u2581", " ")


def format_masked(ids: list[int], mask: list[int], vocab) -> str:
    """Decoded tokens with the trained (loss) spans wrapped in [[...]]; EOS shown as </s>."""
    out, span, cur = [], [], None

    def flush():
        if span:
            text = "".join(_piece_text(vocab, t) if t != vocab.eos_id or hasattr(vocab, "token_text") else "</s>"
                           for t in span)
            out.append(f"[[{text}]]" if cur else text)

    for t, m in zip(ids, mask):
        if m != cur:
            flush()
            span, cur = [], m
        span.append(t)
    flush()
    return "".join(out)


def data_show(task: str, n: int = 3, split: str = "train", template: str | None = None, out=sys.stdout) -> None:
    """Print n rendered instances of a task, the loss-masked (trained) text inside [[...]]."""
    name = resolve_task_name(task)
    fmt = chat_format_of(name)
    if template:
        fmt = ChatFormat(fmt.vocabulary, template)
    vocab = fmt.vocabulary
    for ex in raw_examples(name, split, max_examples=n):
        encoded = fmt.encode_chat(render.single_turn(ex["input"], ex["output"]))
        ids, mask = encoded.ids, encoded.mask
        print(f"=== {ex['_instance_id']}  ({len(ids)} tokens, {sum(mask)} trained; "
              f"metadata {json.loads(ex['metadata']).get('task_family', '?')})", file=out)
        print(format_masked(ids, mask, vocab), file=out)
        print(file=out)


def main(argv: list[str]) -> int:
    """`sciriff-jax data stats MIXTURE | show TASK`: the command-line face of data_stats / data_show."""
    parser = argparse.ArgumentParser(prog="sciriff-jax data", description="Inspect SciRIFF SeqIO tasks and mixtures.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    stats = sub.add_parser("stats", help="per task: instances, tokens, truncated/dropped, packed fill rate")
    stats.add_argument("mixture", help="a task or mixture, e.g. sciriff_sample or sciriff_4096_train")
    stats.add_argument("--split", default="train")
    stats.add_argument("--length", type=int, default=4096, help="tokens per packed row (the training length)")
    stats.add_argument("--max_examples", type=int, default=None, help="read at most this many per task")
    stats.add_argument("--pack_rows", type=int, default=64, help="packed rows read to measure the fill rate")
    show = sub.add_parser("show", help="rendered examples with the trained (loss) text in [[...]]")
    show.add_argument("task", help="a task, e.g. sciriff_sample_ner or sciriff_4096_scierc_ner")
    show.add_argument("-n", type=int, default=3)
    show.add_argument("--split", default="train")
    for p in (stats, show):
        p.add_argument("--template", default=None, help="chat template: tulu (default), llama2, plain")
        p.add_argument("--overlong", default=None, choices=OVERLONG_POLICIES)
        p.add_argument("--data_dir", default=None, help="local SciRIFF release folder (else $SCIRIFF_JAX_DATA_DIR)")
    args = parser.parse_args(argv)
    seqio_tasks.configure(overlong=args.overlong, source_dir=args.data_dir)
    if args.cmd == "stats":
        failures = []
        mixture = args.mixture
        if args.template:  # the same mixture tokenized with another template (a task set of its own)
            fmt = chat_format_of(mixture)
            mixture = seqio_tasks.name_for(mixture, ChatFormat(fmt.vocabulary, args.template))
        data_stats(mixture, args.split, args.length, args.max_examples, args.pack_rows, failures=failures)
        for name, err in failures:
            print(f"error: {name}: {err}", file=sys.stderr)
        return 1 if failures else 0
    else:
        data_show(args.task, args.n, args.split, template=args.template)
    return 0
