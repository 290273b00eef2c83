"""Eval prompts: rendered chat prompts (with the paper's few-shot examples) -> token ids with BOS, cut to fit."""
from __future__ import annotations

import random

from seqio_tasks import render

# Few-shot examples per scorer as in the paper (Evidence Inference was 1-shot), drawn like lm-eval's
# sampler (random.Random(1234), from the same split, never the instance itself).
PAPER_FEWSHOT = {"evidence_inference": 1}
FEWSHOT_SEED = 1234
FEWSHOT_DELIMITER = "\n\n\n"


def build_prompts(examples: list[dict], template: str = "tulu", num_fewshot: int = 0) -> list[str]:
    """Rendered prompts; with num_fewshot, solved examples of the same split go first (lm-eval's format)."""
    rng = random.Random(FEWSHOT_SEED)
    prompts = []
    for ex in examples:
        shots = ""
        if num_fewshot and len(examples) > 1:
            drawn = rng.sample(examples, min(num_fewshot + 1, len(examples)))
            chosen = [d for d in drawn if d is not ex][:num_fewshot]
            shots = "".join(render.render_prompt(d["input"], template) + d["output"] + FEWSHOT_DELIMITER for d in chosen)
        prompts.append(shots + render.render_prompt(ex["input"], template))
    return prompts


def encode_prompts(texts: list[str], vocabulary, *, max_position: int, max_new_tokens: int, bos_id: int | None,
                   label: str = "") -> list[list[int]]:
    """Token ids per prompt: left-truncated to max_position - max_new_tokens (as lm-eval), then BOS (if any)."""
    prompts = [list(vocabulary.encode(t)) for t in texts]
    # As lm-eval (the release's harness): a prompt longer than max_position - max_new_tokens keeps its last
    # tokens, so the answer always has room within the model's context.
    room = int(max_position or 0) - max_new_tokens
    truncated = sum(len(p) > room for p in prompts) if room > 0 else 0
    if truncated:
        prompts = [p[-room:] for p in prompts]
        print(f"[eval] {label}: {truncated} prompt(s) longer than {room} tokens (max_position - max_new_tokens) "
              "were cut from the left", flush=True)
    if bos_id is not None:
        prompts = [[bos_id] + p for p in prompts]
    return prompts
