"""Eval prompts: rendered chat prompts (with the paper's few-shot examples) -> token ids with BOS, cut to fit."""
from __future__ import annotations

import random

from seqio_tasks import render

# Few-shot examples per scorer as in the paper (Evidence Inference was 1-shot), drawn like lm-eval's
# sampler (random.Random(1234), from the same split, never the instance itself).
PAPER_FEWSHOT = {"evidence_inference": 1}
FEWSHOT_SEED = 1234
FEWSHOT_DELIMITER = "\n\n\n"


def build_prompts(examples: list[dict], template: str = "tulu", num_fewshot: int = 0, vocabulary=None) -> list[str]:
    """Rendered prompts; with num_fewshot, solved examples of the same split go first (lm-eval's format).

    `template`: a built-in name, or (with `vocabulary`) "model" / a .jinja path: the model's own chat template,
    whose prompt holds the shots inside the user turn so its system block and BOS appear once."""
    rng = random.Random(FEWSHOT_SEED)
    resolved = render.resolve(template, vocabulary) if vocabulary is not None else render.get_template(template)
    builtin = isinstance(resolved, render.Template)
    prompts = []
    for ex in examples:
        chosen = []
        if num_fewshot and len(examples) > 1:
            drawn = rng.sample(examples, min(num_fewshot + 1, len(examples)))
            chosen = [d for d in drawn if d is not ex][:num_fewshot]
        if builtin:
            shots = "".join(render.render_prompt(d["input"], resolved) + d["output"] + FEWSHOT_DELIMITER
                            for d in chosen)
            prompts.append(shots + render.render_prompt(ex["input"], resolved))
        else:
            shots = "".join(d["input"] + "\n" + d["output"] + FEWSHOT_DELIMITER for d in chosen)
            prompts.append(render.render_prompt(shots + ex["input"], resolved))
    return prompts


def encode_prompts(texts: list[str], vocabulary, *, max_position: int, max_new_tokens: int, bos_id: int | None,
                   label: str = "") -> list[list[int]]:
    """Token ids per prompt (one pass, special tokens in the text as their ids): left-truncated to
    max_position - max_new_tokens (as lm-eval), then BOS (`bos_id`, or the one the template wrote) first."""
    prompts = [render.encode_text(vocabulary, t) for t in texts]
    written = vocabulary.bos_id if bos_id is None else None  # a template that writes BOS keeps it when cut
    firsts = [[p[0]] if written is not None and p and p[0] == written else [] for p in prompts]
    prompts = [p[len(f):] for p, f in zip(prompts, firsts)]
    # As lm-eval (the release's harness): a prompt longer than max_position - max_new_tokens keeps its last
    # tokens, so the answer always has room within the model's context.
    room = int(max_position or 0) - max_new_tokens
    truncated = sum(len(p) > room for p in prompts) if room > 0 else 0
    if truncated:
        prompts = [p[-room:] for p in prompts]
        print(f"[eval] {label}: {truncated} prompt(s) longer than {room} tokens (max_position - max_new_tokens) "
              "were cut from the left", flush=True)
    lead = [[bos_id] if bos_id is not None else f for f in firsts]
    return [f + p for f, p in zip(lead, prompts)]
