"""What the hardware allows, without the hardware: FLOP and byte counts, and the real train step's compiled memory.

For the TinyLlama-1.1B shape at (seq 4096, batch 4) and (seq 32768, batch 1):
  1. parameters, model FLOPs per token / per step, and what the issue-8 targets mean in tokens/s;
  2. attention FLOPs per step, unpacked vs packed (documents of 1,024 tokens);
  3. the decoding case's bytes moved per step (weights + KV cache) -> the memory-bandwidth floor;
  4. per remat policy: the residuals the backward pass keeps (jaxpr level, backend-independent) and
     XLA's memory analysis of the compiled real train step (`sciriff_jax.train.step.make_train_step`) on
     CPU, from abstract inputs (nothing big is allocated), against 80 GB / 141 GB;
  5. HLO FLOPs of one layer from XLA's cost analysis (1- and 2-layer unrolled steps, extrapolated).
Runs on CPU; no GPU needed.

  python -m benchmarks.analysis --out analysis.json
  python -m benchmarks.analysis --tiny --out /tmp/analysis.json   # smoke (tiny model, seconds)
"""
from __future__ import annotations

import sys
import time

from benchmarks import common

# Vendor peak HBM bandwidth (bytes/s) and the ANCHORS.md measured bf16 matmul ceiling (H200 only).
HBM_BANDWIDTH = {"H100 SXM (80 GB, 3.35 TB/s)": 3.35e12, "H200 (141 GB, 4.8 TB/s)": 4.8e12}
DEVICE_MEMORY = {"H100 80 GB": 80e9, "H200 141 GB": 141e9}
ANCHOR_MATMUL_TFLOPS = 785.0  # ANCHORS.md: 8192^3 bf16 through JAX on one H200
ANCHOR_HF_TRAIN_TOKENS = 44757.0  # ANCHORS.md: transformers eager, same shape, H200
ANCHOR_HF_DECODE_TOKENS = 470.0  # ANCHORS.md: transformers generate, batch 32, H200

CASES = [(4096, 4), (32768, 1)]
TINY_CASES = [(64, 2), (128, 1)]
BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
              "decoder_positions")


def shape_rows(config, cases) -> list[dict]:
    """Parameters, model FLOPs per token/step and the issue-8 training targets in tokens/s."""
    rows = []
    for seq, batch in cases:
        fpt = config.flops_per_token(seq)
        tokens = seq * batch
        attn_share = 6.0 * config.num_layers * config.hidden_size * seq / fpt
        rows.append({
            "seq": seq, "batch": batch, "tokens_per_step": tokens, "params": config.num_params(),
            "params_no_embedding": config.num_params(include_embedding=False),
            "gflop_per_token": fpt / 1e9, "tflop_per_step": fpt * tokens / 1e12,
            "attention_share": attn_share,
            # 60% of the anchor's measured matmul ceiling, expressed as tokens/s at this shape.
            "target_60pct_ceiling_tokens_s": 0.6 * ANCHOR_MATMUL_TFLOPS * 1e12 / fpt,
        })
    return rows


def attention_rows(config, cases, doc: int) -> list[dict]:
    """Causal attention FLOPs (fwd+bwd, 3.5x forward) of all layers per step: whole rows vs packed documents."""
    rows = []
    for seq, batch in cases:
        h, d, layers = config.num_heads, config.head_dim, config.num_layers
        unpacked = layers * common.causal_attention_flops(seq, h, d, batch)
        packed = layers * common.packed_useful_flops(seq, min(doc, seq), h, d, batch)
        model = config.flops_per_token(seq) * seq * batch
        rows.append({"seq": seq, "batch": batch, "doc": min(doc, seq),
                     "unpacked_tflop": unpacked / 1e12, "packed_useful_tflop": packed / 1e12,
                     "masked_waste_if_unskipped": 1.0 - packed / unpacked,
                     "unpacked_of_model_flops": unpacked / model, "packed_of_model_flops": packed / model})
    return rows


