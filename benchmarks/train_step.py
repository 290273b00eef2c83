"""Training step at a real model's shape: sciriff-jax vs transformers LlamaForCausalLM, same process, same device.

sciriff-jax: `sciriff_jax.train.step.make_train_step` (the real step: token-normalised chunked loss, NaN guard,
microbatch accumulation) over `Llama(config)` with scan over layers, a remat policy and the platform's attention
backend, AdamW (optax, fp32 params/moments). transformers: `LlamaForCausalLM` with SDPA attention, fp32 params,
fused AdamW on CUDA (foreach on CPU), the same microbatches accumulated with one backward each. Compute dtype:
float32 on a CPU, bf16 (autocast for PyTorch) on an accelerator (--dtype). No gradient clipping.
Model FLOPs per token = 6 * params + 6 * layers * d * seq (ANCHORS.md).

The timed steps of the systems are interleaved in one process, in a counterbalanced order (jax torch, torch jax,
jax torch, ...), so a shared machine's load falls on both alike and neither always runs right after the other;
the load average and each step's predecessor are recorded. Peak memory is each system's own: one child process per
system runs two steps alone and reports its peak RSS (host) or peak device bytes (accelerator).

  python -m benchmarks.train_step --shape smollm2-135m --seq 1024 --batch 4 --microbatches 4 --systems jax,torch
  python -m benchmarks.train_step --out train_step.json           # GPU, TinyLlama-1.1B shape, seq 4096
  python -m benchmarks.train_step --tiny --out /tmp/train_step.json  # CPU smoke (seconds)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks import common

# SmolLM2-135M(-Instruct)'s config.json: the real checkpoint a CPU user finetunes (issue 27).
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                    num_kv_heads=3, tie_embeddings=True, rope_theta=100000.0)
SHAPES = {"tinyllama-1b": common.TINYLLAMA_1B, "smollm2-135m": SMOLLM2_135M, "tiny": common.TINY}
MEMORY_TAG = "PEAK_MEMORY "


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


class PlainLogits:
    """The Llama seen as a module that returns full logits: the step then takes the plain [B, L, V] loss (the
    step as it was before train/losses.py; `--loss plain`)."""

    def __init__(self, model):
        self.apply = model.apply


def make_jax_step(config, lr: float = 1e-5, microbatches: int = 1, loss: str = "chunked"):
    """(step, params, opt_state): the real sciriff-jax train step with AdamW, params freshly initialised."""
    import jax
    import optax

    from sciriff_jax.model.llama import Llama, init_params
    from sciriff_jax.train.step import make_train_step

    tx = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
    params = init_params(config, jax.random.PRNGKey(0))
    opt_state = jax.jit(tx.init)(params)
    model = Llama(config) if loss == "chunked" else PlainLogits(Llama(config))
    return make_train_step(model, tx, microbatches=microbatches), params, opt_state


def resolved_backend(config, batch_np: dict) -> str:
    """The attention backend "auto" resolves to for this platform and row length (what actually ran)."""
    import jax
    import jax.numpy as jnp

    from sciriff_jax.model.attention import select_backend

    b, length = batch_np["decoder_input_tokens"].shape
    q = jax.ShapeDtypeStruct((b, length, config.num_heads, config.head_dim), jnp.dtype(config.dtype))
    return select_backend(config.attention_backend, q)


def compiled_analysis(compiled) -> dict:
    """XLA's own account of the compiled step: FLOPs, bytes accessed, and its temporary / argument memory."""
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    mem = compiled.memory_analysis()
    out = {"xla_gflops": cost.get("flops", 0.0) / 1e9, "xla_gbytes_accessed": cost.get("bytes accessed", 0.0) / 1e9}
    if mem is not None:
        out.update(temp_gb=mem.temp_size_in_bytes / 1e9, argument_gb=mem.argument_size_in_bytes / 1e9,
                   output_gb=mem.output_size_in_bytes / 1e9)
    return out


