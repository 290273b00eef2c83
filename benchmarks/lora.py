"""LoRA / QLoRA vs full finetuning (issue 24 point 6): compiled step memory at a large shape, and tokens/s here.

  python benchmarks/lora.py memory --out benchmarks/results/lora_memory_8b.json
      AOT-compiles (shapes only, nothing allocated) the full, LoRA and QLoRA (int8, int4) training steps of the
      Llama-3.1-8B shape, one row of 4,096 tokens, on one device of this host's compiler (the CPU's: no GPU here),
      and reports XLA's memory analysis per step beside one 80 GB (H100) and one 141 GB (H200) device.
  python benchmarks/lora.py quant --checkpoint runs/demo --length 512 --out benchmarks/results/lora_quant_demo.json
      The int8 / int4 base's logits vs the base's on the built-in sample's text, through a trained model's own
      tokenizer (the demo run: `sciriff-jax demo`): max and mean error, KL, top-1 agreement, bytes.
  python benchmarks/lora.py speed --out benchmarks/results/lora_speed_cpu.json
      Times the full and the LoRA step at the demo shape (models/tiny.gin) and at the SmolLM-135M shape, in one run
      on this CPU.

The steps are the ones `finetune` runs (train.setup.build / train.lora_train.build).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

LLAMA31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                  num_kv_heads=8, rope_theta=500000.0, max_position=131072)
SMOLLM_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                   num_kv_heads=3, tie_embeddings=True)
DEMO = dict(vocab_size=1536, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2)
DEVICES_GB = {"H100 80GB": 80e9, "H200 141GB": 141e9}


def _setup(config, lora, length_batch, devices):
    from sciriff_jax.model.lora import LoraConfig
    from sciriff_jax.parallel.sharding import MeshConfig
    from sciriff_jax.train import lora_train, setup
    from sciriff_jax.train.optim import OptimizerConfig

    opt = OptimizerConfig(learning_rate=1e-4, warmup_ratio=0.0)
    if lora is None:
        return setup.build(config, mesh=MeshConfig("data"), optimizer=opt, train_steps=1000, devices=devices)
    return lora_train.build(config, LoraConfig(**lora), mesh=MeshConfig("data"), optimizer=opt, train_steps=1000,
                            devices=devices)


VARIANTS = {"full": None, "lora_r16": dict(rank=16), "qlora_int8_r16": dict(rank=16, quantize="int8"),
            "qlora_int4_r16": dict(rank=16, quantize="int4")}


def _devices(topology: str | None):
    import jax

    if not topology:
        return jax.devices()[:1]
    from sciriff_jax.run import aot

    return aot.topology_devices(aot.parse_topology(topology))


def memory(args) -> dict:
    """Compiled memory of each variant's step at the 8B shape."""
    import jax

    from sciriff_jax.model.config import LlamaConfig
    from sciriff_jax.train import lora_train

    devices = _devices(args.topology)

    config = LlamaConfig(**LLAMA31_8B, dtype="bfloat16", param_dtype="float32", remat_policy=args.remat,
                         attention_backend="blockwise")
    rows = {}
    for name, lora in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        run_setup = _setup(config, lora, None, devices)
        try:
            compiled = run_setup.compile_step(args.batch, args.length)
        except jax.errors.JaxRuntimeError as err:  # the TPU compiler refuses what cannot fit, saying how much
            if "RESOURCE_EXHAUSTED" not in str(err):
                raise
            rows[name] = {"compiler_refused": str(err).splitlines()[0][:400], "compile_s": time.time() - t0}
            print(f"{name:16s} {rows[name]['compiler_refused']}", flush=True)
            continue
        mem = compiled.memory_analysis()
        total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                 + mem.temp_size_in_bytes)
        row = {"arguments_gb": mem.argument_size_in_bytes / 1e9, "temporaries_gb": mem.temp_size_in_bytes / 1e9,
               "outputs_not_aliased_gb": (mem.output_size_in_bytes - mem.alias_size_in_bytes) / 1e9,
               "total_gb": total / 1e9, "trainable_params": run_setup.num_params,
               "compile_s": time.time() - t0}
        if lora is not None:
            row["frozen_base_gb"] = lora_train.base_bytes(run_setup) / 1e9
        row["fits"] = {dev: total <= cap for dev, cap in DEVICES_GB.items()}
        rows[name] = row
        print(f"{name:16s} total {row['total_gb']:7.1f} GB (arguments {row['arguments_gb']:.1f}, temporaries "
              f"{row['temporaries_gb']:.1f}) fits {row['fits']}  [{row['compile_s']:.0f}s]", flush=True)
    return {"shape": "Llama-3.1-8B", "batch": args.batch, "length": args.length, "remat_policy": args.remat,
            "dtype": "bfloat16 compute, float32 params (full) / adapters",
            "compiler": f"{devices[0].platform} ({args.topology or 'this host'}, {devices[0].device_kind})",
            "variants": rows}


def _batch(config, batch: int, length: int, sharding):
    import jax
    import numpy as np

    t = np.random.default_rng(0).integers(1, config.vocab_size, (batch, length)).astype(np.int32)
    b = {"decoder_input_tokens": t, "decoder_target_tokens": t, "decoder_segment_ids": np.ones_like(t),
         "decoder_positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
         "decoder_loss_weights": np.ones_like(t)}
    return jax.device_put(b, sharding)


