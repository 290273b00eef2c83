"""The one model loader: a Hugging Face directory or an Orbax checkpoint -> config, params, vocabulary, template.

A checkpoint is read with its own tokenizer and chat template (an HF directory's files, the record an Orbax run
wrote, io/tokenizer_files.py); a missing one, or a VOCABULARY_PATH other than the one it was trained with, stops.

Every caller goes through `load` (or `load_config` for the shapes alone): `sciriff_jax.load_model`, the eval and
infer runs, a finetune's INITIAL_CHECKPOINT_PATH and `sciriff-jax export`. The vocabulary is read on first use
(it needs `seqio_tasks`, hence TensorFlow), so loading for logits or generation needs neither.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sciriff_jax.io import checkpoint, hf, paths, tokenizer_files
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import Llama

DEFAULT_TEMPLATE = "auto"  # the checkpoint's own template (HF chat template / the one its run recorded), else tulu
FALLBACK_TEMPLATE = "tulu"


def is_hf_dir(path) -> bool:
    """True for a Hugging Face model directory (it has config.json)."""
    return (paths.resolve(path) / "config.json").is_file()


def _require(path) -> None:
    if not paths.resolve(path).exists():
        raise FileNotFoundError(f"{path!s} does not exist: expected a Hugging Face model directory with config.json, "
                                "or an Orbax checkpoint (MODEL_DIR or a step directory).")


def load_config(path) -> LlamaConfig:
    """The model config of a Hugging Face directory or an Orbax checkpoint, without reading the weights."""
    _require(path)
    return hf.load_hf_config(path) if is_hf_dir(path) else checkpoint.read_model_config(path)


def vocabulary_for(path):
    """The SeqIO vocabulary at `path` (.model, tokenizer.json, a tokenizer directory or a seqio.Vocabulary)."""
    from seqio_tasks import vocab as vocab_lib  # the data layer: TensorFlow, only when a vocabulary is needed

    if isinstance(path, str) and paths.is_url(path):
        path = str(tokenizer_files.local_copy(path))
    return vocab_lib.get_vocabulary(path)


def training_bos_id(vocabulary, template=None) -> int | None:
    """The BOS that training put before every document (seqio_tasks.render), so eval prompts start the same way."""
    from seqio_tasks import render

    bos = render.bos_ids(vocabulary, template)
    return bos[0] if bos else None


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """Which vocabulary and chat template a checkpoint is read with, and why (for logs and summaries)."""

    vocabulary_path: Any        # a path (.model / tokenizer.json / directory) or a seqio.Vocabulary
    template: str               # a built-in name, "model" (the vocabulary's own) or a .jinja path
    note: str


def _fingerprint_of(vocabulary_path) -> str | None:
    if not isinstance(vocabulary_path, (str, os.PathLike)):
        return getattr(vocabulary_path, "fingerprint", None)
    p = paths.resolve(vocabulary_path)
    f = tokenizer_files.tokenizer_file(p) if p.is_dir() else p
    return tokenizer_files.file_fingerprint(f) if f is not None and f.is_file() else None


def resolve_tokenizer(path, vocabulary_path=None, template: str | None = None) -> Tokenizer:
    """The tokenizer and template for the checkpoint at `path`: its own (an HF directory's files, an Orbax run's
    record) unless `vocabulary_path` / `template` say otherwise. Stops, naming the fix, when there is none or
    when `vocabulary_path` is not the vocabulary the checkpoint was trained with."""
    p = paths.resolve(path)
    hf_dir = is_hf_dir(p)
    own = own_template = None
    if hf_dir:
        own = p if tokenizer_files.tokenizer_file(p) is not None else None
        if own is not None:
            own_template = "model" if tokenizer_files.has_chat_template(p) else None
    else:
        own = tokenizer_files.recorded_dir(p)
        if own is not None:
            own_template = tokenizer_files.read_record(own)["template"]
    what = "Hugging Face directory" if hf_dir else "checkpoint"
    if vocabulary_path is not None and own is not None:
        ours, theirs = _fingerprint_of(vocabulary_path), _fingerprint_of(own)
        if ours != theirs:
            raise ValueError(
                f"VOCABULARY_PATH={vocabulary_path} is not the vocabulary the {what} {path} was trained with "
                f"({own}); its token ids would mean other words. Leave VOCABULARY_PATH unset to use the "
                "checkpoint's own tokenizer.")
    if vocabulary_path is None and own is None:
        if hf_dir:
            raise FileNotFoundError(
                f"Hugging Face directory {path} has no tokenizer (tokenizer.json or tokenizer.model): copy the "
                "model's tokenizer files into it (tokenizer.json, tokenizer_config.json, ...), or set "
                "VOCABULARY_PATH to the tokenizer it was trained with.")
        raise FileNotFoundError(
            f"checkpoint {path} records no tokenizer (no {tokenizer_files.SUBDIR}/{tokenizer_files.RECORD} in it or "
            "its MODEL_DIR; written before sciriff-jax recorded tokenizers?): set VOCABULARY_PATH to the vocabulary "
            "it was trained with (.model, tokenizer.json or a tokenizer directory).")
    vocab = vocabulary_path if vocabulary_path is not None else str(own)
    source = f"its own tokenizer ({own})" if vocabulary_path is None else f"VOCABULARY_PATH={vocabulary_path}"
    if template not in (None, "", DEFAULT_TEMPLATE):
        return Tokenizer(vocab, template, f"{source}; template {template!r} (TEMPLATE)")
    if own_template is not None:
        kind = "its chat template" if own_template == "model" else f"template {own_template!r} recorded by its run"
        return Tokenizer(vocab, own_template, f"{source}; {kind}")
    if vocabulary_path is not None and not hf_dir and own is None and isinstance(vocab, str) and \
            paths.resolve(vocab).is_dir() and tokenizer_files.has_chat_template(vocab):
        return Tokenizer(vocab, "model", f"{source}; its chat template")
    return Tokenizer(vocab, FALLBACK_TEMPLATE, f"{source}; template {FALLBACK_TEMPLATE!r} (the {what} has no chat "
                                               "template; set TEMPLATE to choose)")


@dataclasses.dataclass
class Loaded:
    """A loaded model: config, params, where they came from, and (read on first use) its vocabulary and BOS."""

    config: LlamaConfig
    params: Any
    path: str
    kind: str                           # "hf" or "orbax"
    vocabulary_path: Any = None         # what `vocabulary` is read from (resolve_tokenizer)
    template: str = FALLBACK_TEMPLATE   # the chat template of prompts: built-in name, "model" or a .jinja path
    tokenizer_note: str = ""            # which tokenizer and template, and why (printed by eval)

    @functools.cached_property
    def vocabulary(self):
        vocab = vocabulary_for(self.vocabulary_path)
        if self.config is not None and vocab.vocab_size > self.config.vocab_size:
            raise ValueError(
                f"the vocabulary {self.vocabulary_path} has {vocab.vocab_size} tokens but the model {self.path} has "
                f"{self.config.vocab_size} embedding rows: token ids past {self.config.vocab_size - 1} would index "
                "nothing. Use the model's own tokenizer (leave VOCABULARY_PATH unset) or the matching model.")
        return vocab

    @functools.cached_property
    def bos_id(self) -> int | None:
        """BOS to put before each prompt: as training put it (the tokenizer's BOS, unless the template writes it)."""
        return training_bos_id(self.vocabulary, self.template)


def load(path, *, dtype: str | None = None, vocabulary_path=None, template: str | None = None,
         shardings=None, with_tokenizer: bool = True) -> Loaded:
    """Load a Hugging Face directory or an Orbax checkpoint (step dir or MODEL_DIR, local or URL).

    `dtype`: the params' dtype (None: as stored for Orbax, float32 for Hugging Face), with compute in float32 for
    float32 params and bfloat16 otherwise. `shardings`: a pytree of shardings to place the params on a mesh.
    `vocabulary_path` / `template`: None (or "auto") for the checkpoint's own (resolve_tokenizer), checked before
    the weights are read; `with_tokenizer=False` reads the weights alone (a finetune's initial checkpoint).
    """
    _require(path)
    p = paths.resolve(path)

    def tokenizer() -> Tokenizer:
        return resolve_tokenizer(p, vocabulary_path, template) if with_tokenizer else Tokenizer(None, "tulu", "")

    if is_hf_dir(p):
        tok = tokenizer()  # before minutes of reading weights
        params, config = hf.load_hf_params(p, dtype=dtype or "float32")
        params = jax.device_put(params, shardings) if shardings is not None else jax.tree.map(jnp.asarray, params)
        return Loaded(config, params, str(p), "hf", tok.vocabulary_path, tok.template, tok.note)
    params, config = checkpoint.load_params(p, shardings=shardings)  # verifies first: a corrupt file is named
    tok = tokenizer()
    if dtype is not None:
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
        config = config.replace(param_dtype=dtype, dtype="float32" if dtype == "float32" else "bfloat16")
    return Loaded(config, params, str(p), "orbax", tok.vocabulary_path, tok.template, tok.note)


@dataclasses.dataclass
class LoadedModel:
    """A model ready for inference: its config, params, and jitted logits/generation."""

    config: LlamaConfig
    params: Any
    path: str = ""

    def __post_init__(self):
        model = Llama(self.config)
        self._forward = jax.jit(lambda p, t: model.apply({"params": p}, t))

    def logits(self, token_ids) -> np.ndarray:
        """float32 logits [B, S, V] for int token ids [B, S] (a 1-D array is treated as one row)."""
        tokens = np.asarray(token_ids)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"logits: expected integer token ids [batch, seq], got {tokens.dtype} {tokens.shape}.")
        return np.asarray(self._forward(self.params, jnp.asarray(tokens, jnp.int32)))

    def generate(self, prompts: list[list[int]], **kwargs) -> list[list[int]]:
        """New tokens per prompt; keyword arguments as `sciriff_jax.decoding.generate.generate` (max_new_tokens, eos_id, ...)."""
        from sciriff_jax.decoding.generate import generate  # decoding is evaluation's; loading does not need it

        return generate(self.config, self.params, prompts, **kwargs)


def load_model(path, dtype: str = "float32") -> LoadedModel:
    """Load a Hugging Face model directory (has config.json) or an Orbax checkpoint dir, params in `dtype`."""
    _require(path)
    p = paths.resolve(path)
    if is_hf_dir(p):  # logits and generation need no tokenizer
        params, config = hf.load_hf_params(p, dtype=dtype)
        return LoadedModel(config=config, params=jax.tree.map(jnp.asarray, params), path=str(p))
    params, config = checkpoint.load_params(p)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    loaded = Loaded(config.replace(param_dtype=dtype, dtype="float32" if dtype == "float32" else "bfloat16"),
                    params, str(p), "orbax")
    return LoadedModel(config=loaded.config, params=loaded.params, path=loaded.path)
