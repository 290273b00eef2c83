"""Attention forward+backward per backend, unpacked and packed, against cuDNN causal on separate rows.

For each row length (4K / 16K / 32K) and each backend of `sciriff_jax.model.attention.attention`:
  * "unpacked": one causal document per row;
  * "packed": documents of --doc tokens packed into the row (segment ids);
  * "separate rows": the same documents as a batch of short causal rows through cuDNN (the reference
    on CPU), the baseline packed attention must reach (issue 8: >= 90% of its useful-FLOP throughput).
`ring` needs a multi-device `context` mesh axis and is not timed on one card; `splash` only on TPU.
Useful FLOPs count only what a document needs (per-document causal); "row TFLOP/s" counts the whole
row as one causal document (the ANCHORS.md convention for masked paths).

  python -m benchmarks.attention --out attention.json            # GPU: anchor shape, 4K/16K/32K
  python -m benchmarks.attention --tiny --out /tmp/attention.json # CPU smoke
"""
from __future__ import annotations

import sys

from benchmarks import common

# Materialising backends above this many bytes of fp32 scores are skipped rather than run out of memory.
_SCORE_BYTES_LIMIT = 24 * 2 ** 30


def default_backends(platform: str) -> list[str]:
    """The backends worth timing on this platform (fused kernels only where they exist)."""
    if platform == "gpu":
        return ["reference", "blockwise", "cudnn"]
    if platform == "tpu":
        return ["reference", "blockwise", "splash"]
    return ["reference", "blockwise"]


def baseline_backend(platform: str) -> str:
    """cuDNN causal on a GPU; elsewhere the reference path stands in (so the CPU smoke runs the same code)."""
    return {"gpu": "cudnn", "tpu": "splash"}.get(platform, "reference")


def make_inputs(batch: int, seq: int, heads: int, kv_heads: int, head_dim: int, dtype, seed: int = 0):
    """Random q [B,S,H,D], k/v [B,S,KV,D] and an output cotangent, in `dtype`."""
    import jax

    kq, kk, kv, kd = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(kq, (batch, seq, heads, head_dim), dtype)
    k = jax.random.normal(kk, (batch, seq, kv_heads, head_dim), dtype)
    v = jax.random.normal(kv, (batch, seq, kv_heads, head_dim), dtype)
    dout = jax.random.normal(kd, (batch, seq, heads, head_dim), dtype)
    return q, k, v, dout


