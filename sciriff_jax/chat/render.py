"""Chat templates -> one text per conversation -> token ids in one pass + the loss mask on assistant turns.

A conversation is rendered to a single string (the built-in templates below, or the model's own Jinja template,
`jinja.py`) and tokenized in one pass, as open-instruct and transformers do: no segment is tokenized on
its own, so no answer starts with a piece (SentencePiece's `▁`) that the one-pass text would not have. The loss
covers each assistant turn's content and its end-of-turn token: the turn starts where
`render(messages[:i], add_generation_prompt=True)` ends and stops after the last special token of
`render(messages[:i + 1])` (tulu, as open-instruct's labels: after the newline that follows it where another
message follows); both must be prefixes of the whole text at token boundaries, else the template is
refused (TemplateError). The TensorFlow pipeline (seqio_tasks.tasks.split_chat_tf) runs this same code through
`tf.numpy_function`.
"""
from __future__ import annotations

import dataclasses
import os
import re

from sciriff_jax.chat.jinja import JinjaTemplate, TemplateError, read_template

ROLES = ("system", "user", "assistant")
MODEL_TEMPLATE = "model"  # the chat template shipped with the vocabulary (tokenizer_config.json / .jinja)
AUTO_TEMPLATE = "auto"    # resolved by sciriff_jax.chat.format.resolve_template, never here


@dataclasses.dataclass(frozen=True)
class Template:
    """A built-in template: per role the text before and after its (stripped) content; `{eos}` / `{bos}` are the
    vocabulary's tokens. `generation` opens the assistant turn; `adds_bos`: the tokenizer's BOS goes first."""

    name: str
    roles: dict
    generation: str
    adds_bos: bool = True
    strip_text: bool = False   # strip the whole text (open-instruct's encode_with_messages_format does)
    # Train on the rest of an assistant turn's suffix after EOS when another message follows (open-instruct's
    # labels: a user turn's mask starts where the text before it ends, after the `</s>\n` of the answer before).
    trains_turn_end: bool = False
    bos: str = ""
    eos: str = "</s>"

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The conversation's text; with `add_generation_prompt` it ends where the next answer starts."""
        parts, tokens = [], {"eos": self.eos, "bos": self.bos}
        for i, m in enumerate(messages):
            prefix, suffix = self.roles[_role(m, i)]
            content = m["content"].strip()
            if self.name == "llama2" and m["role"] == "system":
                continue  # Llama-2 chat folds the system prompt into the first user turn
            if self.name == "llama2" and m["role"] == "user" and i and messages[i - 1]["role"] == "system":
                content = f"<<SYS>>\n{messages[i - 1]['content'].strip()}\n<</SYS>>\n\n{content}"
            parts.append(prefix.format_map(tokens) + content + suffix.format_map(tokens))
        text = "".join(parts)
        if add_generation_prompt:
            return text + self.generation
        return text.strip() if self.strip_text else text


def _role(m: dict, i: int) -> str:
    role = m.get("role")
    if role not in ROLES:
        raise ValueError(f"message {i} has role {role!r}; expected one of {ROLES}")
    return role


TEMPLATES = {
    # open-instruct's encode_with_messages_format (Tulu 2, SciTulu): contents stripped, the whole text stripped.
    "tulu": Template("tulu", {"system": ("<|system|>\n", "\n"), "user": ("<|user|>\n", "\n"),
                              "assistant": ("<|assistant|>\n", "{eos}\n")}, "<|assistant|>\n", strip_text=True,
                     trains_turn_end=True),
    # Llama-2 chat as its Hugging Face template writes it: <s>[INST] <<SYS>>..<</SYS>>\n\nQ [/INST] A </s>
    "llama2": Template("llama2", {"system": ("", ""), "user": ("{bos}[INST] ", " [/INST]"),
                                  "assistant": (" ", " {eos}")}, "", adds_bos=False),
    "plain": Template("plain", {"system": ("", "\n\n"), "user": ("", "\n\n"), "assistant": ("", "{eos}\n\n")}, ""),
}
BUILTIN = tuple(TEMPLATES)


