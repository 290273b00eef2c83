"""GRPO rollouts: our continuous batcher as the GRPO loop calls it vs transformers `generate`, one run.

Both stacks sample G answers to each of B prompts from the same weights (sciriff-jax's random init at the 135M
Llama shape, SmolLM-135M, fp32, copied into `LlamaForCausalLM`), with the same sampling settings (temperature,
top-p) and exactly `--new` new tokens per answer (no EOS can stop either: random weights). Prompts are random token
ids of the lengths of real sample prompts (`--prompt_lengths`). sciriff-jax runs `train.rollout.sample_answers`,
the function the GRPO update calls, with B x G slots and the drawn tokens' log-probabilities (what GRPO needs);
transformers runs one `generate(do_sample=True, num_return_sequences=G)` over the left-padded batch. Reported:
new tokens/s end to end (prefill included). sciriff-jax's first call compiles and is reported apart.

  python -m benchmarks.grpo_rollout --out benchmarks/results/grpo_rollout_cpu.json
  python -m benchmarks.grpo_rollout --tiny --out /tmp/grpo_rollout.json
"""
from __future__ import annotations

import gc

from benchmarks import common
from benchmarks.decode import SMOLLM_135M, torch_model_from


class _Format:
    """The rollout's view of a chat format: EOS (none here: -1 never matches) and ids to text."""

    eos_id = -1

    @staticmethod
    def decode(ids):
        return ""


def prompts_of(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=n).tolist() for n in lengths]


def bench_ours(config, params, prompts, args, warmup: int, iters: int) -> dict:
    import jax

    from sciriff_jax.decoding.batcher import Sampling
    from sciriff_jax.train import rollout

    items = [rollout.Prompt("t", "token_f1", "", tuple(p)) for p in prompts]
    slots = len(prompts) * args.group

    def run():
        return rollout.sample_answers(config, params, items, args.group, max_new_tokens=args.new,
                                      sampling=Sampling(args.temperature, args.top_p), chat_format=_Format,
                                      rng=jax.random.PRNGKey(0), slots=slots)

    timed = common.time_calls(run, warmup=warmup, iters=iters, sync=lambda x: x, label="sciriff-jax rollout")
    samples = run()
    assert all(len(r) == args.new for r in samples.responses), "every answer must have --new tokens"
    return _row("sciriff-jax train.rollout.sample_answers (continuous batcher, + log-probs)", timed,
                samples.tokens)


def bench_torch(config, params, prompts, args, warmup: int, iters: int) -> dict:
    import torch

    model, device = torch_model_from(config, params, dtype=torch.float32)
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):], mask[r, width - len(p):] = torch.tensor(p), 1

    def run():
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new,
                                  min_new_tokens=args.new, do_sample=True, temperature=args.temperature,
                                  top_p=args.top_p, top_k=None, num_return_sequences=args.group, pad_token_id=0,
                                  eos_token_id=None)

    timed = common.time_calls(run, warmup=warmup, iters=iters, sync=lambda x: x, label="transformers generate")
    tokens = len(prompts) * args.group * args.new
    del model
    gc.collect()
    return _row("transformers generate (sdpa, fp32, do_sample, num_return_sequences=G)", timed, tokens)


def _row(system: str, timed: dict, tokens: int) -> dict:
    return {"system": system, "new_tokens": tokens, "seconds": timed["median_s"], "first_call_s": timed["first_s"],
            "new_tokens_per_s": tokens / timed["median_s"]}


def main(argv=None) -> dict:
    import os

    import jax

    from sciriff_jax.model.llama import init_params

    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--group", type=int, default=4, help="samples per prompt (G)")
    p.add_argument("--prompt_lengths", default="180,240,320,410", help="prompt lengths (B prompts), tokens")
    p.add_argument("--new", type=int, default=64, help="new tokens per answer")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_p", type=float, default=0.9)
    args = p.parse_args(argv)
    warmup, iters = (0, 1) if args.tiny else (args.warmup or 0, args.iters or 2)
    shape = common.TINY if args.tiny else SMOLLM_135M
    config = common.model_config(args.tiny, **{**shape, "dtype": "float32", "param_dtype": "float32",
                                                "max_position": 2048})
    params = init_params(config, jax.random.PRNGKey(0))
    prompts = prompts_of([int(n) for n in args.prompt_lengths.split(",")], config.vocab_size)
    load = os.getloadavg()
    rows = [bench_torch(config, params, prompts, args, warmup, iters),
            bench_ours(config, params, prompts, args, warmup, iters)]
    for r in rows:
        r["vs_transformers"] = r["new_tokens_per_s"] / rows[0]["new_tokens_per_s"]
    extra = {"model": config.to_dict(), "num_params": config.num_params(), "load_average_at_start": load,
             "load_average_at_end": os.getloadavg()}
    cols = ["system", "new_tokens_per_s", "vs_transformers", "seconds", "first_call_s", "new_tokens"]
    return common.report("GRPO rollouts (sampling B x G answers)", args, rows, cols, extra=extra)


if __name__ == "__main__":
    main()
