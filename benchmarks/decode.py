"""Greedy decoding: sciriff-jax vs transformers `generate`, same weights, same prompts, same run.

Two cases. `--case uniform` (default): batch 32, 1,024-token prompts, 256 new tokens, bf16. Both stacks are
forced to produce all new tokens (no EOS can stop them). Reported: new tokens/s end to end (prefill
included, what a user waits for), and the decode-only rate from the difference with a 1-new-token run
(prefill + first token), which is the figure to hold against the memory-bandwidth floor in
`benchmarks.analysis` (~45K tokens/s on an H200).

`--case sciriff`: SciRIFF-Eval-shaped work. Prompts of the lengths of real eval instances drawn from the six
shared tasks (`benchmarks.sciriff_lengths`, Llama-2 tokens; token ids random), each forced to stop after as
many tokens as its reference answer (+ EOS); fp32; the 135M Llama shape (SmolLM-135M) by default.
transformers runs its natural batched path (prompts longest first, batches of --batch, left padding, a row
stops at its length); sciriff-jax runs `decoding.generate.generate` with --batch slots (continuous batching).
sciriff-jax is timed twice: the first call compiles, the second reuses the programs as an eval does.

Both stacks run the same weights (sciriff-jax's random init, copied into `LlamaForCausalLM` through
`sciriff_jax.io.hf.hf_tensors`).

  python -m benchmarks.decode --out decode.json
  python -m benchmarks.decode --case sciriff --out benchmarks/results/decode_sciriff_cpu.json
  python -m benchmarks.decode --tiny --out /tmp/decode.json
"""
from __future__ import annotations

import gc
import os

from benchmarks import common


# SmolLM-135M's shape (a small real Llama-architecture instruct model): the SciRIFF case's default on a CPU.
SMOLLM_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                   num_kv_heads=3, tie_embeddings=True)