def decode_rows(config, *, batch: int, prompt: int, new: int, weight_bytes: int = 2, kv_bytes: int = 2) -> list[dict]:
    """Bytes each greedy step must read (weights + KV cache) and the resulting tokens/s ceiling per card."""
    # The embedding table is gathered (batch rows read), not streamed; the untied lm_head is streamed.
    streamed = config.num_params() - config.vocab_size * config.hidden_size
    weights = streamed * weight_bytes
    kv_per_token = config.num_layers * 2 * config.num_kv_heads * config.head_dim * kv_bytes
    mean_ctx = prompt + (new - 1) / 2.0
    kv = batch * mean_ctx * kv_per_token
    step_bytes = weights + kv
    # Prefill is compute-bound: 2 FLOPs per weight per prompt token plus causal attention.
    prefill_flops = (2.0 * streamed * batch * prompt
                     + config.num_layers * common.causal_attention_flops(prompt, config.num_heads, config.head_dim,
                                                                         batch, backward=False))
    rows = []
    for card, bw in HBM_BANDWIDTH.items():
        step_s = step_bytes / bw
        prefill_s = prefill_flops / (ANCHOR_MATMUL_TFLOPS * 1e12)
        rows.append({
            "card": card, "batch": batch, "prompt": prompt, "new_tokens": new,
            "weights_gb": weights / 1e9, "kv_cache_gb_mean": kv / 1e9, "bytes_per_step_gb": step_bytes / 1e9,
            "step_floor_ms": step_s * 1e3, "decode_tokens_s_ceiling": batch / step_s,
            "prefill_floor_ms": prefill_s * 1e3,
            "end_to_end_tokens_s_ceiling": batch * new / (prefill_s + new * step_s),
            "target_20x_hf_anchor": 20 * ANCHOR_HF_DECODE_TOKENS,
        })
    return rows


def abstract_batch(batch: int, seq: int) -> dict:
    """ShapeDtypeStructs for a training batch (the docs/design.md contract)."""
    import jax
    import jax.numpy as jnp

    return {k: jax.ShapeDtypeStruct((batch, seq), jnp.int32) for k in BATCH_KEYS}


def residual_bytes(config, seq: int, batch: int) -> dict:
    """Bytes the forward pass keeps for the backward pass under config.remat_policy (params excluded).

    Computed from the jaxpr (`jax._src.ad_checkpoint.saved_residuals`, private: the public
    `print_saved_residuals` only prints), so it is the same on every backend.
    """
    from jax._src.ad_checkpoint import saved_residuals

    from sciriff_jax.model.llama import Llama, param_shapes
    from sciriff_jax.train.step import make_loss_fn

    loss = make_loss_fn(Llama(config))
    residuals = saved_residuals(lambda p, b: loss(p, b)[0], param_shapes(config), abstract_batch(batch, seq))
    total, largest = 0, []
    for aval, why in residuals:
        if "from the argument" in why:
            continue  # parameters and batch: already counted as arguments
        nbytes = int(aval.size) * aval.dtype.itemsize
        total += nbytes
        largest.append((nbytes, aval.str_short()))
    largest.sort(reverse=True)
    return {"residual_gb": total / 1e9, "largest_residuals": [f"{s} ({n / 1e9:.2f} GB)" for n, s in largest[:6]]}


def compiled_memory(config, seq: int, batch: int) -> dict:
    """XLA's memory analysis (and compile time) of the real train step compiled for CPU from abstract inputs."""
    import jax
    import optax

    from sciriff_jax.model.llama import Llama, param_shapes
    from sciriff_jax.train.step import make_train_step

    tx = optax.adamw(1e-5)
    params = param_shapes(config)
    opt_state = jax.eval_shape(tx.init, params)
    step = make_train_step(Llama(config), tx)
    t0 = time.perf_counter()
    compiled = step.jitted.lower(params, opt_state, abstract_batch(batch, seq)).compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    args, temps = m.argument_size_in_bytes, m.temp_size_in_bytes
    # Outputs alias the donated params/opt state, so the live peak is arguments + temporaries + unaliased outputs.
    outs = m.output_size_in_bytes - m.alias_size_in_bytes
    return {"compile_s": seconds, "arguments_gb": args / 1e9, "temporaries_gb": temps / 1e9,
            "outputs_unaliased_gb": outs / 1e9, "cpu_compiled_total_gb": (args + temps + outs) / 1e9}


def memory_rows(config, cases, policies, attention_backend: str) -> list[dict]:
    """Per (case, remat policy): residuals, compiled CPU memory and a lower bound for an accelerator."""
    rows = []
    param_bytes = config.num_params() * 4  # fp32 master params; gradients are the same size
    for seq, batch in cases:
        for policy in policies:
            cfg = config.replace(remat_policy=policy, attention_backend=attention_backend,
                                 max_position=max(config.max_position, seq))
            print(f"  memory: seq {seq} batch {batch} remat={policy} ...", file=sys.stderr, flush=True)
            row = {"seq": seq, "batch": batch, "remat": policy, "attention": attention_backend}
            row.update(residual_bytes(cfg, seq, batch))
            row.update(compiled_memory(cfg, seq, batch))
            # Lower bound anywhere: params + AdamW moments (arguments) + fp32 gradients + saved residuals.
            lower = row["arguments_gb"] + param_bytes / 1e9 + row["residual_gb"]
            row["lower_bound_gb"] = lower
            for card, cap in DEVICE_MEMORY.items():
                row[f"fits {card}"] = ("yes" if row["cpu_compiled_total_gb"] * 1e9 <= cap else
                                       "bound only" if lower * 1e9 <= cap else "no")
            rows.append(row)
    return rows