def _time_variant(config, lora, batch: int, length: int, warmup: int, iters: int) -> dict:
    import jax

    from sciriff_jax.model.llama import init_params

    run_setup = _setup(config, lora, None, jax.devices()[:1])
    if lora is None:
        params = jax.jit(init_params, static_argnums=0, out_shardings=run_setup.sharding.params)(
            config, jax.random.PRNGKey(0))
    else:
        run_setup.load_base(None, 0)
        params = run_setup.init_adapters(0)
    state = {"p": params, "o": jax.jit(run_setup.tx.init, out_shardings=run_setup.sharding.opt_state)(params)}
    data = _batch(config, batch, length, run_setup.sharding.batch)

    def step():
        state["p"], state["o"], m = run_setup.step(state["p"], state["o"], data)
        return m["loss"]
    timing = common.time_calls(step, warmup=warmup, iters=iters)
    return {**timing, "tokens_per_s": batch * length / timing["median_s"], "trainable_params": run_setup.num_params}


def speed(args) -> dict:
    """Tokens/s of full vs LoRA steps at the demo and 135M shapes, one process."""
    from sciriff_jax.model.config import LlamaConfig

    out = {}
    for shape_name, shape, batch, length in (("demo", DEMO, 8, 256), ("smollm_135m", SMOLLM_135M, 1, 256)):
        config = LlamaConfig(**shape, dtype="float32", param_dtype="float32", attention_backend="auto")
        out[shape_name] = {"batch": batch, "length": length}
        for name, lora in (("full", None), ("lora_r16", dict(rank=16))):
            r = _time_variant(config, lora, batch, length, args.warmup, args.iters)
            out[shape_name][name] = r
            print(f"{shape_name:12s} {name:9s} {r['tokens_per_s']:10.0f} tokens/s (median {r['median_s']:.3f}s)",
                  flush=True)
        out[shape_name]["lora_over_full"] = (out[shape_name]["lora_r16"]["tokens_per_s"]
                                             / out[shape_name]["full"]["tokens_per_s"])
    return out


def quant_error(args) -> dict:
    """The QLoRA base's logits vs the base's, on real text through a trained model's own (real) tokenizer."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sciriff_jax.io import loader
    from sciriff_jax.model import lora as lora_lib
    from sciriff_jax.model.llama import Llama

    loaded = loader.load(args.checkpoint, dtype="float32")
    config, params, fmt = loaded.config, loaded.params, loaded.chat_format
    sample = pathlib.Path(__file__).resolve().parents[1] / "seqio_tasks/data/sample/validation.jsonl"
    rows = [json.loads(line) for line in sample.read_text().splitlines()[:args.texts]]
    ids = [fmt.encode(r["input"] + "\n" + r["output"])[:args.length] for r in rows]
    n = min(len(x) for x in ids)
    tokens = jnp.asarray(np.array([x[:n] for x in ids], np.int32))
    model = Llama(config.replace(attention_backend="reference"))
    forward = jax.jit(lambda p: model.apply({"params": p}, tokens))
    want = np.asarray(forward(params), np.float64)
    logp = jax.nn.log_softmax(want, axis=-1)
    out = {"checkpoint": str(args.checkpoint), "tokenizer": fmt.describe(), "texts": len(ids), "tokens_per_text": n,
           "logit_scale": float(np.abs(want).max()), "base_bytes": _tree_bytes(params)}
    for q in ("int8", "int4"):
        quantized = lora_lib.quantize_base(params, q)
        got = np.asarray(forward(quantized), np.float64)
        qlogp = jax.nn.log_softmax(got, axis=-1)
        out[q] = {"max_abs_logit_error": float(np.abs(got - want).max()),
                  "max_error_over_logit_scale": float(np.abs(got - want).max() / np.abs(want).max()),
                  "mean_abs_logit_error": float(np.abs(got - want).mean()),
                  "mean_kl_base_to_quantized": float(np.mean(np.sum(np.exp(logp) * (logp - qlogp), axis=-1))),
                  "top1_agreement": float(np.mean(want.argmax(-1) == got.argmax(-1))),
                  "base_bytes": _tree_bytes(quantized)}
        print(q, out[q], flush=True)
    return out


def _tree_bytes(tree) -> int:
    import math

    import jax

    return int(sum(math.prod(x.shape) * jax.dtypes.itemsize_bits(x.dtype) for x in jax.tree.leaves(tree)) // 8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("memory", "speed", "quant"))
    p.add_argument("--checkpoint", default=None, help="quant: a trained run or HF directory with its tokenizer")
    p.add_argument("--texts", type=int, default=8, help="quant: sample instances to score")
    p.add_argument("--out", default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--remat", default="full")
    p.add_argument("--only", nargs="*", default=None, help="memory: only these variants")
    p.add_argument("--topology", default=None, help="memory: compile for this TPU topology (libtpu), e.g. v5p-2 "
                   "(one chip); default: this host's first device")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args(argv)
    result = {"memory": memory, "speed": speed, "quant": quant_error}[args.what](args)
    result["environment"] = {**common.environment(), "qwix": common._version("qwix"),
                             "load_average_at_end": os.getloadavg()}
    text = json.dumps(result, indent=1)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
