"""Useful-work fraction of decoding SciRIFF-Eval: the fixed-batch decoder against the continuous batcher.

Useful work = real prompt tokens + real decode row-steps (one per generated token after the first, which
the prompt's last logits give); computed = prefill token slots (padding included) + decode row-steps of
every row in the batch (finished and idle rows included). Lengths: `benchmarks.sciriff_lengths` (the 4,177
validation instances of the nine tasks, Llama-2 tokens, answers as long as the references). Both figures
are counted from the schedules, call for call (`eval.scheduler.fixed_batch_work` replays the rule of the
decoder this replaced, per task as the eval ran it; `eval.scheduler.simulate` replays the batcher, whose
count `tests/test_decode.py` checks against the real decoder's). No model runs, so the figure is the same
on every device.

  python -m benchmarks.decode_work --out benchmarks/results/decode_work.json
"""
from __future__ import annotations

import pathlib

from benchmarks import common, sciriff_lengths


def rows_for(lengths: dict, batch_sizes, *, page_size: int, chunk: int, chunk_step: int, steps_per_call: int) -> list:
    """One row per batch size: the fixed-batch and continuous useful-work fractions and their counts."""
    from sciriff_jax.eval import scheduler

    prompts = [n for t in lengths.values() for n in t["prompt"]]
    answers = [n for t in lengths.values() for n in t["answer"]]
    rows = []
    for b in batch_sizes:
        fixed = scheduler.WorkCount()
        for t in lengths.values():  # the old eval decoded task by task
            w = scheduler.fixed_batch_work(t["prompt"], t["answer"], batch_size=b)
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
    from sciriff_jax.eval import batcher

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