def get_template(name: str) -> Template:
    """The built-in chat template called `name` (tulu, llama2, plain)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; expected one of {sorted(TEMPLATES)}, {MODEL_TEMPLATE!r} "
                         "(the vocabulary's own chat template) or a path to a .jinja / tokenizer_config.json file "
                         "or a Hugging Face directory")
    return TEMPLATES[name]


def check_template_name(template) -> None:
    """Fail early on a template that names nothing (a typo, a missing file, or "auto" left unresolved)."""
    if isinstance(template, (Template, JinjaTemplate)) or template in TEMPLATES or template == MODEL_TEMPLATE:
        return
    if template == AUTO_TEMPLATE:
        raise ValueError('template "auto" must be resolved first (sciriff_jax.chat.format.resolve_template: '
                         "the checkpoint's recorded template, else the vocabulary's own, else tulu)")
    if isinstance(template, (str, os.PathLike)) and os.path.exists(template):
        return
    get_template(str(template))


# --- vocabulary side: special token texts and one-pass encoding -----------------------------------------


def token_text(vocab, token_id) -> str:
    """The text of a special token ("" for None / a negative id)."""
    if token_id is None or token_id < 0:
        return ""
    if hasattr(vocab, "token_text"):
        return vocab.token_text(token_id)
    if hasattr(vocab, "tokenizer"):  # seqio.SentencePieceVocabulary
        return vocab.tokenizer.id_to_piece(int(token_id))
    raise TypeError(f"{type(vocab).__name__}: cannot spell token {token_id} as text; use a SentencePiece .model, "
                    "a Hugging Face tokenizer.json or a seqio.SentencePieceVocabulary")


def _specials(vocab) -> dict[str, int]:
    """Special token text -> id for vocabularies whose encoder would spell them out (SentencePiece)."""
    out = {}
    for token_id in (vocab.eos_id, vocab.bos_id):
        text = token_text(vocab, token_id)
        if text:
            out[text] = token_id
    return out


def encode_text(vocab, text: str) -> list[int]:
    """Token ids of `text` in one pass, special tokens written in it (`</s>`, `<|im_end|>`) as their ids."""
    if hasattr(vocab, "special_texts"):  # a Hugging Face tokenizer matches its added tokens itself
        return list(vocab.encode(text))
    specials = _specials(vocab)
    if not specials:
        return list(vocab.encode(text))
    ids = []
    # SentencePiece treats control pieces in text as plain characters: split there, as transformers' slow
    # tokenizers do, so `</s>` is the EOS id and the text between is one pass each.
    for i, chunk in enumerate(re.split("(" + "|".join(map(re.escape, specials)) + ")", text)):
        if i % 2:
            ids.append(specials[chunk])
        elif chunk:
            ids.extend(vocab.encode(chunk))
    return ids


def vocab_adds_bos(vocab) -> bool:
    """Whether the vocabulary's tokenizer puts BOS first (Hugging Face: as transformers; SentencePiece: a BOS piece)."""
    if hasattr(vocab, "adds_bos"):
        return bool(vocab.adds_bos)
    bos = vocab.bos_id
    return bos is not None and bos >= 0


def bos_ids(vocab, template=None) -> list[int]:
    """[BOS] where training puts the tokenizer's BOS before a conversation in `template`, else []."""
    if template is not None and not resolve(template, vocab).adds_bos:
        return []
    return [vocab.bos_id] if vocab_adds_bos(vocab) else []


def end_of_turn_texts(vocab, template) -> list[str]:
    """Texts that may close an assistant turn: EOS (and, for the model's own template, any special token)."""
    texts = [token_text(vocab, vocab.eos_id)]
    if isinstance(template, JinjaTemplate) and hasattr(vocab, "special_texts"):
        texts += [token_text(vocab, i) for i in vocab.end_of_turn_ids()] + vocab.special_texts()
    return [t for t in dict.fromkeys(texts) if t]


