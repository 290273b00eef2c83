"""Eval protocols: the text a prompt is, whether BOS starts it, and where an answer stops.

`release` (the default, for numbers comparable with the paper) is how the SciRIFF release evaluated: its
lm-eval templates (allenai/SciRIFF e396d00, `sciriff/eval/eleuther_templates/<template>/`) run by lm-eval
543617f with vLLM:
- the prompt is the template's `doc_to_text`, e.g. tulu `<|user|>\\n{input}\\n<|assistant|>` (no trailing
  newline: the model writes it); for a model with its own chat template (the release's llama3 / qwen templates),
  that chat format with its generation prompt;
- few-shot examples (evidence_inference: 1) are drawn with `random.Random(1234)` from the same split, two per
  instance with the instance itself dropped, each written `doc_to_text + "\\n" + output`, joined and followed
  by the task's few-shot delimiter (`\\n\\n--------------------\\n\\n`; `\\n\\n\\n` for evidence_inference);
- no BOS is added (the vLLM backend tokenizes with add_bos_token=False);
- an answer stops at EOS or at the few-shot delimiter (cut from the text, as vLLM's stop strings are);
- the context keeps its last max_length - max_new_tokens tokens; greedy, 1,024 new tokens (EvalConfig).
`train` prompts as our training renders a user turn (the chat template's assistant header with its trailing
newline, BOS where the vocabulary has one) and stops at EOS only.
"""
from __future__ import annotations

import dataclasses
import random

PROTOCOLS = ("release", "train")
# doc_to_text of the release's templates (sciriff/eval/eleuther_templates/<name>/_default_template.yaml).
RELEASE_PROMPTS = {
    "tulu": "<|user|>\n{input}\n<|assistant|>",
    "llama2": "<s>[INST] <<SYS>>\nYou are a helpful and honest assistant.\n<</SYS>>\n\n{input} [/INST]",
}
# "auto" (the checkpoint's own template) under the release protocol, for a checkpoint without one: the release's tulu
# prompt, which it used for Tulu-family models and SciTulu.
RELEASE_DEFAULT_TEMPLATE = "tulu"
RELEASE_TARGET_DELIMITER = "\n"
RELEASE_FEWSHOT_DELIMITER = "\n\n--------------------\n\n"
RELEASE_TASK_DELIMITERS = {"evidence_inference": "\n\n\n"}  # tulu/evidence_inference.yaml
FEWSHOT_SEED = 1234  # lm-eval's sampler: random.Random(1234), one per task


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
        """Whether the prompt starts with the vocabulary's BOS (the release's vLLM runs added none)."""
        return self.name == "train"

    def prompts(self, examples: list[dict], template: str, num_fewshot: int, scorer: str, vocabulary=None) -> list[str]:
        """The prompt text of every example, few-shot examples first."""
        if self.name == "train":
            from sciriff_jax.eval import prompts as prompts_lib  # the data layer's rendering (TensorFlow)

            return prompts_lib.build_prompts(examples, template, num_fewshot, vocabulary)
        doc_to_text = self._release_doc_to_text(template, vocabulary)
        delimiter = self.fewshot_delimiter(scorer)
        rng = random.Random(FEWSHOT_SEED)
        out = []
        for ex in examples:
            context = ""
            if num_fewshot:
                drawn = rng.sample(examples, min(num_fewshot + 1, len(examples)))
                shots = [d for d in drawn if d is not ex][:num_fewshot]
                context = delimiter.join(doc_to_text(d["input"]) + RELEASE_TARGET_DELIMITER + d["output"]
                                         for d in shots) + delimiter
            out.append(context + doc_to_text(ex["input"]))
        return out

    @staticmethod
    def _release_doc_to_text(template, vocabulary):
        """The release's prompt text for a template: its own tulu / llama2 text, or (as its llama3 / qwen
        templates did for those models) the model's own chat format with the generation prompt."""
        if template == "auto" and vocabulary is None:  # no checkpoint to ask: the release's tulu
            template = RELEASE_DEFAULT_TEMPLATE
        if isinstance(template, str) and template in RELEASE_PROMPTS:  # fixed text: no data layer needed
            text = RELEASE_PROMPTS[template]
            return lambda s: text.replace("{input}", s)
        # A model's own chat format: the data layer renders it (TensorFlow, and every task registered on import).
        from seqio_tasks import render
        from seqio_tasks.chat_template import JinjaTemplate

        if template == "auto":  # the checkpoint's own chat template where it ships one, else the release's tulu
            if not isinstance(render.resolve("auto", vocabulary), JinjaTemplate):
                text = RELEASE_PROMPTS[RELEASE_DEFAULT_TEMPLATE]
                return lambda s: text.replace("{input}", s)
            template = "model"
        if template in ("plain",):
            raise ValueError("the release protocol prompts with a chat format (its tulu / llama2 text, or the "
                             "model's own template); 'plain' has none: use TEMPLATE tulu, llama2 or model, or "
                             "protocol='train'")
        render.resolve(template, vocabulary)  # fails early, naming the template
        return lambda s: render.render_prompt(s, template, vocabulary)

    def fewshot_delimiter(self, scorer: str) -> str:
        return RELEASE_TASK_DELIMITERS.get(scorer, RELEASE_FEWSHOT_DELIMITER)

    def stops(self, scorer: str) -> tuple[str, ...]:
        """Text at which an answer ends (besides EOS)."""
        return (self.fewshot_delimiter(scorer),) if self.name == "release" else ()

    def cut(self, text: str, scorer: str) -> str:
        """The answer up to its first stop string (excluded), as vLLM returns it."""
        for stop in self.stops(scorer):
            text = text.split(stop, 1)[0]
        return text

    def describe(self) -> dict:
        if self.name == "train":
            return {"name": "train", "prompt": "the training chat template through the assistant header",
                    "bos": "as training", "stops": "EOS"}
        return {"name": "release", "prompts": RELEASE_PROMPTS, "bos": "none",
                "stops": {"default": RELEASE_FEWSHOT_DELIMITER, **RELEASE_TASK_DELIMITERS, "always": "EOS"},
                "fewshot": f"random.Random({FEWSHOT_SEED}), same split, shot = prompt + '\\n' + output",
                "source": "allenai/SciRIFF e396d00 eleuther_templates, lm-eval 543617f (vLLM)"}
