"""The training step's two largest parts, each timed forward + backward against PyTorch's at the same shape.

* head: the output head and the cross entropy over the whole vocabulary, from final hidden states [B, L, D]:
  `train/losses.token_loss_sums` (the SFT loss: gradients computed in the forward pass), the same loss through
  `token_logprobs` (the log-probability path, which recomputes each chunk's logits in its backward pass: the SFT
  loss before issue 27), and `torch.nn.functional.cross_entropy` over full logits.
* attention: causal grouped-query attention, `reference` and `blockwise` at several tile sizes (what `auto`
  chooses on this platform is marked), and `torch.nn.functional.scaled_dot_product_attention`.

Each pair runs in one process, back to back, so a shared machine's load falls on both; the load is recorded.

  python -m benchmarks.train_parts --shape smollm2-135m --seq 1024 --batch 4 --out benchmarks/results/train_parts_cpu.json
  python -m benchmarks.train_parts --sweep 256,512,1024,2048,4096 --out benchmarks/results/attention_tiles_cpu.json
  python -m benchmarks.train_parts --tiny                     # CPU smoke (seconds)
"""
from __future__ import annotations

import os

from benchmarks import common
from benchmarks.train_step import SHAPES


def parse(argv=None):
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default 1024; tiny 64)")
    p.add_argument("--batch", type=int, default=None, help="rows (default 4; tiny 2)")
    p.add_argument("--blocks", default="128,256,512", help="blockwise tile sizes to time (those <= seq)")
    p.add_argument("--sweep", default=None,
                   help="comma-separated row lengths: time only attention at each, batch = seq * batch / length "
                        "(the same tokens per call)")
    return p.parse_args(argv)


def _tiles(args, length: int) -> list[int]:
    """The --blocks tile sizes that fit a row of `length` tokens."""
    return [b for b in (int(s) for s in args.blocks.split(",")) if b <= length]


def _inputs(shape: dict, batch: int, seq: int):
    import numpy as np

    rng = np.random.default_rng(0)
    d, v = shape["hidden_size"], shape["vocab_size"]
    h, kv = shape["num_heads"], shape["num_kv_heads"]
    hd = d // h
    f32 = np.float32
    return {"hidden": rng.standard_normal((batch, seq, d), f32), "head": rng.standard_normal((d, v), f32) * 0.02,
            "targets": rng.integers(0, v, (batch, seq)).astype(np.int32),
            "q": rng.standard_normal((batch, seq, h, hd), f32), "k": rng.standard_normal((batch, seq, kv, hd), f32),
            "v": rng.standard_normal((batch, seq, kv, hd), f32)}


def jax_head_cases(x: dict) -> dict:
    """{name: zero-argument call} of the two jax loss paths' value and gradients (hidden and head)."""
    import jax
    import jax.numpy as jnp

    from sciriff_jax.train import losses

    hidden, head, targets = (jnp.asarray(x[k]) for k in ("hidden", "head", "targets"))
    weights = jnp.full(targets.shape, 1.0 / targets.size, jnp.float32)
    fused = lambda h, w: losses.token_loss_sums(h, w, targets, weights)[0]  # noqa: E731
    logprob = lambda h, w: -jnp.sum(losses.token_logprobs(h, w, targets) * weights)  # noqa: E731
    cases = {}
    for name, f in (("sciriff-jax token_loss_sums (gradients in the forward pass)", fused),
                    ("sciriff-jax token_logprobs (logits recomputed in the backward pass)", logprob)):
        g = jax.jit(jax.value_and_grad(f, (0, 1)))
        cases[name] = lambda g=g: g(hidden, head)
    return cases