def resolve(template, vocab):
    """A renderable template for `vocab`: a built-in name, "model" (the vocabulary's own), a .jinja /
    tokenizer_config.json file or a tokenizer directory, or a Template / JinjaTemplate. ("auto" is resolved
    before, by sciriff_jax.chat.format.resolve_template.)"""
    if isinstance(template, JinjaTemplate):
        return template
    if isinstance(template, Template):
        return dataclasses.replace(template, bos=token_text(vocab, vocab.bos_id),
                                   eos=token_text(vocab, vocab.eos_id))
    if template in TEMPLATES:
        return resolve(TEMPLATES[template], vocab)
    if template == AUTO_TEMPLATE:
        check_template_name(template)  # raises: "auto" is resolved by format.resolve_template only
    specials = {f"{k}_token": token_text(vocab, i) for k, i in
                (("bos", vocab.bos_id), ("eos", vocab.eos_id), ("unk", vocab.unk_id), ("pad", vocab.pad_id))}
    if template == MODEL_TEMPLATE:
        source = getattr(vocab, "chat_template", None)
        if not source:
            raise TemplateError(
                f"template {MODEL_TEMPLATE!r} means the vocabulary's own chat template, but {vocab!r} ships none "
                "(no chat_template in tokenizer_config.json, no chat_template.jinja). Set the template "
                f"(TEMPLATE, or the template of seqio_tasks.register) to one of {sorted(TEMPLATES)} or a .jinja file.")
        return JinjaTemplate(source, specials, MODEL_TEMPLATE)
    path = os.fspath(template)
    if os.path.isfile(path) and not path.endswith(".json"):
        return JinjaTemplate(open(path, encoding="utf-8").read(), specials, path)
    if os.path.exists(path):
        source = read_template(path if os.path.isdir(path) else os.path.dirname(path))
        if not source:
            raise TemplateError(f"{path}: no chat template there (chat_template.jinja or tokenizer_config.json "
                                "'chat_template')")
        return JinjaTemplate(source, specials, path)
    get_template(path)  # raises, listing the choices


# --- conversations -> ids ---------------------------------------------------------------------------------


def _renderer(template, vocab):
    """A template ready to render: resolved for `vocab`, or (no vocabulary) a built-in one with `</s>` as EOS."""
    if vocab is not None:
        return resolve(template, vocab)
    return template if isinstance(template, (Template, JinjaTemplate)) else get_template(template)


def single_turn(user_text: str, answer: str) -> list[dict]:
    """A SciRIFF instance as chat messages: the whole `input` as the user turn, `output` as the answer."""
    return [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]


def render_prompt(user_text: str, template="tulu", vocab=None) -> str:
    """The generation prompt for one user turn, ending where the assistant's answer starts."""
    return _renderer(template, vocab).render([{"role": "user", "content": user_text}], add_generation_prompt=True)


def render_text(messages: list[dict], template="tulu", vocab=None) -> str:
    """The whole conversation as one string (what is tokenized)."""
    return _renderer(template, vocab).render(messages)


def prompt_ids(user_text: str, vocab, template="tulu") -> list[int]:
    """The token ids training puts before an answer: what decoding should be fed for one user turn."""
    t = resolve(template, vocab)
    return bos_ids(vocab, t) + encode_text(vocab, t.render([{"role": "user", "content": user_text}], True))


@dataclasses.dataclass
class Encoded:
    """A tokenized conversation: ids, loss mask, assistant token spans [(start, end)], the text, and per assistant
    turn the characters (start, end of its content, end of its end-of-turn token)."""

    ids: list
    mask: list
    spans: list
    text: str
    char_spans: list


