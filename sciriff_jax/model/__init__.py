"""The Llama model: config, Flax module, attention backends, rotary embeddings."""
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import Llama, init_params, logical_axes, param_shapes

__all__ = ["LlamaConfig", "Llama", "init_params", "logical_axes", "param_shapes"]
