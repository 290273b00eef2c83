"""The tokenizer and chat template a model was trained with, recorded beside its Orbax checkpoints.

A `tokenizer/` folder holds the tokenizer files (a Hugging Face tokenizer.json with its config files, or a
SentencePiece tokenizer.model), the chat template as chat_template.jinja when it is the model's own, and
`sciriff_tokenizer.json`: {"template": a built-in name or "model", "fingerprint": sha256 of the tokenizer file}.
A training run writes MODEL_DIR/tokenizer/ (shared by all its steps); `sciriff-jax convert` writes
<out>/tokenizer/ inside the step directory. Pure file handling: no TensorFlow, no SeqIO.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile

from sciriff_jax.io import checkpoint, paths, writes

SUBDIR = "tokenizer"
RECORD = "sciriff_tokenizer.json"
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
            "chat_template.jinja", "chat_template.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # what makes a directory a tokenizer, preferred first
BUILTIN_TEMPLATES = ("tulu", "llama2", "plain")


def tokenizer_file(directory) -> pathlib.Path | None:
    """The tokenizer file of a directory (tokenizer.json preferred, as transformers), or None."""
    d = paths.resolve(directory)
    return next((d / n for n in TOKENIZER_FILES if (d / n).is_file()), None)


def file_fingerprint(path) -> str:
    """sha256 of a tokenizer file: the identity of a vocabulary."""
    return hashlib.sha256(paths.resolve(path).read_bytes()).hexdigest()


def has_chat_template(directory) -> bool:
    """Whether a tokenizer directory ships a chat template (chat_template.jinja/.json or tokenizer_config.json)."""
    d = paths.resolve(directory)
    if (d / "chat_template.jinja").is_file():
        return True
    for name in ("chat_template.json", "tokenizer_config.json"):
        if (d / name).is_file():
            try:
                if json.loads((d / name).read_text()).get("chat_template"):
                    return True
            except ValueError:
                raise ValueError(f"{d / name}: not a readable JSON file; re-download or re-save it") from None
    return False


def recorded_dir(checkpoint_path):
    """Where the tokenizer of an Orbax checkpoint is recorded (step dir or MODEL_DIR), or None."""
    p = paths.resolve(checkpoint_path)
    candidates = [p / SUBDIR]
    try:
        step = checkpoint.resolve_checkpoint_dir(p)
        candidates += [step / SUBDIR, step.parent.parent / SUBDIR]  # MODEL_DIR/checkpoints/<step> -> MODEL_DIR
    except FileNotFoundError:
        pass
    return next((c for c in candidates if (c / RECORD).is_file()), None)


def read_record(directory) -> dict:
    """The {"template", "fingerprint"} record of a recorded tokenizer folder."""
    return json.loads((paths.resolve(directory) / RECORD).read_text())


def write(dst, *, source_dir=None, template: str, spm_file=None, template_source: str | None = None) -> None:
    """Record a tokenizer into `dst` (local or URL): the files of `source_dir` (a tokenizer directory) or one
    SentencePiece `spm_file`, and `template` (a built-in name, or "model" with `template_source` its Jinja text)."""
    dst = paths.resolve(dst)
    with writes.naming(dst):  # a full disk names the folder (the record, written last and whole, marks it done)
        dst.mkdir(parents=True, exist_ok=True)
        if spm_file is not None:
            main = dst / "tokenizer.model"
            main.write_bytes(paths.resolve(spm_file).read_bytes())
        else:
            src = paths.resolve(source_dir)
            for name in HF_FILES + ("tokenizer.model",):
                if (src / name).is_file():
                    (dst / name).write_bytes((src / name).read_bytes())
            main = tokenizer_file(dst)
            if main is None:
                raise FileNotFoundError(f"{src} has no tokenizer.json or tokenizer.model to record")
        if template not in BUILTIN_TEMPLATES:
            if template_source is None:
                raise ValueError(f"recording template {template!r} needs its Jinja text")
            (dst / "chat_template.jinja").write_text(template_source, encoding="utf-8")
            template = "model"
        writes.write_text(dst / RECORD, json.dumps({"template": template, "fingerprint": file_fingerprint(main)}, indent=1))


def local_copy(directory) -> pathlib.Path:
    """`directory` itself when local; a URL's tokenizer files copied into a local cache (tokenizers reads files)."""
    if not paths.is_url(directory):
        return pathlib.Path(os.fspath(directory))
    src = paths.resolve(directory)
    key = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    dst = pathlib.Path(tempfile.gettempdir()) / "sciriff-jax-tokenizers" / key
    dst.mkdir(parents=True, exist_ok=True)
    for name in HF_FILES + ("tokenizer.model", RECORD):
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def write_format(dst, chat_format) -> None:
    """Record a ChatFormat (its Hugging Face tokenizer.json or SentencePiece .model, and its template) into `dst`."""
    vocabulary, template = chat_format.vocabulary, chat_format.template
    source = None if template in BUILTIN_TEMPLATES else chat_format.renderer.source
    if hasattr(vocabulary, "tokenizer_file"):
        write(dst, source_dir=vocabulary.directory, template=template, template_source=source)
    elif hasattr(vocabulary, "sentencepiece_model_file"):
        vocabulary.tokenizer  # noqa: B018 - the sample vocabulary trains its file on first use
        write(dst, spm_file=vocabulary.sentencepiece_model_file, template=template, template_source=source)
    else:
        raise TypeError(f"cannot record a {type(vocabulary).__name__} beside the checkpoints: use a SentencePiece "
                        ".model or a Hugging Face tokenizer.json, so eval and export can find the tokenizer")
