"""Useful-work fraction of decoding SciRIFF-Eval: the fixed-batch decoder against the continuous batcher.

Useful work = real prompt tokens + real decode row-steps (one per generated token after the first, which
the prompt's last logits give); computed = prefill token slots (padding included) + decode row-steps of
every row in the batch (finished and idle rows included). Lengths: `benchmarks.sciriff_lengths` (the 4,177
validation instances of the nine tasks, Llama-2 tokens, answers as long as the references). Both figures
are counted from the schedules, call for call (`fixed_batch_work` below replays the rule of the
decoder this replaced, per task as the eval ran it; `decoding.scheduler.simulate` replays the batcher, whose
count `tests/test_decode.py` checks against the real decoder's). No model runs, so the figure is the same
on every device.

  python -m benchmarks.decode_work --out benchmarks/results/decode_work.json
"""
from __future__ import annotations

import pathlib

from benchmarks import common, sciriff_lengths


def fixed_batch_work(lengths: list[int], answer_lengths: list[int], *, batch_size: int,
                     chunk_batches: int = 4, min_bucket: int = 16) -> WorkCount:
    """The work of the fixed-batch decoder this replaced (decode.generate before issue 14), per task.

    Its rule: prompts longest first in chunks of `chunk_batches` batches, sorted ascending within a chunk and
    cut into batches of `batch_size` rows (dummy rows fill a short last batch when there is more than one
    batch), each left-padded to the power-of-two bucket of its longest prompt (at least 16); every row steps
    until the whole batch has finished.
    """
    from sciriff_jax.decoding.scheduler import WorkCount

    work = WorkCount()
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    per_chunk = batch_size * chunk_batches
    for lo in range(0, len(order), per_chunk):
        chunk = sorted(order[lo:lo + per_chunk], key=lambda i: lengths[i])
        for blo in range(0, len(chunk), batch_size):
            idx = chunk[blo:blo + batch_size]
            rows = batch_size if len(chunk) > batch_size else len(idx)
            bucket = max(min_bucket, 1 << max(0, max(lengths[i] for i in idx) - 1).bit_length())
            steps = max(answer_lengths[i] for i in idx) - 1
            work.prefill_calls += 1
            work.prefill_computed += rows * bucket
            work.prompt_tokens += sum(lengths[i] for i in idx)
            work.decode_calls += 1
            work.decode_computed += rows * steps
            work.decode_real += sum(answer_lengths[i] - 1 for i in idx)
            work.generated += sum(answer_lengths[i] for i in idx)
    return work


def rows_for(lengths: dict, batch_sizes, *, page_size: int, chunk: int, chunk_step: int, steps_per_call: int) -> list:
    """One row per batch size: the fixed-batch and continuous useful-work fractions and their counts."""
    from sciriff_jax.decoding import scheduler

    prompts = [n for t in lengths.values() for n in t["prompt"]]
    answers = [n for t in lengths.values() for n in t["answer"]]
    rows = []
    for b in batch_sizes:
        fixed = scheduler.WorkCount()
        for t in lengths.values():  # the old eval decoded task by task
            w = fixed_batch_work(t["prompt"], t["answer"], batch_size=b)
            for k in ("prompt_tokens", "prefill_computed", "decode_real", "decode_computed", "generated",
                      "prefill_calls", "decode_calls"):
                setattr(fixed, k, getattr(fixed, k) + getattr(w, k))
        needs = [p + a for p, a in zip(prompts, answers)]
        # Memory is not the limit here: the pool holds the `b` longest sequences at once (kv_memory's plan).
        pages = 1 + sum(sorted((scheduler.pages_for(n, page_size) for n in needs), reverse=True)[:b])
        cont = scheduler.simulate(prompts, answers, slots=b, page_size=page_size, num_pages=pages, chunk=chunk,
                                  chunk_step=chunk_step, steps_per_call=steps_per_call)
        rows.append({"batch": b, "instances": len(prompts), "fixed_useful": fixed.useful_fraction,
                     "continuous_useful": cont.useful_fraction,
                     "fixed_prefill_computed": fixed.prefill_computed, "fixed_decode_computed": fixed.decode_computed,
                     "continuous_prefill_computed": cont.prefill_computed,
                     "continuous_decode_computed": cont.decode_computed,
                     "prompt_tokens": cont.prompt_tokens, "decode_real": cont.decode_real,
                     "continuous_decode_calls": cont.decode_calls, "continuous_prefill_calls": cont.prefill_calls,
                     "fixed": fixed.as_dict(), "continuous": cont.as_dict()})
    return rows


def main(argv=None) -> dict:
    """Count both schedules on the SciRIFF-Eval lengths; returns the JSON payload."""
    from sciriff_jax.decoding import batcher

    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(sciriff_lengths.SHARED), help="folder with tasks.tsv and eval_sample/")
    p.add_argument("--batches", default="8,16,32,64", help="batch sizes (slots) to count")
    p.add_argument("--max-new", type=int, default=1024)
    args = p.parse_args(argv)
    lengths = sciriff_lengths.eval_lengths(pathlib.Path(args.shared), max_new=args.max_new)
    batches = [int(b) for b in args.batches.split(",")]
    if args.tiny:
        lengths = {t: {k: v[:20] if isinstance(v, list) else v for k, v in d.items()} for t, d in lengths.items()}
    rows = rows_for(lengths, batches, page_size=batcher.PAGE_SIZE, chunk=batcher.CHUNK, chunk_step=batcher.CHUNK_STEP,
                    steps_per_call=batcher.STEPS_PER_CALL)
    tasks = {t: {"n": len(d["prompt"]), "source": d["source"], "mean_prompt": sum(d["prompt"]) / len(d["prompt"]),
                 "mean_answer": sum(d["answer"]) / len(d["answer"])} for t, d in lengths.items()}
    cols = ["batch", "instances", "fixed_useful", "continuous_useful", "fixed_prefill_computed",
            "continuous_prefill_computed", "fixed_decode_computed", "continuous_decode_computed", "prompt_tokens",
            "decode_real"]
    return common.report("decoding useful-work fraction (SciRIFF-Eval lengths)", args,
                         [{k: v for k, v in r.items()} for r in rows], cols,
                         extra={"tasks": tasks, "settings": {"page_size": batcher.PAGE_SIZE, "chunk": batcher.CHUNK,
                                                             "chunk_step": batcher.CHUNK_STEP,
                                                             "steps_per_call": batcher.STEPS_PER_CALL}})


if __name__ == "__main__":
    main()
