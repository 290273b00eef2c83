"""LlamaConfig: the model's shape and numerics, convertible to and from Hugging Face config dicts."""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import jax

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# Hugging Face model_type -> its architectures entry: the Llama family this model covers.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "olmo2": "Olmo2ForCausalLM"}
QK_NORMS = (None, "head", "projection")  # Qwen3: RMSNorm per head over head_dim; OLMo 2: over the whole projection
ATTENTION_BACKENDS = ("auto", "reference", "blockwise", "cudnn", "splash", "ring")
DTYPES = ("float32", "bfloat16", "float16")
AUTO_DTYPE = "auto"  # the platform's default: float32 on a CPU (bf16 is emulated there, slower), bfloat16 elsewhere


def platform_dtype(platform: str | None = None) -> str:
    """The default compute dtype of `platform` (None: JAX's default backend): float32 on a CPU, else bfloat16."""
    if platform is None:
        platform = jax.default_backend()
    return "float32" if platform == "cpu" else "bfloat16"


def resolve_dtype(dtype: str | None, platform: str | None = None) -> str | None:
    """`dtype` with "auto" resolved to `platform_dtype` (None stays None: the caller's own default)."""
    return platform_dtype(platform) if dtype == AUTO_DTYPE else dtype


def compute_dtype_for(param_dtype: str) -> str:
    """The compute dtype of params held in `param_dtype`: float32 and float16 compute as held, others in bfloat16."""
    return param_dtype if param_dtype in ("float32", "float16") else "bfloat16"


# Field markers. SHAPE fields fix the parameter shapes: a run on top of a checkpoint must match them.
# RUNTIME fields are numerics, memory and context length: a run may change them over a checkpoint
# (e.g. the 16K experiment scales RoPE), and the run's own values then win.
# A field's metadata may also say what it accepts ("min", "choices": sciriff_jax/run/macros.py checks the gin
# macros bound to it against that).
SHAPE = {"kind": "shape"}
RUNTIME = {"kind": "runtime"}