def random_prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """`batch` prompts of `length` random token ids (ids 0-2 left out: pad/BOS/EOS)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab, size=(batch, length)).tolist()


def bench_jax(config, params, prompts, new_tokens: int, *, warmup: int, iters: int,
              split: bool = True, profile_dir: str | None = None) -> tuple[dict, list]:
    """Time `sciriff_jax.decoding.generate.generate` for `new_tokens` and for 1 token; returns (row, generated tokens)."""
    from sciriff_jax.decoding.generate import GenerationConfig, generate

    def run(n):
        # eos_id -1 never matches a token, so every row generates exactly n tokens.
        return generate(config, params, prompts, GenerationConfig(n, -1), batch_size=len(prompts))

    full = common.time_calls(lambda: run(new_tokens), warmup=warmup, iters=iters, sync=lambda x: x,
                             label="sciriff-jax generate")
    first = common.time_calls(lambda: run(1), warmup=warmup, iters=iters, sync=lambda x: x,
                              label="sciriff-jax prefill + 1 token") if split else None
    row = _row("sciriff-jax decode.generate (KV cache, while_loop)", full, first, len(prompts), new_tokens)
    if profile_dir:
        row["profile_top"] = common.profile_calls(lambda: run(new_tokens), directory=profile_dir, calls=1,
                                                  sync=lambda x: x)
        print(common.format_table(row["profile_top"], ["op", "ms_per_call", "share"]))
    return row, run(new_tokens)


def torch_model_from(config, params, dtype=None):
    """transformers LlamaForCausalLM (SDPA, bf16 unless `dtype`, eval) holding exactly `params`."""
    import numpy as np
    import torch
    import transformers

    from sciriff_jax.io.hf import hf_tensors

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf_config = transformers.LlamaConfig(**config.to_hf_config())
    dtype = dtype or torch.bfloat16
    model = transformers.LlamaForCausalLM._from_config(hf_config, attn_implementation="sdpa", dtype=dtype)
    state = {name: torch.from_numpy(np.asarray(thunk(), np.float32)).to(dtype)
             for name, _, thunk in hf_tensors(params, config)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if config.tie_embeddings:
        # A tied head is the embedding itself: there is no lm_head.weight of its own to load.
        model.tie_weights()
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"benchmarks.decode: weight copy into transformers failed: missing {missing}, "
                           f"unexpected {unexpected} (check sciriff_jax.hf names against transformers' Llama).")
    return model.to(device).eval(), device


def bench_torch(config, params, prompts, new_tokens: int, *, warmup: int, iters: int,
                split: bool = True) -> tuple[dict, list]:
    """Time transformers `generate` (greedy, forced to `new_tokens`) and a 1-token run; returns (row, tokens)."""
    import torch

    model, device = torch_model_from(config, params)
    ids = torch.tensor(prompts, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)

    def run(n):
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=0, eos_token_id=None)

    def sync(_):
        if device == "cuda":
            torch.cuda.synchronize()

    full = common.time_calls(lambda: run(new_tokens), warmup=warmup, iters=iters, sync=sync,
                             label="transformers generate")
    first = common.time_calls(lambda: run(1), warmup=warmup, iters=iters, sync=sync,
                              label="transformers prefill + 1 token") if split else None
    tokens = run(new_tokens)[:, ids.shape[1]:].cpu().tolist()
    row = _row("transformers generate (SDPA, bf16, greedy)", full, first, len(prompts), new_tokens)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()  # hand the memory back before JAX allocates
    return row, tokens


def _row(system: str, full: dict, first: dict | None, batch: int, new_tokens: int) -> dict:
    row = {"system": system, "seconds": full["median_s"], "first_call_s": full["first_s"],
           "new_tokens_per_s": batch * new_tokens / full["median_s"]}
    if first is not None and new_tokens > 1:
        # Steady-state steps: the full run minus (prefill + first token).
        decode_s = max(full["median_s"] - first["median_s"], 1e-9)
        row.update(prefill_plus_one_s=first["median_s"], decode_only_tokens_per_s=batch * (new_tokens - 1) / decode_s,
                   ms_per_step=decode_s / (new_tokens - 1) * 1e3)
    return row


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """How far two greedy continuations of the same prompts agree (bf16 near-ties make later tokens drift)."""
    first = sum(x[0] == y[0] for x, y in zip(a, b)) / len(a)
    prefix = []
    for x, y in zip(a, b):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        prefix.append(n)
    return {"first_token_agreement": first, "mean_common_prefix": sum(prefix) / len(prefix)}


def sciriff_work(n: int, seed: int = 0, max_new: int = 1024, shared=None) -> tuple[list[int], list[int], list[str]]:
    """(prompt lengths, answer lengths, tasks) of `n` instances drawn at random from the six shared eval tasks."""
    import random

    from benchmarks import sciriff_lengths

    lengths = sciriff_lengths.eval_lengths(shared or sciriff_lengths.SHARED, max_new=max_new)
    pool = [(t, p, a) for t, d in lengths.items() if d["source"] == "instances" for p, a in zip(d["prompt"], d["answer"])]
    picked = random.Random(seed).sample(pool, n)
    return [p for _, p, _ in picked], [a for _, _, a in picked], [t for t, _, _ in picked]


def torch_generate_forced(model, device, prompts: list[list[int]], lengths: list[int], batch: int) -> list[list[int]]:
    """transformers `generate`, greedy, prompts longest first in left-padded batches; row i stops after lengths[i]."""
    import torch
    import transformers

    class RowLimits(transformers.StoppingCriteria):
        def __init__(self, start, limits):
            self.start, self.limits = start, torch.tensor(limits, device=device)

        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids.shape[1] - self.start) >= self.limits

    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list = [None] * len(prompts)
    for lo in range(0, len(order), batch):
        idx = order[lo:lo + batch]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        limits = [lengths[i] for i in idx]
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(limits), do_sample=False,
                                 pad_token_id=0, eos_token_id=None,
                                 stopping_criteria=transformers.StoppingCriteriaList([RowLimits(width, limits)]))
        for r, i in enumerate(idx):
            out[i] = gen[r, width:width + lengths[i]].cpu().tolist()
    return out


def sciriff_case(args) -> dict:
    """The SciRIFF-Eval-shaped comparison; returns the JSON payload."""
    import time

    import jax

    from sciriff_jax.decoding.generate import DecodeHooks, GenerationConfig, generate
    from sciriff_jax.model.llama import init_params

    shape = common.TINY if args.tiny else SMOLLM_135M
    config = common.model_config(args.tiny, **{**shape, "dtype": "float32", "param_dtype": "float32",
                                                "max_position": 4096})
    params = init_params(config, jax.random.PRNGKey(0))
    n = args.prompts or (4 if args.tiny else 16)
    prompt_lens, answer_lens, tasks = sciriff_work(n, seed=args.seed, max_new=args.max_new)
    if args.tiny:
        prompt_lens, answer_lens = [min(p, 96) for p in prompt_lens], [min(a, 8) for a in answer_lens]
    import numpy as np

    rng = np.random.default_rng(args.seed)
    prompts = [rng.integers(3, config.vocab_size, size=p).tolist() for p in prompt_lens]
    work = {"prompts": n, "prompt_tokens": sum(prompt_lens), "new_tokens": sum(answer_lens),
            "prompt_lengths": prompt_lens, "answer_lengths": answer_lens, "tasks": tasks, "batch": args.batch}
    print(f"SciRIFF case: {n} prompts of {min(prompt_lens)}-{max(prompt_lens)} tokens ({sum(prompt_lens)} in all), "
          f"answers of {min(answer_lens)}-{max(answer_lens)} ({sum(answer_lens)} in all), batch {args.batch}", flush=True)
    rows, outputs = [], {}
    systems = args.systems.split(",")
    if "torch" in systems:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        model, device = torch_model_from(config, params, dtype=torch.float32)
        # The first row (batch = ours) is the comparison; other batch sizes show transformers' best on this box.
        for tb in [args.batch] + [b for b in (args.torch_batches or []) if b != args.batch]:
            t0 = time.perf_counter()
            tokens = torch_generate_forced(model, device, prompts, answer_lens, tb)
            secs = time.perf_counter() - t0
            outputs.setdefault("torch", tokens)
            if tokens != outputs["torch"]:
                print(f"note: transformers' greedy tokens with batch {tb} differ from batch {args.batch} "
                      "(padding changes its numerics)", flush=True)
            rows.append({"system": f"transformers generate (SDPA, fp32, greedy, left-padded batches of {tb})",
                         "seconds": secs, "new_tokens_per_s": sum(answer_lens) / secs,
                         "tokens_per_s": (sum(answer_lens) + sum(prompt_lens)) / secs})
            print(f"  transformers, batches of {tb}: {secs:.1f}s", flush=True)
        del model
        gc.collect()
    if "jax" in systems:
        def run():
            return generate(config, params, prompts, GenerationConfig(answer_lens, -1), batch_size=args.batch,
                            hooks=DecodeHooks(log=None))

        t0 = time.perf_counter()
        first = run()
        first_s = time.perf_counter() - t0
        print(f"  sciriff-jax, first call (compiles): {first_s:.1f}s", flush=True)
        t0 = time.perf_counter()
        outputs["jax"] = run()
        secs = time.perf_counter() - t0
        print(f"  sciriff-jax, second call: {secs:.1f}s", flush=True)
        assert first == outputs["jax"], "sciriff-jax: two greedy runs of the same prompts differ"
        rows.append({"system": f"sciriff-jax decode.generate (continuous batching, {args.batch} slots, paged KV)",
                     "seconds": secs, "first_call_s": first_s, "new_tokens_per_s": sum(answer_lens) / secs,
                     "tokens_per_s": (sum(answer_lens) + sum(prompt_lens)) / secs})
    if len(rows) >= 2 and "jax" in outputs and "torch" in outputs:
        ours, best = rows[-1], min(rows[:-1], key=lambda r: r["seconds"])
        for r in rows:
            r["vs_transformers"] = rows[0]["seconds"] / r["seconds"]
        ours["first_call_vs_transformers"] = rows[0]["seconds"] / ours["first_call_s"]
        ours["vs_fastest_transformers"] = best["seconds"] / ours["seconds"]
    extra = {"case": "sciriff", "model": config.to_dict(), "num_params": config.num_params(), "work": work}
    if len(outputs) == 2:
        assert all(len(a) == len(b) for a, b in zip(outputs["jax"], outputs["torch"]))
        extra["agreement"] = agreement(outputs["jax"], outputs["torch"])
        print(f"greedy agreement (same weights): {extra['agreement']}")
    cols = ["system", "seconds", "vs_transformers", "vs_fastest_transformers", "first_call_s",
            "first_call_vs_transformers", "new_tokens_per_s", "tokens_per_s"]
    return common.report("greedy decoding, SciRIFF-Eval-shaped", args, rows, cols, extra=extra)


def main(argv=None) -> dict:
    """Run the decoding benchmark; returns the JSON payload."""
    import jax

    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="prompts (default 32; tiny 4)")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 1024; tiny 32)")
    p.add_argument("--new", type=int, default=None, help="new tokens (default 256; tiny 8)")
    p.add_argument("--systems", default="jax,torch", help="comma-separated subset of jax,torch")
    p.add_argument("--case", choices=("uniform", "sciriff"), default="uniform",
                   help="uniform: fixed prompt/new lengths; sciriff: SciRIFF-Eval lengths, forced answer lengths")
    p.add_argument("--prompts", type=int, default=None, help="sciriff case: instances drawn (default 16; tiny 4)")
    p.add_argument("--seed", type=int, default=0, help="sciriff case: which instances are drawn")
    p.add_argument("--max-new", type=int, default=1024, help="sciriff case: answer length cap")
    p.add_argument("--torch-batches", type=lambda v: [int(b) for b in v.split(",")], default=None,
                   help="sciriff case: more transformers batch sizes to time (e.g. 1), besides --batch")
    p.add_argument("--no-split", action="store_true",
                   help="skip the 1-new-token runs (no decode-only rate; one compile less)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="trace one more sciriff-jax generate into DIR (jax.profiler) and list the top ops")
    args = p.parse_args(argv)
    if args.case == "sciriff":
        args.batch = args.batch or 8
        return sciriff_case(args)
    warmup, iters = common.iters_of(args)
    if args.iters is None and not args.tiny:
        iters = 3  # a full generate is ~seconds per call on transformers; 3 medians are enough
    args.batch = args.batch or (4 if args.tiny else 32)
    args.prompt = args.prompt or (32 if args.tiny else 1024)
    args.new = args.new or (8 if args.tiny else 256)
    config = common.model_config(args.tiny, param_dtype="bfloat16", max_position=max(4096, args.prompt + args.new))
    from sciriff_jax.model.llama import init_params

    params = init_params(config, jax.random.PRNGKey(0))
    prompts = random_prompts(args.batch, args.prompt, config.vocab_size)
    rows, outputs = [], {}
    systems = args.systems.split(",")
    # PyTorch first, then JAX: PyTorch hands its cached memory back, JAX's pool would not.
    if "torch" in systems:
        row, outputs["torch"] = bench_torch(config, params, prompts, args.new, warmup=warmup, iters=iters,
                                        split=not args.no_split)
        rows.append(row)
    if "jax" in systems:
        row, outputs["jax"] = bench_jax(config, params, prompts, args.new, warmup=warmup, iters=iters,
                                      split=not args.no_split, profile_dir=args.profile)
        rows.append(row)
    if len(rows) == 2:
        for r in rows:
            r["vs_transformers"] = r["new_tokens_per_s"] / rows[0]["new_tokens_per_s"]
    extra = {"model": config.to_dict(), "num_params": config.num_params()}
    if len(outputs) == 2:
        extra["agreement"] = agreement(outputs["jax"], outputs["torch"])
        print(f"greedy agreement (same weights): {extra['agreement']}")
    cols = ["system", "new_tokens_per_s", "vs_transformers", "decode_only_tokens_per_s", "ms_per_step", "seconds",
            "prefill_plus_one_s", "first_call_s"]
    return common.report("greedy decoding", args, rows, cols, extra=extra)


if __name__ == "__main__":
    main()