def jax_system(config, batch_np: dict, *, microbatches: int, loss: str) -> dict:
    """{"one": a step callable feeding donated params/opt state to the next, "info": what ran, "sync"}."""
    import jax

    step, params, opt_state = make_jax_step(config, microbatches=microbatches, loss=loss)
    batch = jax.tree.map(jax.numpy.asarray, batch_np)
    t0 = time.perf_counter()
    compiled = step.jitted.lower(params, opt_state, batch).compile()
    compile_s = time.perf_counter() - t0
    state = {"params": params, "opt": opt_state, "loss": None}

    def one():
        state["params"], state["opt"], metrics = compiled(state["params"], state["opt"], batch)
        state["loss"] = metrics["loss"]
        return metrics["loss"]

    attn = resolved_backend(config, {"decoder_input_tokens": batch_np["decoder_input_tokens"][
        : len(batch_np["decoder_input_tokens"]) // microbatches]})
    info = {"system": f"sciriff-jax (scan, remat={config.remat_policy}, attention={attn}, loss={loss}, "
                      f"{config.dtype})",
            "params": sum(int(x.size) for x in jax.tree.leaves(params)), "compile_s": compile_s,
            **compiled_analysis(compiled)}
    return {"one": one, "info": info, "sync": common.block, "loss": lambda: float(state["loss"])}


def torch_system(config, batch_np: dict, *, microbatches: int) -> dict:
    """transformers LlamaForCausalLM: SDPA, fp32 params, AdamW; bf16 autocast unless the config computes in fp32;
    the same microbatches, each with its own backward, the loss a token mean over the whole batch."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(**config.to_hf_config())
    model = transformers.LlamaForCausalLM._from_config(hf_config, attn_implementation="sdpa",
                                                       dtype=torch.float32).to(device)
    model.train()
    fused = device == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                            fused=fused, foreach=not fused)
    inputs = torch.as_tensor(batch_np["decoder_input_tokens"], dtype=torch.long, device=device)
    targets = torch.as_tensor(batch_np["decoder_target_tokens"], dtype=torch.long, device=device)
    autocast = config.dtype != "float32"
    last = {}

    def one():
        n = targets.numel()
        total = 0.0
        for x, y in zip(inputs.chunk(microbatches), targets.chunk(microbatches)):
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
                logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum") / n
            loss.backward()
            total += float(loss.detach())
        opt.step()
        opt.zero_grad(set_to_none=True)
        last["loss"] = total
        return total

    def sync(_):
        if device == "cuda":
            torch.cuda.synchronize()

    name = (f"transformers LlamaForCausalLM (SDPA, {'autocast bf16' if autocast else 'float32'}, "
            + ("fused" if fused else "foreach") + " AdamW)")
    info = {"system": name, "params": sum(p.numel() for p in model.parameters())}
    return {"one": one, "info": info, "sync": sync, "loss": lambda: last["loss"], "model": model}


def interleaved(systems: dict, *, warmup: int, iters: int) -> dict:
    """{name: timing} with the systems' steps alternating, so both see the same machine load.

    The order is counterbalanced (B A, A B, B A, ... for systems built A then B): a step's time depends on what
    ran just before it in the process (the other system's freed memory still held by its allocator, cold caches),
    and a fixed order would hand that cost to the same system every time (BENCHMARKS.md section 9.7). Each step
    records the system that ran before it, and the timing splits the steps that followed the other system from
    those that followed the same one."""
    import statistics

    times = {name: [] for name in systems}
    after = {name: [] for name in systems}
    for name, s in systems.items():
        t0 = time.perf_counter()
        s["sync"](s["one"]())
        s["info"]["first_s"] = time.perf_counter() - t0
        for _ in range(warmup):
            s["sync"](s["one"]())
    # Warm-up ended with the last system, so the timed rounds start with it (B A, A B, ...): with an even number
    # of rounds each system then follows the other in exactly half of its steps.
    order = list(systems)
    previous = order[-1]
    for i in range(iters):
        for name in (order[::-1] if i % 2 == 0 else order):
            s = systems[name]
            t0 = time.perf_counter()
            s["sync"](s["one"]())
            times[name].append(time.perf_counter() - t0)
            after[name].append(previous)
            previous = name
            print(f"  {name} step {times[name][-1]:.2f}s (after {after[name][-1]}, load {os.getloadavg()[0]:.1f})",
                  file=sys.stderr, flush=True)
    out = {}
    for name, t in times.items():
        out[name] = {"median_s": statistics.median(t), "mean_s": statistics.fmean(t), "min_s": min(t),
                     "iters": iters, "step_s": t, "step_after": after[name]}
        for label, same in (("after_other", False), ("after_self", True)):
            split = [x for x, prev in zip(t, after[name]) if (prev == name) == same]
            if split:
                out[name][f"median_s_{label}"] = statistics.median(split)
    return out


def peak_memory_gb() -> dict:
    """This process's peak host RSS (and the accelerator's peak bytes, where it reports them)."""
    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}
    try:
        import torch  # reason: the PyTorch side's own device peak, when it ran on CUDA

        if torch.cuda.is_available():
            out["peak_device_gb"] = torch.cuda.max_memory_allocated() / 1e9
    except ImportError:
        pass
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("peak_bytes_in_use"):
        out["peak_device_gb"] = max(out.get("peak_device_gb", 0.0), stats["peak_bytes_in_use"] / 1e9)
    return out


def measure_alone(args, system: str) -> dict:
    """Peak memory of `system` alone: a child process builds it and runs two steps (`--memory-of`)."""
    cmd = [sys.executable, "-m", "benchmarks.train_step", *(sys.argv[1:] if args.argv is None else args.argv),
           "--memory-of", system]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MEMORY_TAG)]
    if done.returncode or not lines:
        return {"memory_error": (done.stderr or done.stdout)[-2000:]}
    return json.loads(lines[-1][len(MEMORY_TAG):])


def build_systems(config, args, batch_np: dict, only: list[str]) -> dict:
    """The requested systems, PyTorch first (its cached memory is returned; JAX's pool would not be)."""
    systems = {}
    if "torch" in only:
        systems["torch"] = torch_system(config, batch_np, microbatches=args.microbatches)
    if "jax" in only:
        jbatch = synthetic_batch(args.batch, args.seq, config.vocab_size, doc=args.packed_doc)
        systems["jax"] = jax_system(config, jbatch, microbatches=args.microbatches, loss=args.loss)
    return systems


def memory_child(config, args, batch_np: dict) -> None:
    """--memory-of: build one system, run two steps, print its peak memory as one tagged JSON line."""
    base = peak_memory_gb()["peak_rss_gb"]
    s = build_systems(config, args, batch_np, [args.memory_of])[args.memory_of]
    for _ in range(2):
        s["sync"](s["one"]())
    print(MEMORY_TAG + json.dumps({**peak_memory_gb(), "rss_at_import_gb": base}), flush=True)


def add_rates(row: dict, tokens: int, flops_per_token: float, ceiling_tflops: float | None) -> dict:
    """tokens/s, model TFLOP/s and the fraction of the measured matmul ceiling."""
    s = row["median_s"]
    row["tokens_per_s"] = tokens / s
    row["model_tflops"] = tokens * flops_per_token / s / 1e12
    if ceiling_tflops:
        row["of_matmul_ceiling"] = row["model_tflops"] / ceiling_tflops
    return row


def parse(argv=None):
    """The flags (see the module docstring); `argv` is kept so the memory children get the same ones."""
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default=None, help="model shape (default tinyllama-1b)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default 4096; tiny 64)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default 4; tiny 2)")
    p.add_argument("--microbatches", type=int, default=1, help="gradient accumulation (both systems)")
    p.add_argument("--dtype", default=None, help="compute dtype (default float32 on a CPU, bfloat16 elsewhere)")
    # dots_no_batch keeps every projection output (no matmul recompute) but never attention internals:
    # with the XLA blockwise backend "dots" would also save its score blocks (see BENCHMARKS.md, memory).
    p.add_argument("--remat", default=None,
                   help="sciriff-jax remat policy (default dots_no_batch; on a CPU too: at the SmolLM2-135M shape it "
                        "is faster than none, BENCHMARKS.md section 9.6)")
    p.add_argument("--attention", default="auto", help="sciriff-jax attention backend")
    p.add_argument("--loss", choices=("chunked", "plain"), default="chunked",
                   help="sciriff-jax loss: chunked (train/losses.py) or plain full [B, L, V] logits (the old step)")
    p.add_argument("--packed-doc", type=int, default=None,
                   help="pack documents of this many tokens into each row (sciriff-jax only; default unpacked)")
    p.add_argument("--systems", default="jax,torch", help="comma-separated subset of jax,torch")
    p.add_argument("--no-memory", action="store_true", help="skip the per-system peak-memory child processes")
    p.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="trace --profile-calls more sciriff-jax steps into DIR (jax.profiler) and list the top ops")
    p.add_argument("--profile-calls", type=int, default=3, help="steps the --profile trace covers")
    args = p.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    args.shape = args.shape or ("tiny" if args.tiny else "tinyllama-1b")
    tiny = args.shape == "tiny"
    args.seq = args.seq or (64 if tiny else 4096)
    args.batch = args.batch or (2 if tiny else 4)
    return args


def model_config(args):
    """The LlamaConfig of --shape with the run's dtype, remat and attention (CPU: float32)."""
    import jax

    from sciriff_jax.model.config import LlamaConfig

    cpu = jax.default_backend() == "cpu"
    args.dtype = args.dtype or ("float32" if cpu else "bfloat16")
    args.remat = args.remat or "dots_no_batch"
    return LlamaConfig(**SHAPES[args.shape], remat_policy=args.remat, attention_backend=args.attention,
                       max_position=max(4096, args.seq), dtype=args.dtype)


def rows_of(systems: dict, timings: dict, memory: dict) -> list[dict]:
    """One result row per system: what ran, its timing, its final loss and its own peak memory."""
    rows = []
    for name, s in systems.items():
        rows.append({**s["info"], **timings[name], "final_loss": s["loss"](), **memory.get(name, {})})
    return rows


def main(argv=None) -> dict:
    """Run the training-step benchmark; returns the JSON payload."""
    args = parse(argv)
    warmup, iters = common.iters_of(args)
    config = model_config(args)
    batch = synthetic_batch(args.batch, args.seq, config.vocab_size)
    only = args.systems.split(",")
    if args.memory_of:
        return memory_child(config, args, batch)
    memory = {} if args.no_memory else {name: measure_alone(args, name) for name in only}
    load_before = os.getloadavg()
    systems = build_systems(config, args, batch, only)
    timings = interleaved(systems, warmup=warmup, iters=iters)
    load_after = os.getloadavg()
    if args.profile and "jax" in systems:
        top = common.profile_calls(systems["jax"]["one"], directory=args.profile, calls=args.profile_calls)
        systems["jax"]["info"]["profile_top"] = top
        print(common.format_table(top, ["op", "ms_per_call", "share"]))
    rows = rows_of(systems, timings, memory)
    del systems
    gc.collect()
    return finish(args, config, rows, {"load_avg_before": load_before, "load_avg_after": load_after})


def finish(args, config, rows: list[dict], extra: dict) -> dict:
    """Rates, the ratios to transformers (speed and memory), the table and the JSON."""
    tokens = args.seq * args.batch
    fpt = config.flops_per_token(args.seq)
    ceiling = None if args.dtype == "float32" else common.matmul_ceiling(args.shape == "tiny")["tflops"]
    for r in rows:
        add_rates(r, tokens, fpt, ceiling)
    torch_rows = [r for r in rows if r["system"].startswith("transformers")]
    for r in rows:
        if torch_rows:
            r["vs_transformers"] = r["tokens_per_s"] / torch_rows[0]["tokens_per_s"]
            if r.get("peak_rss_gb") and torch_rows[0].get("peak_rss_gb"):
                r["rss_vs_transformers"] = r["peak_rss_gb"] / torch_rows[0]["peak_rss_gb"]
    cols = ["system", "tokens_per_s", "vs_transformers", "median_s", "median_s_after_other", "median_s_after_self",
            "first_s", "peak_rss_gb", "rss_vs_transformers", "peak_device_gb", "final_loss"]
    return common.report("training step", args, rows, cols, extra={
        "model": config.to_dict(), "shape": args.shape, "num_params": config.num_params(), "flops_per_token": fpt,
        "tokens_per_step": tokens, "microbatches": args.microbatches, **extra})


if __name__ == "__main__":
    main()
