"""Shared benchmark plumbing: the 1.1B shape, timing, FLOP formulas, environment record, table + JSON output.

Imports only jax/numpy at module level so every benchmark runs on a GPU box without TensorFlow or SeqIO.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

# JAX must not grab 75% of the GPU up front: the PyTorch side of a benchmark shares the card in the same run.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# TinyLlama-1.1B shape (issue 8 / ANCHORS.md): the shape every full-size benchmark uses.
TINYLLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22,
                    num_heads=32, num_kv_heads=4)
# CPU smoke shape: same structure (GQA, several layers), small enough to step in well under a second.
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_layers=2, num_heads=4, num_kv_heads=2)


def model_config(tiny: bool, **overrides):
    """The sciriff-jax LlamaConfig for the 1.1B shape (or the tiny smoke shape)."""
    from sciriff_jax.model.config import LlamaConfig

    shape = dict(TINY if tiny else TINYLLAMA_1B)
    shape.update(overrides)
    return LlamaConfig(**shape)


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark shares (--tiny, --out, --iters, --warmup)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="CPU smoke shapes (seconds); default is the real shape")
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default: 10, or 2 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations after compile (default 2 / 1)")
    return p


def iters_of(args) -> tuple[int, int]:
    """(warmup, iters) from the parsed flags, with smaller defaults under --tiny."""
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    iters = args.iters if args.iters is not None else (2 if args.tiny else 10)
    return warmup, iters


def block(x):
    """Wait for every jax.Array in a pytree (torch callers pass their own sync)."""
    import jax

    return jax.block_until_ready(x)


def time_calls(step: Callable[[], Any], *, warmup: int, iters: int, sync: Callable[[Any], Any] = block,
               label: str = "") -> dict[str, float]:
    """Run `step` warmup+iters times, syncing after each; returns median/mean/min seconds per call.

    The first call (compilation) is timed separately as `first_s` so compile time never pollutes the steady state.
    """
    t0 = time.perf_counter()
    sync(step())
    first = time.perf_counter() - t0
    for _ in range(warmup):
        sync(step())
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        sync(step())
        times.append(time.perf_counter() - t0)
    if label:
        print(f"  {label}: first call {first:.2f}s, median {statistics.median(times) * 1e3:.2f} ms "
              f"over {iters} calls", file=sys.stderr, flush=True)
    return {"first_s": first, "median_s": statistics.median(times), "mean_s": statistics.fmean(times),
            "min_s": min(times), "iters": iters}


def profile_calls(step: Callable[[], Any], *, directory: str, calls: int = 3, sync: Callable[[Any], Any] = block,
                  top: int = 12) -> list[dict]:
    """Trace `calls` more calls with jax.profiler into `directory` and return the top ops by time.

    Device ops (GPU streams / TPU cores) are ranked where the trace has them, else the XLA CPU thread's.
    The full trace (Perfetto / TensorBoard) stays in `directory`: the profile evidence issue 8 asks for.
    """
    import collections
    import glob
    import gzip

    import jax

    with jax.profiler.trace(directory):
        for _ in range(calls):
            sync(step())
    traces = sorted(glob.glob(os.path.join(directory, "plugins", "profile", "*", "*.trace.json.gz")))
    if not traces:
        return []
    events = json.load(gzip.open(traces[-1]))["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    device_pids = {pid for pid, name in procs.items() if name.startswith("/device:")}

    def on_device(e):
        if device_pids:
            return e["pid"] in device_pids
        return "XLA" in threads.get((e["pid"], e["tid"]), "")

    totals = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e and on_device(e):
            totals[e["name"]] += e["dur"]
    whole = sum(totals.values()) or 1.0
    return [{"op": name[:80], "ms_per_call": us / calls / 1e3, "share": us / whole}
            for name, us in totals.most_common(top)]


# ---- FLOP and byte formulas (ANCHORS.md definitions) ----------------------------------------------

def causal_attention_flops(seq: int, heads: int, head_dim: int, batch: int = 1, backward: bool = True) -> float:
    """Causal attention FLOPs of one row: forward 2*B*H*S^2*D (half of QK^T + PV), fwd+bwd 3.5x that."""
    fwd = 2.0 * batch * heads * seq * seq * head_dim
    return fwd * 3.5 if backward else fwd


def packed_useful_flops(row: int, doc: int, heads: int, head_dim: int, batch: int = 1,
                        backward: bool = True) -> float:
    """Useful FLOPs of a row packed with documents of `doc` tokens: the sum of per-document causal FLOPs."""
    n_docs, rest = divmod(row, doc)
    total = n_docs * causal_attention_flops(doc, heads, head_dim, batch, backward)
    if rest:
        total += causal_attention_flops(rest, heads, head_dim, batch, backward)
    return total


def matmul_ceiling(tiny: bool, iters: int = 10) -> dict[str, float]:
    """Measured bf16 matmul TFLOP/s (8192^3 on an accelerator, 512^3 under --tiny): the MFU denominator."""
    import jax
    import jax.numpy as jnp

    n = 512 if tiny else 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    t = time_calls(lambda: f(a, b), warmup=2, iters=iters)
    return {"n": n, "median_s": t["median_s"], "tflops": 2.0 * n ** 3 / t["median_s"] / 1e12}


# ---- environment, tables, JSON ---------------------------------------------------------------------

def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Device, library versions, date and command line: what BENCHMARKS.md must record with each figure."""
    import jax

    dev = jax.devices()[0]
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([os.path.basename(sys.executable), "-m", _module_name()] + sys.argv[1:]),
        "jax_backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "host": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "transformers", "seqio"):
        env[pkg] = _version(pkg)
    try:
        import torch

        if torch.cuda.is_available():
            env["torch_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return env


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return spec.name
    return pathlib.Path(sys.argv[0]).stem


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of `rows` restricted to `columns` (floats to 4 significant digits)."""

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def report(name: str, args, rows: list[dict[str, Any]], columns: Sequence[str], extra: dict | None = None) -> dict:
    """Print the table and, with --out, write {benchmark, environment, args, rows, ...extra} as JSON."""
    payload = {"benchmark": name, "environment": environment(), "args": vars(args), "rows": rows}
    payload.update(extra or {})
    print(f"\n## {name}  ({payload['environment']['device']}, {payload['environment']['date_utc']} UTC)\n")
    print(format_table(rows, columns))
    if args.out:
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\nwrote {path}")
    return payload
