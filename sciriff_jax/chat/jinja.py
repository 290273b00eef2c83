"""A model's own chat template (Jinja), read from its tokenizer files and rendered the way transformers renders it.

transformers compiles `chat_template` with jinja2's ImmutableSandboxedEnvironment(trim_blocks=True,
lstrip_blocks=True, loopcontrols), a `tojson` that leaves non-ASCII and HTML alone, `raise_exception` and
`strftime_now`; the template sees `messages`, `add_generation_prompt` and the tokenizer's special tokens
(`bos_token`, `eos_token`, ...). The same here, so the text we tokenize is the text transformers would.
"""
from __future__ import annotations

import datetime
import functools
import json
import pathlib

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_FILE = "chat_template.jinja"


def read_template(directory) -> str | None:
    """The chat template shipped in a tokenizer directory: chat_template.jinja, chat_template.json or
    tokenizer_config.json's `chat_template` (the default one when it is a list of named templates); else None."""
    directory = pathlib.Path(directory)
    if (directory / TEMPLATE_FILE).is_file():
        return (directory / TEMPLATE_FILE).read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
                value = next((t.get("template") for t in value if t.get("name") == "default"), None)
            if isinstance(value, str) and value.strip():
                return value
    return None


class TemplateError(ValueError):
    """A chat template that raised, or whose text cannot be split into prompt and answers."""


@functools.lru_cache(maxsize=16)
def _compile(source: str):
    def raise_exception(message):
        raise TemplateError(f"the chat template refused the conversation: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"the chat template does not compile: {err} (line {err.lineno})") from None


class JinjaTemplate:
    """A Hugging Face chat template: `render(messages, add_generation_prompt)` -> text with special tokens."""

    adds_bos = False  # as transformers' apply_chat_template: the template writes BOS itself where it wants one

    def __init__(self, source: str, special_tokens: dict, name: str = "model"):
        self.source, self.special_tokens, self.name = source, dict(special_tokens), name

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as the template writes it (`add_generation_prompt`: ending where the answer starts)."""
        return _compile(self.source).render(messages=[dict(m) for m in messages],
                                            add_generation_prompt=add_generation_prompt, **self.special_tokens)

    def __repr__(self):
        return f"JinjaTemplate({self.name!r})"
