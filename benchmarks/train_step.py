"""Training step at the TinyLlama-1.1B shape: sciriff-jax vs transformers LlamaForCausalLM, same run, same card.

sciriff-jax: `sciriff_jax.train.step.make_train_step` (the real step: token-normalised loss, NaN guard) over
`Llama(config)` with scan over layers, a remat policy and the platform's attention backend, AdamW
(optax, fp32 params/moments, bf16 compute). transformers: `LlamaForCausalLM` with SDPA attention,
`torch.autocast(bfloat16)`, fp32 params and fused AdamW (foreach on CPU). Both: seq 4096, global batch 4,
no gradient clipping. Model FLOPs per token = 6 * params + 6 * layers * d * seq (ANCHORS.md).

  python -m benchmarks.train_step --out train_step.json           # GPU, real shape
  python -m benchmarks.train_step --tiny --out /tmp/train_step.json  # CPU smoke (seconds)
"""
from __future__ import annotations

import gc

from benchmarks import common


def synthetic_batch(batch: int, seq: int, vocab: int, doc: int | None = None, seed: int = 0) -> dict:
    """A batch in the docs/design.md contract: random tokens, one document per row (or `doc`-token documents)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(batch, seq + 1), dtype=np.int32)
    idx = np.arange(seq, dtype=np.int32)
    seg = np.ones((batch, seq), np.int32) if not doc else np.broadcast_to(idx // doc + 1, (batch, seq)).copy()
    pos = np.broadcast_to(idx if not doc else idx % doc, (batch, seq)).copy()
    return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
            "decoder_loss_weights": np.ones((batch, seq), np.int32), "decoder_segment_ids": seg,
            "decoder_positions": pos}


def make_jax_step(config, lr: float = 1e-5):
    """(step, params, opt_state): the real sciriff-jax train step with AdamW, params freshly initialised."""
    import jax
    import optax

    from sciriff_jax.model.llama import Llama, init_params
    from sciriff_jax.train.step import make_train_step

    tx = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
    params = init_params(config, jax.random.PRNGKey(0))
    opt_state = jax.jit(tx.init)(params)
    return make_train_step(Llama(config), tx), params, opt_state


def resolved_backend(config, batch_np: dict) -> str:
    """The attention backend "auto" resolves to for this platform and row length (what actually ran)."""
    import jax
    import jax.numpy as jnp

    from sciriff_jax.model.attention import select_backend

    b, length = batch_np["decoder_input_tokens"].shape
    q = jax.ShapeDtypeStruct((b, length, config.num_heads, config.head_dim), jnp.dtype(config.dtype))
    return select_backend(config.attention_backend, q)


def bench_jax(config, batch_np: dict, *, warmup: int, iters: int, profile_dir: str | None = None) -> dict:
    """Time the sciriff-jax step; params/opt state are donated, so each call feeds the next."""
    import jax

    step, params, opt_state = make_jax_step(config)
    n_params = sum(int(x.size) for x in jax.tree.leaves(params))
    batch = jax.tree.map(jax.numpy.asarray, batch_np)
    state = {"params": params, "opt": opt_state, "loss": None}

    def one():
        state["params"], state["opt"], metrics = step(state["params"], state["opt"], batch)
        state["loss"] = metrics["loss"]
        return metrics["loss"]

    t = common.time_calls(one, warmup=warmup, iters=iters, label="sciriff-jax step")
    if profile_dir:
        t["profile_top"] = common.profile_calls(one, directory=profile_dir)
        print(common.format_table(t["profile_top"], ["op", "ms_per_call", "share"]))
    stats = jax.devices()[0].memory_stats() or {}
    attn = resolved_backend(config, batch_np)
    out = {"system": f"sciriff-jax (scan, remat={config.remat_policy}, attention={attn})",
           **t, "params": n_params, "final_loss": float(state["loss"]),
           "peak_gb": stats.get("peak_bytes_in_use", 0) / 1e9 or None}
    del state, params, opt_state
    gc.collect()
    return out


def bench_torch(config, batch_np: dict, *, warmup: int, iters: int, compile_model: bool = False) -> dict:
    """Time transformers LlamaForCausalLM: SDPA, autocast bf16, fp32 params, fused AdamW (CUDA)."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(**config.to_hf_config())
    model = transformers.LlamaForCausalLM._from_config(hf_config, attn_implementation="sdpa",
                                                       dtype=torch.float32).to(device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    fused = device == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            fused=fused, foreach=not fused)
    fwd = torch.compile(model) if compile_model else model
    inputs = torch.as_tensor(batch_np["decoder_input_tokens"], dtype=torch.long, device=device)
    # HF shifts labels itself; feeding the inputs as labels gives the same token count as the JAX step.
    labels = inputs
    last = {}

    def one():
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = fwd(input_ids=inputs, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last["loss"] = loss
        return loss

    def sync(_):
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = common.time_calls(one, warmup=warmup, iters=iters, sync=sync, label="transformers step")
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
    name = "transformers LlamaForCausalLM (SDPA, autocast bf16, " + ("fused" if fused else "foreach") + " AdamW"
    out = {"system": name + (", torch.compile)" if compile_model else ")"), **t,
           "params": n_params, "final_loss": float(last["loss"].detach().float().cpu()), "peak_gb": peak}
    del model, opt, fwd, last
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()  # hand the memory back before JAX allocates
    return out


def add_rates(row: dict, tokens: int, flops_per_token: float, ceiling_tflops: float | None) -> dict:
    """tokens/s, model TFLOP/s and the fraction of the measured matmul ceiling."""
    s = row["median_s"]
    row["tokens_per_s"] = tokens / s
    row["model_tflops"] = tokens * flops_per_token / s / 1e12
    if ceiling_tflops:
        row["of_matmul_ceiling"] = row["model_tflops"] / ceiling_tflops
    return row


def main(argv=None) -> dict:
    """Run the training-step benchmark; returns the JSON payload."""
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default 4096; tiny 64)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default 4; tiny 2)")
    # dots_no_batch keeps every projection output (no matmul recompute) but never attention internals:
    # with the XLA blockwise backend "dots" would also save its score blocks (see BENCHMARKS.md, memory).
    p.add_argument("--remat", default="dots_no_batch", help="sciriff-jax remat policy (LlamaConfig.remat_policy)")
    p.add_argument("--attention", default="auto", help="sciriff-jax attention backend")
    p.add_argument("--packed-doc", type=int, default=None,
                   help="pack documents of this many tokens into each row (sciriff-jax only; default unpacked)")
    p.add_argument("--systems", default="jax,torch", help="comma-separated subset of jax,torch,torch-compile")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="trace 3 more sciriff-jax steps into DIR (jax.profiler) and list the top ops")
    args = p.parse_args(argv)
    warmup, iters = common.iters_of(args)
    args.seq = args.seq or (64 if args.tiny else 4096)
    args.batch = args.batch or (2 if args.tiny else 4)
    config = common.model_config(args.tiny, remat_policy=args.remat, attention_backend=args.attention,
                                 max_position=max(4096, args.seq))
    tokens = args.seq * args.batch
    fpt = config.flops_per_token(args.seq)
    ceiling = common.matmul_ceiling(args.tiny)
    print(f"bf16 matmul ceiling: {ceiling['tflops']:.1f} TFLOP/s ({ceiling['n']}^3)")
    batch = synthetic_batch(args.batch, args.seq, config.vocab_size)
    systems = args.systems.split(",")
    rows = []
    # PyTorch first: it returns its cached memory afterwards; JAX's pool would not be returned to PyTorch.
    if "torch" in systems:
        rows.append(bench_torch(config, batch, warmup=warmup, iters=iters))
    if "torch-compile" in systems:
        rows.append(bench_torch(config, batch, warmup=warmup, iters=iters, compile_model=True))
    if "jax" in systems:
        jbatch = synthetic_batch(args.batch, args.seq, config.vocab_size, doc=args.packed_doc)
        rows.append(bench_jax(config, jbatch, warmup=warmup, iters=iters, profile_dir=args.profile))
    for r in rows:
        add_rates(r, tokens, fpt, ceiling["tflops"])
    torch_rows = [r for r in rows if r["system"].startswith("transformers") and "compile" not in r["system"]]
    for r in rows:
        if torch_rows:
            r["vs_transformers"] = r["tokens_per_s"] / torch_rows[0]["tokens_per_s"]
    cols = ["system", "tokens_per_s", "model_tflops", "of_matmul_ceiling", "vs_transformers", "median_s",
            "first_s", "peak_gb", "final_loss"]
    return common.report("training step", args, rows, cols, extra={
        "model": config.to_dict(), "num_params": config.num_params(), "flops_per_token": fpt,
        "tokens_per_step": tokens, "matmul_ceiling": ceiling})


if __name__ == "__main__":
    main()
