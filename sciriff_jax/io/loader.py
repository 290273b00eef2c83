"""The one model loader: a Hugging Face directory or an Orbax checkpoint -> config, params, vocabulary, template.

Every caller goes through `load` (or `load_config` for the shapes alone): `sciriff_jax.load_model`, the eval and
infer runs, a finetune's INITIAL_CHECKPOINT_PATH and `sciriff-jax export`. The vocabulary is read on first use
(it needs `seqio_tasks`, hence TensorFlow), so loading for logits or generation needs neither.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sciriff_jax.io import checkpoint, hf, paths
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import Llama

DEFAULT_TEMPLATE = "tulu"


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
    return hf.load_hf_config(path) if is_hf_dir(path) else checkpoint.load_config(path)


def vocabulary_for(path: str | None):
    """The SeqIO vocabulary at `path` (a .model file), else the configured one (seqio_tasks.vocab)."""
    from seqio_tasks import vocab as vocab_lib  # the data layer: TensorFlow, only when a vocabulary is needed

    return vocab_lib.get_vocabulary(path)


def training_bos_id(vocabulary) -> int | None:
    """The BOS that training put before every document (seqio_tasks.render), so eval prompts start the same way."""
    from seqio_tasks import render

    bos = render.bos_ids(vocabulary)
    return bos[0] if bos else None


@dataclasses.dataclass
class Loaded:
    """A loaded model: config, params, where they came from, and (read on first use) its vocabulary and BOS."""

    config: LlamaConfig
    params: Any
    path: str
    kind: str                           # "hf" or "orbax"
    vocabulary_path: str | None = None  # None: the configured vocabulary (seqio_tasks.vocab)
    template: str = DEFAULT_TEMPLATE
    own_tokenizer: bool = False         # a Hugging Face directory read with its own tokenizer.model

    @functools.cached_property
    def vocabulary(self):
        return vocabulary_for(self.vocabulary_path)

    @functools.cached_property
    def bos_id(self) -> int | None:
        """BOS to put before each prompt: as training did, or as an HF model's own tokenizer does."""
        if self.kind == "hf":
            if not self.own_tokenizer:
                return None  # another vocabulary than the model's: no BOS is assumed
            tokenizer_config = paths.resolve(self.path) / "tokenizer_config.json"
            if tokenizer_config.is_file() and json.loads(tokenizer_config.read_text()).get("add_bos_token") is False:
                return None
            bos = training_bos_id(self.vocabulary)
            if bos is not None:
                return bos
            return json.loads((paths.resolve(self.path) / "config.json").read_text()).get("bos_token_id")
        return training_bos_id(self.vocabulary)


def load(path, *, dtype: str | None = None, vocabulary_path: str | None = None, template: str = DEFAULT_TEMPLATE,
         shardings=None) -> Loaded:
    """Load a Hugging Face directory or an Orbax checkpoint (step dir or MODEL_DIR, local or URL).

    `dtype`: the params' dtype (None: as stored for Orbax, float32 for Hugging Face), with compute in float32 for
    float32 params and bfloat16 otherwise. `shardings`: a pytree of shardings to place the params on a mesh.
    `vocabulary_path`: the vocabulary to use; for a Hugging Face directory, its tokenizer.model by default.
    """
    _require(path)
    p = paths.resolve(path)
    if is_hf_dir(p):
        params, config = hf.load_hf_params(p, dtype=dtype or "float32")
        params = jax.device_put(params, shardings) if shardings is not None else jax.tree.map(jnp.asarray, params)
        spm = p / "tokenizer.model"
        own = vocabulary_path is None and spm.is_file()
        return Loaded(config, params, str(p), "hf", vocabulary_path or (str(spm) if own else None), template, own)
    params, config = checkpoint.load_params(p, shardings=shardings)
    if dtype is not None:
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
        config = config.replace(param_dtype=dtype, dtype="float32" if dtype == "float32" else "bfloat16")
    return Loaded(config, params, str(p), "orbax", vocabulary_path, template)


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
        """New tokens per prompt; keyword arguments as `sciriff_jax.eval.decode.generate` (max_new_tokens, eos_id, ...)."""
        from sciriff_jax.eval.decode import generate  # decoding is evaluation's; loading does not need it

        return generate(self.config, self.params, prompts, **kwargs)


def load_model(path, dtype: str = "float32") -> LoadedModel:
    """Load a Hugging Face model directory (has config.json) or an Orbax checkpoint dir, params in `dtype`."""
    loaded = load(path, dtype=dtype)
    return LoadedModel(config=loaded.config, params=loaded.params, path=loaded.path)
