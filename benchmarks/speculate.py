"""Prompt-lookup speculative decoding on SciRIFF-shaped work: new tokens/s with SPECULATE = 0 and k drafts.

Real prompts of the shared SciRIFF-Eval tasks (`../shared/sciriff/eval_sample`, the release protocol's prompts in
the checkpoint's chat format) are greedy-decoded by the continuous batcher, plainly (k = 0) and with k drafts per
verify step (`decoding/speculate.py`). Each setting runs once to compile, then is timed (the settings interleaved,
`--repeats` rounds). Reported per setting: new tokens/s in the decode calls (prefill is the same work for every k
and is left out) and end to end, and whether every answer equals plain greedy's token for token; per task: the
mean accepted length (tokens per verify step, 1 = no draft accepted).

  python -m benchmarks.speculate --checkpoint runs/demo --out benchmarks/results/speculate_demo_cpu.json
"""
from __future__ import annotations

import json
import os
import time

from benchmarks import common, sciriff_lengths

SHARED_TASKS = ("bioasq_list_qa", "biored_ner", "evidence_inference", "qasper_abstractive_qa", "scierc_ner",
                "scifact_entailment")


def task_prompts(chat_format, config, shared, per_task: int, max_new: int) -> tuple[list, list]:
    """(prompt tokens, task of each): the first `per_task` instances of each shared task, prompted as the eval does
    (release protocol, the paper's few-shot counts drawn from the task's instances here)."""
    from sciriff_jax.eval import evaluate
    from sciriff_jax.eval.protocol import Protocol

    loaded = {}
    for task in SHARED_TASKS:
        rows = [json.loads(line) for line in (shared / "eval_sample" / f"{task}.jsonl").open()]
        loaded[task] = (rows, task)
    eval_config = evaluate.EvalConfig(None, max_examples=per_task, max_new_tokens=max_new)
    prompts, tasks = [], []
    for task, (_, texts) in evaluate.task_prompts(loaded, chat_format, eval_config).items():
        prompts += chat_format.encode_prompts(texts, add_bos=Protocol("release").adds_bos,
                                              max_position=config.max_position, max_new_tokens=max_new, label=task)
        tasks += [task] * len(texts)
    return prompts, tasks


def decode(loaded, prompts, max_new: int, k: int, slots: int):
    """(outputs, the batcher) of one greedy decode of `prompts` with k drafts (0: the plain batcher)."""
    from sciriff_jax.decoding import batcher, speculate

    engine = dict(eos_id=loaded.chat_format.eos_id, slots=slots, log=None)
    if k:
        b = speculate.SpeculativeBatcher(loaded.config, loaded.params, k=k, **engine)
    else:
        b = batcher.ContinuousBatcher(loaded.config, loaded.params, **engine)
    return b.run(prompts, [max_new] * len(prompts)), b