def hlo_flop_rows(config, seq: int, batch: int) -> list[dict]:
    """Train-step FLOPs from XLA's cost analysis of 1- and 2-layer unrolled steps, extrapolated to all layers.

    Unrolled because XLA's cost analysis counts a while-loop (scan) body once, not once per trip.
    Reference attention computes every masked score, so its HLO count is the full (non-causal) S^2 work.
    """
    import jax
    import optax

    from sciriff_jax.model.llama import Llama, param_shapes
    from sciriff_jax.train.step import make_train_step

    counts = {}
    for layers in (1, 2):
        cfg = config.replace(num_layers=layers, scan_layers=False, remat_policy="none", attention_backend="reference",
                             max_position=max(config.max_position, seq))
        tx = optax.adamw(1e-5)
        params = param_shapes(cfg)
        step = make_train_step(Llama(cfg), tx)
        # The lowered (pre-optimisation) module: platform-independent, and no CPU compile needed.
        lowered = step.jitted.lower(params, jax.eval_shape(tx.init, params), abstract_batch(batch, seq))
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        counts[layers] = float(cost["flops"])
    per_layer = counts[2] - counts[1]
    outside = counts[1] - per_layer
    total = outside + per_layer * config.num_layers
    formula = config.flops_per_token(seq) * seq * batch
    return [{"seq": seq, "batch": batch, "hlo_gflop_per_layer": per_layer / 1e9,
             "hlo_gflop_outside_layers": outside / 1e9, "hlo_tflop_per_step": total / 1e12,
             "formula_tflop_per_step": formula / 1e12, "hlo_over_formula": total / formula}]


def main(argv=None) -> dict:
    """Run every analysis and print its tables; returns the JSON payload."""
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--policies", default="none,full,dots_no_batch,dots",
                   help="remat policies to compile (LlamaConfig.remat_policy values)")
    p.add_argument("--attention", default="blockwise",
                   help="attention backend compiled on CPU: blockwise is the O(S)-memory stand-in for cuDNN")
    p.add_argument("--doc", type=int, default=None, help="packed document length (default 1024; tiny 32)")
    p.add_argument("--skip-compile", action="store_true", help="only the closed-form tables")
    p.add_argument("--memory-cases", type=int, default=None,
                   help="compile the memory table for only the first N (seq, batch) cases")
    args = p.parse_args(argv)
    config = common.model_config(args.tiny)
    cases = TINY_CASES if args.tiny else CASES
    args.doc = args.doc or (32 if args.tiny else 1024)
    tables = {
        "shape": shape_rows(config, cases),
        "attention_flops": attention_rows(config, cases, args.doc),
        "decode_bytes": decode_rows(config, batch=4 if args.tiny else 32, prompt=64 if args.tiny else 1024,
                                    new=16 if args.tiny else 256),
    }
    if not args.skip_compile:
        tables["memory"] = memory_rows(config, cases[:args.memory_cases], args.policies.split(","), args.attention)
        seq, batch = cases[0]
        tables["hlo_flops"] = hlo_flop_rows(config, seq, batch)
    columns = {
        "shape": ["seq", "batch", "params", "gflop_per_token", "tflop_per_step", "attention_share",
                  "target_60pct_ceiling_tokens_s"],
        "attention_flops": ["seq", "batch", "doc", "unpacked_tflop", "packed_useful_tflop",
                            "masked_waste_if_unskipped", "unpacked_of_model_flops", "packed_of_model_flops"],
        "decode_bytes": ["card", "weights_gb", "kv_cache_gb_mean", "bytes_per_step_gb", "step_floor_ms",
                         "decode_tokens_s_ceiling", "prefill_floor_ms", "end_to_end_tokens_s_ceiling"],
        "memory": ["seq", "batch", "remat", "residual_gb", "arguments_gb", "temporaries_gb", "cpu_compiled_total_gb",
                   "lower_bound_gb"] + [f"fits {c}" for c in DEVICE_MEMORY] + ["compile_s"],
        "hlo_flops": ["seq", "batch", "hlo_gflop_per_layer", "hlo_gflop_outside_layers", "hlo_tflop_per_step",
                      "formula_tflop_per_step", "hlo_over_formula"],
    }
    for name, rows in tables.items():
        if name != "shape":
            print(f"\n### {name}\n")
            print(common.format_table(rows, columns[name]))
    return common.report("analysis", args, tables["shape"], columns["shape"],
                         extra={"tables": tables, "model": config.to_dict(),
                                "anchors": {"matmul_tflops": ANCHOR_MATMUL_TFLOPS,
                                            "hf_train_tokens_s": ANCHOR_HF_TRAIN_TOKENS,
                                            "hf_decode_tokens_s": ANCHOR_HF_DECODE_TOKENS}})


if __name__ == "__main__":
    main()
