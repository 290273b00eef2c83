"""The chat format: the one value that decides tokens around a conversation.

A `ChatFormat` holds a vocabulary and a chat template, and from them knows everything else: whether a BOS starts a
document or a prompt, which token ends a turn, how a training conversation is tokenized (with its loss mask), how an
eval prompt is written under a protocol, and where an answer ends. It is resolved once — `resolve_template` is the
only place "auto" is decided — recorded beside every checkpoint (io/tokenizer_files.py), and handed to the data
layer, evaluation, decoding and export. Pure Python: the vocabulary object comes from the caller (a seqio
Vocabulary, or None for a format that only writes text), so this module imports neither TensorFlow nor SeqIO.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any

from sciriff_jax.chat import render

AUTO = render.AUTO_TEMPLATE      # the vocabulary's own chat template where it has one, else tulu
FALLBACK = "tulu"                # what "auto" means for a vocabulary without a chat template of its own
# doc_to_text of the release's lm-eval templates (allenai/SciRIFF e396d00,
# sciriff/eval/eleuther_templates/<name>/_default_template.yaml): the `release` protocol's prompt for these formats.
RELEASE_PROMPTS = {
    "tulu": "<|user|>\n{input}\n<|assistant|>",
    "llama2": "<s>[INST] <<SYS>>\nYou are a helpful and honest assistant.\n<</SYS>>\n\n{input} [/INST]",
}


def resolve_template(template: str | None, has_own_template: bool = False, recorded: str | None = None) -> str:
    """The concrete template for a spec: "auto" / None / "" means the template recorded with the checkpoint
    (`recorded`), else the vocabulary's own chat template ("model") where it ships one (`has_own_template`), else
    tulu. Any other spec is returned as it is. This is the one function that resolves "auto"."""
    if template not in (None, "", AUTO):
        return template
    if recorded:
        return recorded
    return render.MODEL_TEMPLATE if has_own_template else FALLBACK


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """A vocabulary + a chat template (a built-in name, "model" for the vocabulary's own, or a .jinja path; never
    "auto": see `resolve_template`), and `note`: where they came from, for logs and summaries.

    `vocabulary` may be None for a format that only writes text (the release's fixed prompt texts)."""

    vocabulary: Any
    template: str = FALLBACK
    note: str = ""

    def __post_init__(self):
        if self.template in (None, "", AUTO):
            raise ValueError(f"ChatFormat(template={self.template!r}): resolve the template first "
                             "(sciriff_jax.chat.format.resolve_template)")
        if self.vocabulary is not None:
            render.check_template_name(self.template)

    def __eq__(self, other):  # the same tokens: same vocabulary and template text (the note is only a label)
        return isinstance(other, ChatFormat) and self.identity == other.identity

    def __hash__(self):
        return hash(self.identity)

    @functools.cached_property
    def identity(self) -> tuple:
        """What decides the tokens: the vocabulary (its file's sha256) and the template, by name for a built-in one
        and by the sha256 of its Jinja text otherwise (two models' own templates over one tokenizer differ)."""
        jinja = self.vocabulary is not None and self.template not in render.TEMPLATES  # a built-in: its name says all
        source = getattr(self.renderer, "source", None) if jinja else None
        text = hashlib.sha256(source.encode()).hexdigest() if source else None
        return (_identity(self.vocabulary), self.template, text)

    # --- what the vocabulary and template decide -------------------------------------------------------------

    @functools.cached_property
    def renderer(self):
        """The template ready to render (a render.Template with this vocabulary's BOS/EOS, or a JinjaTemplate)."""
        if self.vocabulary is None:
            return render.get_template(self.template)
        return render.resolve(self.template, self.vocabulary)

    @property
    def is_model_template(self) -> bool:
        """Whether the template is a model's own Jinja chat template (not one of render.TEMPLATES)."""
        return not isinstance(self.renderer, render.Template)

    @functools.cached_property
    def bos_id(self) -> int | None:
        """The BOS training puts before every document (and the `train` protocol before every prompt), or None
        when the vocabulary has none or the template writes it itself."""
        bos = render.bos_ids(self._vocab(), self.renderer)
        return bos[0] if bos else None

    @property
    def eos_id(self) -> int:
        """The token decoding stops at."""
        return self._vocab().eos_id

    @functools.cached_property
    def end_of_turn_texts(self) -> list[str]:
        """Texts that close an assistant turn in training (EOS; for a model's own template, its special tokens)."""
        return render.end_of_turn_texts(self._vocab(), self.renderer)

    @property
    def fingerprint(self) -> str | None:
        """sha256 of the vocabulary's file (what identifies its tokens), or None for one without files."""
        return getattr(self.vocabulary, "fingerprint", None)

    FITS_FIX = ("Use the model's own tokenizer (leave VOCABULARY_PATH unset), the matching model, or a model gin file "
                "with a larger VOCAB_SIZE.")

    def check_fits(self, vocab_size: int, model, fix: str = FITS_FIX) -> "ChatFormat":
        """This format, when its vocabulary fits `model`'s `vocab_size` embedding rows; else a ValueError ending with
        `fix` (what the caller's user can change)."""
        size = self._vocab().vocab_size
        if size > vocab_size:
            raise ValueError(
                f"the vocabulary {self.describe()} has {size} tokens but the model {model} has {vocab_size} embedding "
                f"rows: token ids past {vocab_size - 1} would index nothing. {fix}")
        return self

    def describe(self) -> str:
        return self.note or f"template {self.template!r}, vocabulary {_describe(self.vocabulary)}"

    # --- training --------------------------------------------------------------------------------------

    def encode_chat(self, messages: list[dict]) -> render.Encoded:
        """The conversation rendered and tokenized in one pass, 1 on each assistant turn's tokens."""
        return render.encode_chat(messages, self._vocab(), self.renderer)

    def split_chat(self, messages: list[dict]):
        """(inputs, targets, inputs loss mask, inputs text, targets text) around the last assistant turn."""
        return render.split_chat(messages, self._vocab(), self.renderer)

    def check(self) -> None:
        """Fail now, naming the template, when it cannot train (a typo, no locatable assistant turns)."""
        render.check_template(self.renderer, self._vocab())

    # --- prompts and answers ---------------------------------------------------------------------------

    def generation_prompt(self, user_text: str) -> str:
        """One user turn through the assistant header, as training renders it (what the answer follows)."""
        return render.render_prompt(user_text, self.renderer)

    def prompt_ids(self, user_text: str) -> list[int]:
        """Token ids training puts before an answer to one user turn: BOS (as training) + the generation prompt."""
        return render.prompt_ids(user_text, self._vocab(), self.renderer)

    def release_prompt(self, user_text: str) -> str:
        """The release protocol's prompt: its fixed lm-eval text for tulu / llama2, or (as its llama3 / qwen templates
        did for those models) the model's own chat format with the generation prompt."""
        if self.template in RELEASE_PROMPTS:
            return RELEASE_PROMPTS[self.template].replace("{input}", user_text)
        if self.template == "plain":
            raise ValueError("the release protocol prompts with a chat format (its tulu / llama2 text, or the "
                             "model's own template); 'plain' has none: use TEMPLATE tulu, llama2 or model, or "
                             "protocol='train'")
        return self.generation_prompt(user_text)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` in one pass, special tokens written in it as their ids."""
        return render.encode_text(self._vocab(), text)

    def decode(self, ids) -> str:
        return self._vocab().decode(ids)

    def encode_prompts(self, texts: list[str], *, add_bos: bool, max_position: int, max_new_tokens: int,
                       label: str = "", report: dict | None = None) -> list[list[int]]:
        """Token ids per prompt text: left-truncated to max_position - max_new_tokens (as lm-eval), then this
        format's BOS first when `add_bos` (else only the BOS a template wrote, kept when the text is cut).
        max_new_tokens >= max_position leaves no room for a prompt: a ValueError with the numbers. `report`, when
        given, receives the budget and how many prompts were cut by how many tokens (total, max)."""
        if max_position and max_new_tokens >= max_position:
            raise ValueError(f"{label + ': ' if label else ''}max_new_tokens={max_new_tokens} leaves no room for a "
                             f"prompt in the model's context of {max_position} tokens (max_position); decode at most "
                             f"{max_position - 1} new tokens")
        prompts = [self.encode(t) for t in texts]
        bos_id = self.bos_id if add_bos else None
        written = self._vocab().bos_id if bos_id is None else None  # a template that writes BOS keeps it when cut
        firsts = [[p[0]] if written is not None and p and p[0] == written else [] for p in prompts]
        prompts = [p[len(f):] for p, f in zip(prompts, firsts)]
        room = int(max_position or 0) - max_new_tokens
        cut = [max(0, len(p) - room) if room > 0 else 0 for p in prompts]
        truncated = sum(n > 0 for n in cut)
        if report is not None:
            report.update(budget=room if room > 0 else None, n=len(prompts), n_cut=truncated,
                          tokens_cut_total=sum(cut), tokens_cut_max=max(cut, default=0))
        if truncated:
            prompts = [p[-room:] for p in prompts]
            print(f"[eval] {label}: {truncated} prompt(s) longer than {room} tokens (max_position {max_position} - "
                  f"max_new_tokens {max_new_tokens}) were cut from the left, of {len(prompts)}: {sum(cut)} tokens in "
                  f"all, at most {max(cut)} from one", flush=True)
        lead = [[bos_id] if bos_id is not None else f for f in firsts]
        return [f + p for f, p in zip(lead, prompts)]

    @staticmethod
    def cut(text: str, stop_texts=()) -> str:
        """The answer up to its first stop string (excluded), as vLLM returns it; EOS already ended decoding."""
        for stop in stop_texts:
            text = text.split(stop, 1)[0]
        return text

    def _vocab(self):
        if self.vocabulary is None:
            raise ValueError(f"ChatFormat(template={self.template!r}) has no vocabulary: it writes text only")
        return self.vocabulary


def _identity(vocabulary):
    if vocabulary is None:
        return None
    return getattr(vocabulary, "fingerprint", None) or vocabulary


def _describe(vocabulary) -> str:
    if vocabulary is None:
        return "none"
    name = getattr(vocabulary, "tokenizer_file", None) or getattr(vocabulary, "sentencepiece_model_file", None)
    return os.fspath(name) if name else type(vocabulary).__name__
