"""Eval protocols: how a prompt is assembled around a ChatFormat's prompt text, whether BOS starts it, where an
answer stops. The prompt text itself, the BOS and the tokens are the ChatFormat's (sciriff_jax/chat/format.py).

`release` (the default, for numbers comparable with the paper) is how the SciRIFF release evaluated: its
lm-eval templates (allenai/SciRIFF e396d00, `sciriff/eval/eleuther_templates/<template>/`) run by lm-eval
543617f with vLLM:
- the prompt is the template's `doc_to_text` (`ChatFormat.release_prompt`), e.g. tulu
  `<|user|>\\n{input}\\n<|assistant|>` (no trailing newline: the model writes it); for a model with its own chat
  template (the release's llama3 / qwen templates), that chat format with its generation prompt;
- few-shot examples (evidence_inference: 1) are drawn with `random.Random(1234)` from the same split (all of it,
  also when only its first instances are decoded, as lm-eval's --limit), two per instance with the instance itself
  dropped (`draw_shots`), each written `doc_to_text + "\\n" + output`, joined
  and followed by the task's few-shot delimiter (`\\n\\n--------------------\\n\\n`; `\\n\\n\\n` for
  evidence_inference);
- no BOS is added (the vLLM backend tokenizes with add_bos_token=False);
- an answer stops at EOS or at the few-shot delimiter (cut from the text, as vLLM's stop strings are);
- the context keeps its last max_length - max_new_tokens tokens; greedy, 1,024 new tokens (EvalConfig).
`train` prompts as our training renders a user turn (`ChatFormat.generation_prompt`: the chat template's
assistant header with its trailing newline, BOS where training puts one), shots drawn by the same sampler and
separated by `\\n\\n\\n`, and stops at EOS only. Pure Python: no TensorFlow, no SeqIO.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Iterator

from sciriff_jax.chat.format import RELEASE_PROMPTS, ChatFormat

PROTOCOLS = ("release", "train")
# Few-shot examples per scorer as in the paper (Evidence Inference was 1-shot).
PAPER_FEWSHOT = {"evidence_inference": 1}
FEWSHOT_SEED = 1234  # lm-eval's sampler: random.Random(1234), one per task
RELEASE_TARGET_DELIMITER = "\n"
RELEASE_FEWSHOT_DELIMITER = "\n\n--------------------\n\n"
RELEASE_TASK_DELIMITERS = {"evidence_inference": "\n\n\n"}  # tulu/evidence_inference.yaml
TRAIN_FEWSHOT_DELIMITER = "\n\n\n"


def draw_shots(examples: list[dict], num_fewshot: int, pool: list[dict] | None = None) -> Iterator[list[dict]]:
    """Per example, its few-shot examples as lm-eval's sampler draws them: one random.Random(1234) per task,
    num_fewshot + 1 drawn from the same split (`pool`, default `examples`), the example itself dropped. Nothing is
    drawn for 0 shots. `examples` are the first instances of `pool` (the ones decoded: MAX_EXAMPLES, lm-eval's
    --limit), so each one's shots are the ones it gets in a run over the whole split."""
    rng = random.Random(FEWSHOT_SEED)
    pool = examples if pool is None else pool
    if any(a is not b for a, b in zip(examples, pool)) or len(examples) > len(pool):
        raise ValueError("draw_shots: the examples must be the first instances of the pool (the same objects)")
    for ex in examples:
        if not num_fewshot:
            yield []
            continue
        drawn = rng.sample(pool, min(num_fewshot + 1, len(pool)))
        yield [d for d in drawn if d is not ex][:num_fewshot]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How prompts are written and answers cut; `describe()` goes into summary.json."""

    name: str

    def __post_init__(self):
        if self.name not in PROTOCOLS:
            raise ValueError(f"EvalConfig.protocol={self.name!r}; choose one of {PROTOCOLS} (release: as the paper "
                             "evaluated; train: prompts as our training renders them)")

    @property
    def adds_bos(self) -> bool:
        """Whether the prompt starts with the format's BOS (the release's vLLM runs added none)."""
        return self.name == "train"

    def prompts(self, examples: list[dict], chat_format: ChatFormat, num_fewshot: int, scorer: str,
                pool: list[dict] | None = None) -> list[str]:
        """The prompt text of every example, few-shot examples first, drawn from `pool` (the whole split, whose
        first instances `examples` are; default: `examples`)."""
        if self.name == "train":
            return [self._train_prompt(ex, shots, chat_format)
                    for ex, shots in zip(examples, draw_shots(examples, num_fewshot, pool))]
        delimiter = self.fewshot_delimiter(scorer)
        out = []
        for ex, shots in zip(examples, draw_shots(examples, num_fewshot, pool)):
            context = ""
            if num_fewshot:
                context = delimiter.join(chat_format.release_prompt(d["input"]) + RELEASE_TARGET_DELIMITER
                                         + d["output"] for d in shots) + delimiter
            out.append(context + chat_format.release_prompt(ex["input"]))
        return out

    @staticmethod
    def _train_prompt(ex: dict, shots: list[dict], chat_format: ChatFormat) -> str:
        """A built-in template renders each shot as its own turn; a model's own template holds the shots inside the
        user turn, so its system block and BOS appear once."""
        if not chat_format.is_model_template:
            return "".join(chat_format.generation_prompt(d["input"]) + d["output"] + TRAIN_FEWSHOT_DELIMITER
                           for d in shots) + chat_format.generation_prompt(ex["input"])
        context = "".join(d["input"] + "\n" + d["output"] + TRAIN_FEWSHOT_DELIMITER for d in shots)
        return chat_format.generation_prompt(context + ex["input"])

    def fewshot_delimiter(self, scorer: str) -> str:
        if self.name == "train":
            return TRAIN_FEWSHOT_DELIMITER
        return RELEASE_TASK_DELIMITERS.get(scorer, RELEASE_FEWSHOT_DELIMITER)

    def stops(self, scorer: str) -> tuple[str, ...]:
        """Text at which an answer ends (besides the format's EOS)."""
        return (self.fewshot_delimiter(scorer),) if self.name == "release" else ()

    def cut(self, text: str, scorer: str) -> str:
        """The answer up to its first stop string (excluded), as vLLM returns it."""
        return ChatFormat.cut(text, self.stops(scorer))

    def describe(self) -> dict:
        if self.name == "train":
            return {"name": "train", "prompt": "the training chat template through the assistant header",
                    "bos": "as training", "stops": "EOS"}
        return {"name": "release", "prompts": RELEASE_PROMPTS, "bos": "none",
                "stops": {"default": RELEASE_FEWSHOT_DELIMITER, **RELEASE_TASK_DELIMITERS, "always": "EOS"},
                "fewshot": f"random.Random({FEWSHOT_SEED}), same split, shot = prompt + '\\n' + output",
                "source": "allenai/SciRIFF e396d00 eleuther_templates, lm-eval 543617f (vLLM)"}