def timed_row(loaded, prompts, tasks, args, k: int, reference) -> dict:
    """One timed decode with k drafts: rates, identity with `reference` (plain greedy's outputs), accepted lengths."""
    load = os.getloadavg()[0]
    began = time.perf_counter()
    out, b = decode(loaded, prompts, args.max_new, k, args.batch)
    wall = time.perf_counter() - began
    work = b.work
    decoded = work.generated - len(prompts)  # the first token of each comes from prefill
    row = {"k": k, "prompts": len(prompts), "new_tokens": work.generated, "decode_s": work.decode_s, "wall_s": wall,
           "decode_tokens_per_s": decoded / work.decode_s if work.decode_s else None,
           "end_to_end_tokens_per_s": work.generated / wall, "decode_calls": work.decode_calls,
           # Loop iterations over all slots (one token, or one verify step, per live row each).
           "device_steps": work.decode_computed // b.slots,
           "ms_per_device_step": 1e3 * work.decode_s / max(1, work.decode_computed // b.slots),
           "identical_to_greedy": None if reference is None else ("yes" if out == reference else "NO"),
           "rows_differing": None if reference is None else sum(a != r for a, r in zip(out, reference)),
           "load_1min": load}
    if k:
        stats = b.speculation
        row["mean_accepted_length"] = stats.accepted_length()
        row["verify_steps"] = sum(stats.steps)
        for task in SHARED_TASKS:
            row[f"accepted_{task}"] = stats.accepted_length([i for i, t in enumerate(tasks) if t == task])
    return row, out


def verify_rounding(loaded, prompts, k: int = 8, page_size: int = 64) -> dict:
    """How far a verify step's logits ([last, k drafts] in one call, k + 1 tokens wide) are from plain decoding's
    (the same tokens one call each, 1 wide) after each prompt is prefilled: max |difference|, the largest logit, the
    smallest top-2 gap seen and how many argmaxes differ."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sciriff_jax.model import Llama

    c, model = loaded.config, Llama(loaded.config)
    apply = jax.jit(lambda p, x, pos, pool, table: model.apply({"params": p}, x, positions=pos, cache=pool,
                                                             cache_index=pos[:, 0], page_table=table))
    worst, top, gap, flips, n = 0.0, 0.0, np.inf, 0, 0
    for prompt in prompts:
        seq, length = np.asarray(prompt, np.int32), len(prompt) - k - 1  # the prompt's own last k + 1 tokens verify
        pages = -(-len(prompt) // (4 * page_size)) * 4  # whole key blocks (attention_paged: 4 pages each)
        table = jnp.arange(1, pages + 1, dtype=jnp.int32)[None, :]
        pool = {n_: jnp.zeros((c.num_layers, pages + 1, page_size, c.num_kv_heads, c.head_dim)) for n_ in "kv"}
        _, pool = apply(loaded.params, seq[None, :length], jnp.arange(length)[None], pool, table)
        wide, _ = apply(loaded.params, seq[None, length:], jnp.arange(length, len(seq))[None], pool, table)
        narrow = []
        for i in range(length, len(seq)):  # one token a call, each call's keys kept for the next
            logits, pool = apply(loaded.params, seq[None, i:i + 1], jnp.asarray([[i]]), pool, table)
            narrow.append(np.asarray(logits[0, 0]))
        narrow = np.stack(narrow)
        wide = np.asarray(wide[0])
        worst, top = max(worst, float(np.abs(wide - narrow).max())), max(top, float(np.abs(narrow).max()))
        ranked = np.sort(narrow, axis=-1)
        gap = min(gap, float((ranked[:, -1] - ranked[:, -2]).min()))
        flips, n = flips + int((wide.argmax(-1) != narrow.argmax(-1)).sum()), n + len(narrow)
    return {"max_abs_logit_difference": worst, "max_abs_logit": top, "min_top2_gap": gap, "argmax_flips": flips,
            "positions": n, "verify_width": k + 1}


def main(argv=None) -> dict:
    """Time greedy decoding with SPECULATE = 0 and each k; returns the JSON payload."""
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="Orbax checkpoint (e.g. the demo's runs/demo) or HF directory")
    p.add_argument("--shared", default=str(sciriff_lengths.SHARED), help="folder holding eval_sample/<task>.jsonl")
    p.add_argument("--per-task", type=int, default=8, help="instances per shared task")
    p.add_argument("--max-new", type=int, default=96, help="MAX_NEW_TOKENS (the demo's 96 by default)")
    p.add_argument("--batch", type=int, default=16, help="BATCH_SIZE (slots)")
    p.add_argument("--ks", default="0,2,4,8", help="draft lengths; 0 = plain greedy (always run, the reference)")
    p.add_argument("--repeats", type=int, default=1, help="timed rounds over all ks (interleaved)")
    p.add_argument("--rounding-prompts", type=int, default=6, help="prompts whose verify-vs-plain logits are compared")
    args = p.parse_args(argv)
    import pathlib

    from sciriff_jax.io import loader

    loaded = loader.load(args.checkpoint, dtype="float32")
    prompts, tasks = task_prompts(loaded.chat_format, loaded.config, pathlib.Path(args.shared), args.per_task,
                                  args.max_new)
    ks = sorted({0, *(int(k) for k in args.ks.split(","))})
    for k in ks:  # compile every program of every setting
        decode(loaded, prompts, args.max_new, k, args.batch)
    rows, reference = [], None
    for round_ in range(args.repeats):
        for k in (ks if round_ % 2 == 0 else ks[::-1]):
            row, out = timed_row(loaded, prompts, tasks, args, k, reference)
            reference = out if k == 0 and reference is None else reference
            rows.append(dict(row, round=round_))
    base = [r["decode_tokens_per_s"] for r in rows if r["k"] == 0]
    for r in rows:
        r["decode_speedup"] = r["decode_tokens_per_s"] / (sum(base) / len(base))
    columns = ["round", "k", "new_tokens", "device_steps", "ms_per_device_step", "decode_s", "decode_tokens_per_s",
               "decode_speedup", "wall_s",
               "end_to_end_tokens_per_s", "mean_accepted_length", "identical_to_greedy", "load_1min"]
    task_columns = ["k"] + [f"accepted_{t}" for t in SHARED_TASKS]
    print(common.format_table([r for r in rows if r["k"] and r["round"] == 0], task_columns))
    prompt_tokens = [len(x) for x in prompts]
    return common.report("prompt-lookup speculative decoding, shared SciRIFF-Eval tasks", args, rows, columns,
                         extra={"prompt_tokens": {"total": sum(prompt_tokens), "min": min(prompt_tokens),
                                                  "max": max(prompt_tokens)},
                                "checkpoint": args.checkpoint,
                                "rounding": verify_rounding(loaded, prompts[::max(1, len(prompts) //
                                                                                   args.rounding_prompts)])})


if __name__ == "__main__":
    main()
