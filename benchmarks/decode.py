"""Greedy decoding, batch 32, 1,024-token prompts, 256 new tokens: sciriff-jax vs transformers `generate`, same run.

Both stacks run the same bf16 weights (sciriff-jax's random init, copied into `LlamaForCausalLM` through
`sciriff_jax.io.hf.hf_tensors`) on the same random prompts, and are forced to produce all new tokens (no
EOS can stop them). Reported: new tokens/s end to end (prefill included, what a user waits for), and
the decode-only rate from the difference with a 1-new-token run (prefill + first token), which is the
figure to hold against the memory-bandwidth floor in `benchmarks.analysis` (~45K tokens/s on an H200).

  python -m benchmarks.decode --out decode.json
  python -m benchmarks.decode --tiny --out /tmp/decode.json
"""
from __future__ import annotations

import gc

from benchmarks import common


def random_prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """`batch` prompts of `length` random token ids (ids 0-2 left out: pad/BOS/EOS)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab, size=(batch, length)).tolist()


def bench_jax(config, params, prompts, new_tokens: int, *, warmup: int, iters: int,
              split: bool = True, profile_dir: str | None = None) -> tuple[dict, list]:
    """Time `sciriff_jax.eval.decode.generate` for `new_tokens` and for 1 token; returns (row, generated tokens)."""
    from sciriff_jax.eval.decode import generate

    def run(n):
        # eos_id -1 never matches a token, so every row generates exactly n tokens.
        return generate(config, params, prompts, max_new_tokens=n, eos_id=-1, batch_size=len(prompts))

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


def torch_model_from(config, params):
    """transformers LlamaForCausalLM (SDPA, bf16, eval) holding exactly `params`."""
    import numpy as np
    import torch
    import transformers

    from sciriff_jax.io.hf import hf_tensors

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf_config = transformers.LlamaConfig(**config.to_hf_config())
    model = transformers.LlamaForCausalLM._from_config(hf_config, attn_implementation="sdpa", dtype=torch.bfloat16)
    state = {name: torch.from_numpy(np.asarray(thunk(), np.float32)).to(torch.bfloat16)
             for name, _, thunk in hf_tensors(params, config)}
    missing, unexpected = model.load_state_dict(state, strict=False)
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


def main(argv=None) -> dict:
    """Run the decoding benchmark; returns the JSON payload."""
    import jax

    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="prompts (default 32; tiny 4)")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 1024; tiny 32)")
    p.add_argument("--new", type=int, default=None, help="new tokens (default 256; tiny 8)")
    p.add_argument("--systems", default="jax,torch", help="comma-separated subset of jax,torch")
    p.add_argument("--no-split", action="store_true",
                   help="skip the 1-new-token runs (no decode-only rate; one compile less)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="trace one more sciriff-jax generate into DIR (jax.profiler) and list the top ops")
    args = p.parse_args(argv)
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