@dataclasses.dataclass
class LlamaConfig:
    """Shape and numerics of a decoder-only Llama-family model (Llama 2/3, Mistral, Qwen2/2.5/3, OLMo 2)."""

    vocab_size: int = dataclasses.field(metadata={**SHAPE, "min": 1})
    hidden_size: int = dataclasses.field(metadata=SHAPE)
    intermediate_size: int = dataclasses.field(metadata=SHAPE)
    num_layers: int = dataclasses.field(metadata=SHAPE)
    num_heads: int = dataclasses.field(metadata=SHAPE)
    num_kv_heads: int = dataclasses.field(metadata=SHAPE)
    head_dim: int | None = dataclasses.field(default=None, metadata=SHAPE)
    model_type: str = "llama"                                          # HF model_type (export writes it)
    attention_bias: bool = dataclasses.field(default=False, metadata=SHAPE)  # Qwen2: q/k/v projections have biases
    qk_norm: str | None = dataclasses.field(default=None, metadata=SHAPE)   # QK_NORMS
    post_norms: bool = dataclasses.field(default=False, metadata=SHAPE)  # OLMo 2: norms after attention / MLP, none before
    rope_theta: float = 10000.0
    # None, {"rope_type": "linear", "factor": f} or {"rope_type": "llama3", "factor", "low_freq_factor",
    # "high_freq_factor", "original_max_position_embeddings"} (Hugging Face's keys).
    rope_scaling: dict | None = dataclasses.field(default=None, metadata=RUNTIME)
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_position: int = dataclasses.field(default=4096, metadata=RUNTIME)
    # Compute dtype; "auto" becomes the platform's (platform_dtype) when the config is made.
    dtype: str = dataclasses.field(default="bfloat16", metadata={**RUNTIME, "choices": DTYPES + (AUTO_DTYPE,)})
    param_dtype: str = dataclasses.field(default="float32", metadata={**RUNTIME, "choices": DTYPES})
    scan_layers: bool = True
    remat_policy: str = dataclasses.field(default="none", metadata={**RUNTIME, "choices": REMAT_POLICIES})
    attention_backend: str = dataclasses.field(default="auto", metadata={**RUNTIME, "choices": ATTENTION_BACKENDS})

    @classmethod
    def fields_of_kind(cls, kind: dict) -> tuple[str, ...]:
        """Names of the fields marked SHAPE or RUNTIME."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("kind") == kind["kind"])

    def shape_mismatches(self, other: "LlamaConfig") -> dict:
        """{field: (ours, theirs)} for the SHAPE fields where `other` differs."""
        return {k: (getattr(self, k), getattr(other, k)) for k in self.fields_of_kind(SHAPE)
                if getattr(self, k) != getattr(other, k)}

    def with_runtime_of(self, other: "LlamaConfig") -> "LlamaConfig":
        """This config with `other`'s RUNTIME fields (numerics, memory, context length)."""
        return self.replace(**{k: getattr(other, k) for k in self.fields_of_kind(RUNTIME)})

    def __post_init__(self):
        self.dtype = resolve_dtype(self.dtype)
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"LlamaConfig.{name}={getattr(self, name)!r}; choose one of {DTYPES}"
                                 + (f" or {AUTO_DTYPE!r}" if name == "dtype" else "") + ".")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"LlamaConfig: hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                    "set head_dim explicitly.")
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig: num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} "
                "(grouped-query attention shares each KV head among num_heads/num_kv_heads query heads).")
        if self.model_type not in ARCHITECTURES:
            raise ValueError(f"LlamaConfig.model_type={self.model_type!r}; supported: {sorted(ARCHITECTURES)}.")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"LlamaConfig.qk_norm={self.qk_norm!r}; choose one of {QK_NORMS}.")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"LlamaConfig.remat_policy={self.remat_policy!r}; choose one of {REMAT_POLICIES}.")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"LlamaConfig.attention_backend={self.attention_backend!r}; choose one of {ATTENTION_BACKENDS}.")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("linear", "llama3", "default"):
                raise ValueError(
                    f"LlamaConfig.rope_scaling type {kind!r} is not supported; use 'linear', 'llama3' or None.")

    def __hash__(self):
        # Hashable so a config can be a static jit argument / Flax module attribute.
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def replace(self, **changes) -> "LlamaConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LlamaConfig":
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"LlamaConfig.from_dict: unknown keys {unknown}; known keys are {sorted(names)}.")
        return cls(**d)

    def to_hf_config(self) -> dict[str, Any]:
        """A Hugging Face `LlamaConfig` dict (config.json contents) describing this model."""
        rope_parameters = {"rope_type": "default", "rope_theta": float(self.rope_theta)}
        if self.rope_scaling:
            rope_parameters = {**{k: v for k, v in self.rope_scaling.items() if k != "type"},
                               "rope_type": self.rope_scaling.get("rope_type", self.rope_scaling.get("type")),
                               "rope_theta": float(self.rope_theta)}
        torch_dtype = "float32" if self.param_dtype == "float32" else self.param_dtype
        out = {
            "architectures": [ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "attention_bias": self.attention_bias,
            # Both spellings: transformers>=5 reads rope_parameters, older versions rope_theta/rope_scaling.
            "rope_parameters": rope_parameters,
            "rope_theta": float(self.rope_theta),
            "rope_scaling": dict(rope_parameters) if self.rope_scaling else None,
            "torch_dtype": torch_dtype,
            "dtype": torch_dtype,
        }
        if self.model_type == "llama":
            out["mlp_bias"] = False
        if self.model_type in ("mistral", "qwen2", "qwen3"):
            out.update(sliding_window=None, use_sliding_window=False)
        if self.model_type == "qwen2":
            del out["attention_bias"]  # Qwen2 always has q/k/v biases
        return out

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], **overrides) -> "LlamaConfig":
        """Build from a Hugging Face config.json dict (transformers 4.x or 5.x spelling) of a supported model_type."""
        model_type = hf.get("model_type", "llama")
        if model_type not in ARCHITECTURES:
            raise ValueError(f"from_hf_config: model_type={model_type!r} is not supported; supported: "
                             f"{', '.join(f'{k} ({v})' for k, v in ARCHITECTURES.items())}.")
        if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias"):
            raise ValueError("from_hf_config: only silu activations without MLP biases are supported.")
        window = hf.get("sliding_window") if hf.get("use_sliding_window", model_type == "mistral") else None
        rope = dict(hf.get("rope_parameters") or {})
        theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = hf.get("rope_scaling") or rope or None
        if scaling is not None:
            scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            scaling = None if kind == "default" else {**scaling, "rope_type": kind}
            if scaling is not None:
                scaling.pop("type", None)
        heads = hf["num_attention_heads"]
        max_position = hf.get("max_position_embeddings", 4096)
        if window is not None and window < max_position:
            # Sliding-window attention equals full attention for sequences up to the window, so the context is
            # capped there rather than attending further than the model was trained to.
            logging.warning("%s: sliding_window=%d < max_position_embeddings=%d: the context is capped at %d tokens",
                            model_type, window, max_position, window)
            max_position = window
        kw = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            model_type=model_type,
            attention_bias=True if model_type == "qwen2" else bool(hf.get("attention_bias", False)),
            qk_norm={"qwen3": "head", "olmo2": "projection"}.get(model_type),
            post_norms=model_type == "olmo2",
            rope_theta=float(theta),
            rope_scaling=scaling,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position=max_position,
        )
        kw.update(overrides)
        return cls(**kw)

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count (embedding and untied output head included unless asked otherwise)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        attn += hd * (self.num_heads + 2 * self.num_kv_heads) if self.attention_bias else 0
        attn += {"head": 2 * hd, "projection": hd * (self.num_heads + self.num_kv_heads)}.get(self.qk_norm, 0)
        per_layer = attn + 3 * d * f + 2 * d
        n = self.num_layers * per_layer + d
        if include_embedding:
            n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 * params + 6 * layers * hidden * seq_len (the ANCHORS.md definition).

        The one formula: benchmarks' model TFLOP/s and the MFU in a run's metrics.jsonl both use it."""
        return 6.0 * self.num_params() + 6.0 * self.num_layers * self.hidden_size * seq_len