def packed_segments(batch: int, seq: int, doc: int):
    """Segment ids [B, S]: 1, 1, ..., 2, 2, ... one id per `doc`-token document."""
    import jax.numpy as jnp

    ids = (jnp.arange(seq, dtype=jnp.int32) // doc) + 1
    return jnp.broadcast_to(ids, (batch, seq))


def fwd_bwd_fn(backend: str, packed: bool):
    """jit(q, k, v, dout, seg) -> (dq, dk, dv): forward then backward through `attention`."""
    import jax

    from sciriff_jax.model.attention import attention

    def run(q, k, v, dout, seg):
        def fwd(q, k, v):
            return attention(q, k, v, segment_ids=seg if packed else None, causal=True, backend=backend)

        _, vjp = jax.vjp(fwd, q, k, v)
        return vjp(dout)

    return jax.jit(run)


def to_separate_rows(x, doc: int):
    """[B, S, ...] -> [B * S/doc, doc, ...]: each packed document as its own row."""
    b, s = x.shape[:2]
    return x.reshape((b * (s // doc), doc) + x.shape[2:])


def bench_row(*, seq, layout, backend, q, k, v, dout, doc, heads, head_dim, warmup, iters) -> dict:
    """Time one (seq, layout, backend) case; failures and skips become rows with a reason."""
    import jax.numpy as jnp

    batch = q.shape[0]
    row = {"seq": seq, "layout": layout, "backend": backend, "doc": doc if layout != "unpacked" else seq}
    useful = (common.causal_attention_flops(seq, heads, head_dim, batch) if layout == "unpacked"
              else common.packed_useful_flops(seq, doc, heads, head_dim, batch))
    row["useful_gflop"] = useful / 1e9
    scores_len = doc if layout == "separate rows" else seq
    if backend == "reference" and batch * heads * scores_len ** 2 * 4 > _SCORE_BYTES_LIMIT:
        gib = batch * heads * scores_len ** 2 * 4 / 2 ** 30
        row["status"] = f"skipped: reference materialises {gib:.0f} GiB of scores"
        return row
    seg = packed_segments(batch, seq, doc) if layout == "packed" else jnp.zeros((batch, seq), jnp.int32)
    args = (q, k, v, dout, seg)
    if layout == "separate rows":
        args = tuple(to_separate_rows(x, doc) for x in args)
    fn = fwd_bwd_fn(backend, packed=(layout == "packed"))
    try:
        t = common.time_calls(lambda: fn(*args), warmup=warmup, iters=iters, label=f"{seq} {layout} {backend}")
    except Exception as e:  # noqa: BLE001 - a backend missing on this platform is a row, not a crash
        row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        return row
    row.update(status="ok", ms=t["median_s"] * 1e3, compile_s=t["first_s"],
               useful_tflops=useful / t["median_s"] / 1e12,
               row_tflops=common.causal_attention_flops(seq, heads, head_dim, batch) / t["median_s"] / 1e12)
    return row


def add_ratios(rows: list[dict]) -> None:
    """packed_vs_separate: useful throughput of each packed row / that of the separate-rows baseline."""
    base = {r["seq"]: r for r in rows if r["layout"] == "separate rows" and r.get("status") == "ok"}
    for r in rows:
        b = base.get(r["seq"])
        if r["layout"] == "packed" and r.get("status") == "ok" and b:
            r["packed_vs_separate"] = r["useful_tflops"] / b["useful_tflops"]


def main(argv=None) -> dict:
    """Run the attention benchmark; returns the JSON payload."""
    import jax
    import jax.numpy as jnp

    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--seqs", default=None, help="comma-separated row lengths (default 4096,16384,32768; tiny 256,512)")
    p.add_argument("--doc", type=int, default=None, help="packed document length (default 1024; tiny 64)")
    # Default shape: the ANCHORS.md attention shape (32 query heads, 8 KV heads, head dim 128).
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--head-dim", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backends", default=None, help="comma-separated (default: every backend this platform has)")
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args(argv)
    warmup, iters = common.iters_of(args)
    tiny = args.tiny
    seqs = [int(s) for s in (args.seqs or ("256,512" if tiny else "4096,16384,32768")).split(",")]
    args.doc = args.doc or (64 if tiny else 1024)
    args.heads = args.heads or (4 if tiny else 32)
    args.kv_heads = args.kv_heads or (2 if tiny else 8)
    args.head_dim = args.head_dim or (16 if tiny else 128)
    platform = jax.default_backend()
    backends = args.backends.split(",") if args.backends else default_backends(platform)
    base = baseline_backend(platform)
    dtype = jnp.dtype(args.dtype)
    rows = []
    for seq in seqs:
        if seq % args.doc:
            sys.exit(f"benchmarks.attention: --seqs value {seq} is not a multiple of --doc {args.doc}.")
        q, k, v, dout = make_inputs(args.batch, seq, args.heads, args.kv_heads, args.head_dim, dtype)
        common_kw = dict(seq=seq, q=q, k=k, v=v, dout=dout, doc=args.doc, heads=args.heads,
                         head_dim=args.head_dim, warmup=warmup, iters=iters)
        rows.append(bench_row(layout="separate rows", backend=base, **common_kw))
        for backend in backends:
            for layout in ("unpacked", "packed"):
                rows.append(bench_row(layout=layout, backend=backend, **common_kw))
    add_ratios(rows)
    cols = ["seq", "layout", "backend", "ms", "useful_tflops", "row_tflops", "packed_vs_separate", "status"]
    return common.report("attention fwd+bwd", args, rows, cols,
                         extra={"shape": {"batch": args.batch, "heads": args.heads, "kv_heads": args.kv_heads,
                                          "head_dim": args.head_dim, "dtype": args.dtype, "doc": args.doc}})


if __name__ == "__main__":
    main()
