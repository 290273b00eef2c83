"""`load_model(path)`: a Hugging Face directory or an Orbax checkpoint as an object with .logits and .generate."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sciriff_jax import paths
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import Llama


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
        """New tokens per prompt; keyword arguments as `sciriff_jax.decode.generate` (max_new_tokens, eos_id, ...)."""
        from sciriff_jax.decode import generate

        return generate(self.config, self.params, prompts, **kwargs)


def load_model(path, dtype: str = "float32") -> LoadedModel:
    """Load a Hugging Face model directory (has config.json) or an Orbax checkpoint dir, params in `dtype`."""
    p = paths.resolve(path)  # an Orbax checkpoint may be a URL (gs://...); a Hugging Face directory is local
    compute = "float32" if dtype == "float32" else "bfloat16"
    if (p / "config.json").exists():
        from sciriff_jax.hf import load_hf_params

        params, config = load_hf_params(p, dtype=dtype)
        params = jax.tree.map(jnp.asarray, params)
    else:
        from sciriff_jax.checkpoint import load_params

        if not p.exists():
            raise FileNotFoundError(f"load_model: {p} does not exist (expected a Hugging Face model directory "
                                    "with config.json, or an Orbax checkpoint directory).")
        params, config = load_params(p)
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
        config = config.replace(param_dtype=dtype, dtype=compute)
    return LoadedModel(config=config, params=params, path=str(p))