def encode_chat(messages: list[dict], vocab, template="tulu") -> Encoded:
    """The whole conversation rendered and tokenized in one pass, with 1 on each assistant turn's tokens."""
    t = resolve(template, vocab)
    for i, m in enumerate(messages):
        _role(m, i)
    try:
        text = t.render(messages)
    except TemplateError:
        raise
    except Exception as err:  # a Jinja template refusing these roles, or a broken template
        raise TemplateError(f"chat template {getattr(t, 'name', t)!r} cannot render roles "
                            f"{[m['role'] for m in messages]}: {err}") from None
    bos = bos_ids(vocab, t)
    ids = bos + encode_text(vocab, text)
    eots = end_of_turn_texts(vocab, t)
    spans, char_spans = [], []

    def boundary(chars: int, what: str) -> int:
        head = bos + encode_text(vocab, text[:chars])
        if ids[: len(head)] != head:
            raise TemplateError(f"chat template {getattr(t, 'name', t)!r}: {what} falls inside a token of the "
                                f"one-pass text ({text[max(chars - 20, 0):chars + 20]!r}); the assistant turns "
                                "cannot be located on token boundaries")
        return len(head)

    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, through = t.render(messages[:i], add_generation_prompt=True), t.render(messages[: i + 1])
        if not (text.startswith(before) and text.startswith(through) and through.startswith(before)):
            raise TemplateError(
                f"chat template {getattr(t, 'name', t)!r}: assistant turn {i} cannot be located (the text of the "
                "conversation up to it is not a prefix of the whole conversation's text, e.g. the template rewrites "
                "earlier turns); use another template for training")
        turn = through[len(before):]
        ends = [(turn.rfind(e), len(e)) for e in eots if e in turn]
        if not ends:
            raise TemplateError(f"chat template {getattr(t, 'name', t)!r}: assistant turn {i} ({turn[:40]!r}...) has "
                                f"no end-of-turn token (looked for {eots}); the model could never learn to stop")
        eot_start, eot_len = max(ends)
        end = len(before) + eot_start + eot_len
        end += _turn_end(t, text, end, i < len(messages) - 1)
        spans.append((boundary(len(before), f"the start of assistant turn {i}"),
                      boundary(end, f"the end of assistant turn {i}")))
        char_spans.append((len(before), len(before) + eot_start, end))
    mask = [0] * len(ids)
    for s, e in spans:
        mask[s:e] = [1] * (e - s)
    return Encoded(ids, mask, spans, text, char_spans)


def _turn_end(template, text: str, end: int, followed: bool) -> int:
    """How many characters after an assistant turn's EOS its loss also covers: the rest of the template's assistant
    suffix (tulu: the newline) where another message follows and the template trains it (open-instruct's)."""
    if not (followed and getattr(template, "trains_turn_end", False)):
        return 0
    rest = template.roles["assistant"][1].format_map({"eos": template.eos, "bos": template.bos})
    rest = rest[rest.find(template.eos) + len(template.eos):] if template.eos and template.eos in rest else ""
    return len(rest) if rest and text.startswith(rest, end) else 0


def tokenize_messages(messages: list[dict], vocab, template="tulu") -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 on assistant tokens and the end-of-turn token closing each assistant turn; tulu,
    as open-instruct: also the newline after the EOS of each assistant turn another message follows)."""
    enc = encode_chat(messages, vocab, template)
    return enc.ids, enc.mask


def last_answer_index(roles) -> int:
    """Index of the last assistant message: everything before it is the prompt (`inputs`), it is the answer."""
    answers = [i for i, r in enumerate(roles) if r == "assistant"]
    if not answers:
        raise ValueError(f"a chat needs an assistant turn to train on; roles were {list(roles)}")
    return answers[-1]


def split_chat(messages: list[dict], vocab, template="tulu"):
    """(inputs, targets, inputs loss mask, inputs text, targets text): the one-pass ids before the last answer,
    that answer through its end-of-turn token, 1 on earlier assistant turns inside `inputs`, the prompt's text and
    the answer's text (without the end-of-turn token). Turns after the last answer are left out."""
    last = last_answer_index([m.get("role") for m in messages])
    enc = encode_chat(messages[: last + 1], vocab, template)
    (start, end), (c0, c1, _) = enc.spans[-1], enc.char_spans[-1]
    return enc.ids[:start], enc.ids[start:end], enc.mask[:start], enc.text[:c0], enc.text[c0:c1]


def split_ids(messages: list[dict], vocab, template="tulu") -> tuple[list[int], list[int], list[int]]:
    """(inputs, targets, inputs loss mask) of `split_chat`."""
    return split_chat(messages, vocab, template)[:3]


def check_template(template, vocab) -> None:
    """Render and split a probe conversation: a template that cannot train stops here, before any data is read."""
    split_chat([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."},
                {"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "A2."}], vocab, template)