def jax_attention_cases(x: dict, blocks: list[int]) -> dict:
    """{name: call} of attention fwd+bwd per backend / tile; the name of what `auto` picks here ends in '(auto)'."""
    import jax
    import jax.numpy as jnp

    from sciriff_jax.model import attention as attn
    from sciriff_jax.model.attention_blockwise import blockwise_attention

    q, k, v = (jnp.asarray(x[n]) for n in "qkv")
    b, length = q.shape[:2]
    seg = jnp.ones((b, length), jnp.int32)
    auto = attn.select_backend("auto", q)
    auto_block = attn.blockwise_tile()
    fns = {"reference": lambda q, k, v: attn.reference_attention(q, k, v, attn.make_mask(length, length, seg))}
    for bs in blocks:
        fns[f"blockwise {bs}"] = lambda q, k, v, bs=bs: blockwise_attention(q, k, v, segment_ids=seg, block_q=bs,
                                                                             block_k=bs)
    cases = {}
    for name, f in fns.items():
        picked = name == "reference" if auto == "reference" else name == f"blockwise {auto_block}"
        g = jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * 1.0001), argnums=(0, 1, 2)))
        cases[f"sciriff-jax {name}" + (" (auto)" if picked else "")] = lambda g=g: g(q, k, v)
    return cases


def torch_cases(x: dict) -> dict:
    """{name: call} of PyTorch's head + cross entropy and SDPA, forward and backward."""
    import torch

    hidden = torch.from_numpy(x["hidden"]).requires_grad_()
    head = torch.from_numpy(x["head"]).requires_grad_()
    targets = torch.from_numpy(x["targets"]).long()
    q, k, v = (torch.from_numpy(x[n]).transpose(1, 2).contiguous().requires_grad_() for n in "qkv")

    def head_loss():
        loss = torch.nn.functional.cross_entropy((hidden @ head).flatten(0, 1), targets.flatten())
        loss.backward()
        hidden.grad = head.grad = None

    def sdpa():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out.sum().backward()
        q.grad = k.grad = v.grad = None

    return {"head": {"transformers-style: full logits + torch cross_entropy": head_loss},
            "attention": {"torch scaled_dot_product_attention (causal, GQA)": sdpa}}


def main(argv=None) -> dict:
    args = parse(argv)
    warmup, iters = common.iters_of(args)
    shape = dict(common.TINY if args.tiny else SHAPES[args.shape])
    seq = args.seq or (64 if args.tiny else 1024)
    batch = args.batch or (2 if args.tiny else 4)
    load_before = os.getloadavg()
    if args.sweep:
        rows = []
        for length in (int(s) for s in args.sweep.split(",")):
            x = _inputs(shape, max(1, seq * batch // length), length)
            for name, call in jax_attention_cases(x, _tiles(args, length)).items():
                t = common.time_calls(call, warmup=warmup, iters=iters, label=f"{length}: {name}")
                rows.append({"part": "attention", "seq": length, "system": name, **t})
        extra = {"shape": shape, "tokens_per_call": seq * batch, "load_avg_before": load_before,
                 "load_avg_after": os.getloadavg()}
        return common.report("attention fwd+bwd by row length", args, rows, ["seq", "system", "median_s"], extra)
    x = _inputs(shape, batch, seq)
    theirs = torch_cases(x)
    rows = []
    for part, ours in (("head", jax_head_cases(x)), ("attention", jax_attention_cases(x, _tiles(args, seq)))):
        (peer_name, peer), = theirs[part].items()
        peer_t = common.time_calls(peer, warmup=warmup, iters=iters, sync=lambda _: None, label=peer_name)
        rows.append({"part": part, "system": peer_name, **peer_t, "vs_torch": 1.0})
        for name, call in ours.items():
            t = common.time_calls(call, warmup=warmup, iters=iters, label=name)
            rows.append({"part": part, "system": name, **t, "vs_torch": peer_t["median_s"] / t["median_s"]})
    extra = {"shape": shape, "batch": batch, "seq": seq, "load_avg_before": load_before,
             "load_avg_after": os.getloadavg()}
    return common.report("training-step parts, forward + backward", args, rows,
                         ["part", "system", "median_s", "vs_torch"], extra)


if __name__ == "__main__":
    main()
