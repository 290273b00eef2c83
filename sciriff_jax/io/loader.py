"""The one model loader: a Hugging Face directory or an Orbax checkpoint -> config, params and its ChatFormat.

A checkpoint is read with its own tokenizer and chat template (an HF directory's files, the record an Orbax run
wrote, io/tokenizer_files.py), resolved once into a `ChatFormat` by `resolve_chat_format`; a missing one, or a
VOCABULARY_PATH other than the one it was trained with, stops.

Every caller goes through `load` (or `load_config` for the shapes alone): `sciriff_jax.load_model`, the eval and
infer runs, a finetune's INITIAL_CHECKPOINT_PATH and `sciriff-jax export`. `load` resolves the ChatFormat (the
vocabulary needs `seqio_tasks`, hence TensorFlow) before the weights of an HF directory and checks it against the
embedding; `load_model` and `with_tokenizer=False` read it only on first use of `Loaded.chat_format`, so loading
for logits or generation needs neither.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sciriff_jax.chat.format import AUTO, ChatFormat, resolve_template
from sciriff_jax.decoding.generate import GenerationConfig, Sampling, generate
from sciriff_jax.io import checkpoint, hf, lora_files, paths, tokenizer_files
from sciriff_jax.model.config import LlamaConfig, compute_dtype_for, resolve_dtype
from sciriff_jax.model import lora as lora_lib
from sciriff_jax.model.llama import Llama, init_params


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


def _fingerprint_of(vocabulary_path) -> str | None:
    if not isinstance(vocabulary_path, (str, os.PathLike)):
        return getattr(vocabulary_path, "fingerprint", None)
    p = paths.resolve(vocabulary_path)
    f = tokenizer_files.tokenizer_file(p) if p.is_dir() else p
    return tokenizer_files.file_fingerprint(f) if f is not None and f.is_file() else None


def resolve_chat_format(path, vocabulary_path=None, template: str | None = None) -> ChatFormat:
    """The ChatFormat of the checkpoint at `path`: its own tokenizer and template (an HF directory's files, an
    Orbax run's record) unless `vocabulary_path` / `template` say otherwise ("auto" / None: its own, through
    chat.format.resolve_template). Stops, naming the fix, when there is none or when `vocabulary_path` is not the
    vocabulary the checkpoint was trained with."""
    p = paths.resolve(path)
    hf_dir = is_hf_dir(p)
    own = tokenizer_files.recorded_dir(p) if not hf_dir else (p if tokenizer_files.tokenizer_file(p) else None)
    recorded = tokenizer_files.read_record(own)["template"] if own is not None and not hf_dir else None
    what = "Hugging Face directory" if hf_dir else "checkpoint"
    if vocabulary_path is not None and own is not None and _fingerprint_of(vocabulary_path) != _fingerprint_of(own):
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
    source = vocabulary_path if vocabulary_path is not None else str(own)
    # Whether the checkpoint ships a chat template of its own: an HF directory's (when its tokenizer is the one
    # read), else a VOCABULARY_PATH directory's.
    if hf_dir:
        tokenizer_dir = p if own is not None else None
    else:
        tokenizer_dir = paths.resolve(source) if isinstance(source, (str, os.PathLike)) else None
    has_own = tokenizer_dir is not None and tokenizer_dir.is_dir() and tokenizer_files.has_chat_template(tokenizer_dir)
    resolved = resolve_template(template, has_own, recorded)
    vocabulary = vocabulary_for(source)
    said = f"its own tokenizer ({own})" if vocabulary_path is None else f"VOCABULARY_PATH={vocabulary_path}"
    if template not in (None, "", AUTO):
        why = f"template {template!r} (TEMPLATE)"
    elif recorded:
        why = "its chat template" if recorded == "model" else f"template {recorded!r} recorded by its run"
    elif resolved == "model":
        why = "its chat template"
    else:
        why = f"template {resolved!r} (the {what} has no chat template; set TEMPLATE to choose)"
    return ChatFormat(vocabulary, resolved, f"{said}; {why}")


def _cast(params, config: LlamaConfig, dtype: str | None):
    """Params in `dtype` (None: as they are), computing in float32 / float16 for such params, bfloat16 otherwise."""
    if dtype is None:
        return params, config
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    return params, config.replace(param_dtype=dtype, dtype=compute_dtype_for(dtype))


@dataclasses.dataclass
class Loaded:
    """A loaded model: config, params, where they came from, jitted logits / generation, and (read on first use)
    its ChatFormat."""

    config: LlamaConfig
    params: Any
    path: str
    kind: str                         # "hf" or "orbax"
    vocabulary_path: Any = None       # VOCABULARY_PATH asked for (None: the checkpoint's own)
    template: str | None = None       # TEMPLATE asked for (None / "auto": the checkpoint's own)

    @functools.cached_property
    def chat_format(self) -> ChatFormat:
        return resolve_chat_format(self.path, self.vocabulary_path, self.template).check_fits(
            self.config.vocab_size, self.path)

    @functools.cached_property
    def _forward(self):
        model = Llama(self.config)
        return jax.jit(lambda p, t: model.apply({"params": p}, t))

    def logits(self, token_ids) -> np.ndarray:
        """float32 logits [B, S, V] for int token ids [B, S] (a 1-D array is treated as one row)."""
        tokens = np.asarray(token_ids)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"logits: expected integer token ids [batch, seq], got {tokens.dtype} {tokens.shape}.")
        return np.asarray(self._forward(self.params, jnp.asarray(tokens, jnp.int32)))

    def generate(self, prompts: list[list[int]], *, max_new_tokens, eos_id: int, stop_sequences=(),
                 temperature: float = 0.0, top_p: float = 1.0, **engine) -> list[list[int]]:
        """New tokens per prompt (`sciriff_jax.decoding.generate.generate`; `engine`: its batch_size, sharding,
        kv_cache_bytes, rng, hooks)."""
        generation = GenerationConfig(max_new_tokens, eos_id, stop_sequences, Sampling(temperature, top_p))
        return generate(self.config, self.params, prompts, generation, **engine)


def load(path, *, dtype: str | None = None, vocabulary_path=None, template: str | None = None,
         shardings=None, with_tokenizer: bool = True) -> Loaded:
    """Load a Hugging Face directory or an Orbax checkpoint (step dir or MODEL_DIR, local or URL).

    `dtype`: the params' dtype (None: as stored for Orbax, float32 for Hugging Face; "auto": the platform's, float32
    on a CPU and bfloat16 elsewhere), computing in float32 / float16 for such params and bfloat16 otherwise. `shardings`: a pytree of shardings to place the params on a mesh.
    `vocabulary_path` / `template`: None (or "auto") for the checkpoint's own (`chat_format`), resolved before the
    weights are read unless `with_tokenizer=False` (the weights alone: a finetune's initial checkpoint, logits).
    """
    _require(path)
    dtype = resolve_dtype(dtype)
    p = paths.resolve(path)
    kind = "hf" if is_hf_dir(p) else "orbax"
    fmt = None
    if with_tokenizer and kind == "hf":
        fmt = resolve_chat_format(p, vocabulary_path, template)  # before minutes of reading weights
    if kind == "hf":
        params, config = hf.load_hf_params(p, dtype=dtype or "float32")
        params = jax.device_put(params, shardings) if shardings is not None else jax.tree.map(jnp.asarray, params)
    else:
        record = lora_files.read_record(checkpoint.resolve_checkpoint_dir(p))
        if record is None:
            params, config = checkpoint.load_params(p, shardings=shardings)  # verifies first: a corrupt file is named
        else:  # a LoRA run's adapters: merged into the base they name
            params, config = _merged_lora(p, record, shardings)
        params, config = _cast(params, config, dtype)
    loaded = Loaded(config, params, str(p), kind, vocabulary_path, template)
    if with_tokenizer:  # checked against the model's embedding rows now, not at the first prompt
        loaded.chat_format = (fmt or resolve_chat_format(p, vocabulary_path, template)).check_fits(config.vocab_size, p)
    return loaded


def _merged_lora(path, record: dict, shardings):
    """(the base named by a LoRA checkpoint's record with its adapters merged in, the run's LlamaConfig)."""
    adapters, config = checkpoint.load_params(path)
    lora_files.check_base(record, path)
    base_path = record["base"]["path"]
    if base_path:
        base = load(base_path, dtype=config.param_dtype, with_tokenizer=False).params
    else:  # a random base, as the run drew it from its seed
        base = init_params(config, jax.random.PRNGKey(record["base"]["random_init_seed"]))
    lora = lora_lib.LoraConfig.from_dict(record["lora"])
    merged = jax.jit(lambda b, a: lora_lib.merge(b, a, lora, jnp.dtype(config.param_dtype)))(base, adapters)
    return (jax.device_put(merged, shardings) if shardings is not None else merged), config


def load_model(path, dtype: str = "float32") -> Loaded:
    """Load a Hugging Face model directory (has config.json) or an Orbax checkpoint dir, params in `dtype`; its
    ChatFormat is read on first use of `.chat_format`."""
    return load(path, dtype=dtype, with_tokenizer=False)
