"""Hugging Face Llama directories <-> our params: config.json + safetensors read and written (io/convert.py
turns them into Orbax checkpoints and back).

Conversion streams one tensor at a time into preallocated numpy buffers (layer tensors go straight
into their slot of the scanned [layers, ...] array), so host memory stays near one copy of the weights.
"""
from __future__ import annotations

import json
import os
import pathlib
import re

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.flax import save_file

from sciriff_jax.io import paths
from sciriff_jax.model.config import ARCHITECTURES, LlamaConfig, compute_dtype_for
from sciriff_jax.model.llama import param_shapes

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# HF name inside a layer -> (our path inside a layer, how to reshape: see _to_ours). Llama's layer; layer_map adds
# the other architectures' tensors.
_LLAMA_LAYER = {
    "self_attn.q_proj.weight": (("attn", "q_proj"), "heads"),
    "self_attn.k_proj.weight": (("attn", "k_proj"), "kv_heads"),
    "self_attn.v_proj.weight": (("attn", "v_proj"), "kv_heads"),
    "self_attn.o_proj.weight": (("attn", "o_proj"), "out"),
    "mlp.gate_proj.weight": (("mlp", "gate_proj"), None),
    "mlp.up_proj.weight": (("mlp", "up_proj"), None),
    "mlp.down_proj.weight": (("mlp", "down_proj"), None),
    "input_layernorm.weight": (("input_norm", "scale"), "vector"),
    "post_attention_layernorm.weight": (("post_attn_norm", "scale"), "vector"),
}


def layer_map(config: LlamaConfig) -> dict:
    """Every tensor of one Hugging Face layer of `config`'s architecture -> (our path, reshape kind)."""
    out = dict(_LLAMA_LAYER)
    if config.attention_bias:
        out.update({"self_attn.q_proj.bias": (("attn", "q_bias"), "heads_vector"),
                    "self_attn.k_proj.bias": (("attn", "k_bias"), "kv_heads_vector"),
                    "self_attn.v_proj.bias": (("attn", "v_bias"), "kv_heads_vector")})
    if config.qk_norm:
        per_head = config.qk_norm == "head"
        out.update({"self_attn.q_norm.weight": (("attn", "q_norm"), "vector" if per_head else "heads_vector"),
                    "self_attn.k_norm.weight": (("attn", "k_norm"), "vector" if per_head else "kv_heads_vector")})
    if config.post_norms:  # OLMo 2: post_attention_layernorm normalizes the attention output, no input norm
        del out["input_layernorm.weight"]
        out["post_attention_layernorm.weight"] = (("attn_out_norm", "scale"), "vector")
        out["post_feedforward_layernorm.weight"] = (("mlp_out_norm", "scale"), "vector")
    return out


def _np_dtype(name: str):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _to_ours(hf_tensor: np.ndarray, kind, config: LlamaConfig) -> np.ndarray:
    """HF torch-layout tensor ([out, in] Linear weight or a vector) -> our kernel layout."""
    if kind == "vector":
        return hf_tensor
    if kind == "heads_vector":
        return hf_tensor.reshape(config.num_heads, config.head_dim)
    if kind == "kv_heads_vector":
        return hf_tensor.reshape(config.num_kv_heads, config.head_dim)
    w = hf_tensor.T  # torch Linear stores [out, in]; we store [in, out]
    if kind == "heads":
        return w.reshape(config.hidden_size, config.num_heads, config.head_dim)
    if kind == "kv_heads":
        return w.reshape(config.hidden_size, config.num_kv_heads, config.head_dim)
    if kind == "out":
        return w.reshape(config.num_heads, config.head_dim, config.hidden_size)
    return w


def _to_hf(ours: np.ndarray, kind) -> np.ndarray:
    """Inverse of `_to_ours`."""
    if kind == "vector":
        return ours
    if kind in ("heads_vector", "kv_heads_vector"):
        return np.ascontiguousarray(ours.reshape(-1))
    if kind in ("heads", "kv_heads"):
        ours = ours.reshape(ours.shape[0], -1)
    elif kind == "out":
        ours = ours.reshape(-1, ours.shape[-1])
    return np.ascontiguousarray(ours.T)


def local_hf_dir(hf_dir) -> pathlib.Path:
    """`hf_dir` as a local path: safetensors and `transformers` read and write local files only."""
    if paths.is_url(hf_dir):
        raise ValueError(f"Hugging Face directory {os.fspath(hf_dir)!r} is a URL, but Hugging Face directories must be "
                         "local (Orbax checkpoints and MODEL_DIR may be URLs). Copy it to or from a local directory, "
                         "e.g. `gcloud storage cp -r`.")
    return pathlib.Path(hf_dir)


SUPPORTED_ARCHITECTURES = ARCHITECTURES  # config.json model_type -> its architectures entry


def _read_json(path: pathlib.Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # truncated, not JSON, not UTF-8
        raise ValueError(f"{path}: not a readable JSON file ({err}); re-download or re-save it") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _weight_files(hf_dir: pathlib.Path) -> list[pathlib.Path]:
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no 'weight_map' of tensor -> file")
        files = [hf_dir / n for n in sorted(set(map(str, weight_map.values())))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists weight files that are not there: {missing}")
        return files
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{hf_dir}: no *.safetensors weights (PyTorch .bin checkpoints are not supported; "
                                "re-save with `model.save_pretrained(dir, safe_serialization=True)`).")
    return files


def _open(path: pathlib.Path):
    try:
        return safe_open(str(path), framework="flax")
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) for a broken header
        raise ValueError(f"{path}: not a readable safetensors file ({err}); re-download or re-save it") from None


def _hf_shape(kind, ours: tuple, config: LlamaConfig) -> tuple:
    """The torch-layout shape of a tensor whose shape is `ours` in our layout."""
    if kind == "vector":
        return ours
    if kind in ("heads_vector", "kv_heads_vector"):
        return (ours[0] * ours[1],)
    flat = (ours[0], ours[1] * ours[2]) if kind in ("heads", "kv_heads") else \
        (ours[0] * ours[1], ours[2]) if kind == "out" else ours
    return (flat[1], flat[0])


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The torch-layout shape of every tensor a Hugging Face model with `config` has."""
    ours = param_shapes(config.replace(scan_layers=False))
    h = config.hidden_size
    shapes = {"model.embed_tokens.weight": (config.vocab_size, h), "model.norm.weight": (h,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    for i in range(config.num_layers):
        for sub, ((group, leaf), kind) in layer_map(config).items():
            shapes[f"model.layers.{i}.{sub}"] = _hf_shape(kind, tuple(ours[f"layers_{i}"][group][leaf].shape), config)
    return shapes


def check_tensors(hf_dir: pathlib.Path, config: LlamaConfig) -> None:
    """Every tensor's shape against config.json, from the safetensors headers alone (before any weight is read):
    an error names the tensor, its file and both shapes; missing and unexpected tensors are named too."""
    expected = expected_shapes(config)
    seen = {}
    for path in _weight_files(hf_dir):
        with _open(path) as f:
            for name in f.keys():
                if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and config.tie_embeddings):
                    continue  # recomputed from the config / the tied embedding is used
                if name not in expected:
                    m = _LAYER.match(name)
                    why = (f"layer {m.group(1)} but config.json has num_hidden_layers={config.num_layers}"
                           if m and m.group(2) in layer_map(config) else
                           f"not a tensor of a {config.model_type} model as config.json describes it")
                    raise ValueError(f"{path}: unexpected tensor {name!r} ({why})")
                shape = tuple(f.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise ValueError(f"{path}: tensor {name!r} has shape {shape}, but {hf_dir / 'config.json'} "
                                     f"implies {expected[name]}; the weights and config.json do not belong together")
                seen[name] = path
    missing = [n for n in expected if n not in seen]
    if missing:
        raise ValueError(f"{hf_dir}: checkpoint is missing {len(missing)} tensors, e.g. {missing[:3]}.")


def _iter_tensors(hf_dir: pathlib.Path, dtype):
    """Yield (name, numpy array in `dtype`) one tensor at a time over every safetensors shard."""
    for path in _weight_files(hf_dir):
        with _open(path) as f:
            for name in f.keys():
                try:
                    tensor = f.get_tensor(name)
                except Exception as err:  # a file cut short after its header
                    raise ValueError(f"{path}: cannot read tensor {name!r} ({err}); the file is truncated or "
                                     "damaged") from None
                yield name, np.asarray(tensor.astype(dtype))


def load_hf_config(hf_dir, dtype: str = "float32") -> LlamaConfig:
    """LlamaConfig from a Hugging Face model directory's config.json (params held in `dtype`)."""
    path = local_hf_dir(hf_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a Hugging Face model directory needs config.json.")
    hf = _read_json(path)
    model_type, architectures = hf.get("model_type"), hf.get("architectures")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{path}: model_type={model_type!r}; supported: "
                         f"{', '.join(f'{k} ({v})' for k, v in SUPPORTED_ARCHITECTURES.items())}")
    if architectures is not None and architectures != [SUPPORTED_ARCHITECTURES[model_type]]:
        raise ValueError(f"{path}: architectures={architectures!r} does not match model_type={model_type!r} "
                         f"(expected [{SUPPORTED_ARCHITECTURES[model_type]!r}])")
    try:
        return LlamaConfig.from_hf_config(hf, param_dtype=dtype, dtype=compute_dtype_for(dtype))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a usable Llama config ({type(err).__name__}: {err})") from None


def load_hf_params(hf_dir, dtype: str = "float32", scan_layers: bool = True, progress: bool = False):
    """Read a Hugging Face Llama directory into memory: (params as numpy arrays, LlamaConfig)."""
    hf_dir = local_hf_dir(hf_dir)
    config = load_hf_config(hf_dir, dtype).replace(scan_layers=scan_layers)
    check_tensors(hf_dir, config)  # all shapes first: a mismatch must stop the import before anything is written
    npd = _np_dtype(dtype)
    n = config.num_layers
    mapping = layer_map(config)
    layers: dict = {}
    params: dict = {}
    seen: set = set()
    for name, tensor in _iter_tensors(hf_dir, npd):
        m = _LAYER.match(name)
        if m:
            i, sub = int(m.group(1)), m.group(2)
            if sub not in mapping:
                raise ValueError(f"{hf_dir}: unexpected tensor {name!r} for a {config.model_type} model.")
            (group, leaf), kind = mapping[sub]
            value = _to_ours(tensor, kind, config)
            slot = layers.setdefault(group, {})
            if leaf not in slot:
                slot[leaf] = np.empty((n,) + value.shape, npd)
            slot[leaf][i] = value
            seen.add((sub, i))
        elif name == "model.embed_tokens.weight":
            params["embedding"] = tensor
        elif name == "model.norm.weight":
            params["final_norm"] = {"scale": tensor}
        elif name == "lm_head.weight":
            if not config.tie_embeddings:
                params["lm_head"] = np.ascontiguousarray(tensor.T)
        elif name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from the config
        else:
            raise ValueError(f"{hf_dir}: unexpected tensor {name!r} in a Llama checkpoint.")
        if progress:
            print(f"hf import: {name} {tuple(tensor.shape)}", flush=True)
    missing = [f"model.layers.{i}.{sub}" for sub in mapping for i in range(n) if (sub, i) not in seen]
    for key in ("embedding", "final_norm") + (() if config.tie_embeddings else ("lm_head",)):
        if key not in params:
            missing.append(key)
    if missing:
        raise ValueError(f"{hf_dir}: checkpoint is missing {len(missing)} tensors, e.g. {missing[:3]}.")
    if scan_layers:
        params["layers"] = layers
    else:
        for i in range(n):
            params[f"layers_{i}"] = {g: {k: v[i] for k, v in d.items()} for g, d in layers.items()}
    return params, config


def hf_tensors(params, config: LlamaConfig):
    """Yield (HF tensor name, element count, thunk -> numpy array in torch layout), converting lazily."""
    params = dict(params)

    def leaf(x, kind):
        return lambda: _to_hf(np.asarray(x), kind)

    yield "model.embed_tokens.weight", params["embedding"].size, leaf(params["embedding"], "vector")
    for i in range(config.num_layers):
        for sub, ((group, name), kind) in layer_map(config).items():
            if "layers" in params:
                stacked = params["layers"][group][name]
                yield (f"model.layers.{i}.{sub}", stacked.size // config.num_layers,
                       (lambda s=stacked, i=i, k=kind: _to_hf(np.asarray(s[i]), k)))
            else:
                x = params[f"layers_{i}"][group][name]
                yield f"model.layers.{i}.{sub}", x.size, leaf(x, kind)
    yield "model.norm.weight", params["final_norm"]["scale"].size, leaf(params["final_norm"]["scale"], "vector")
    if not config.tie_embeddings:
        yield "lm_head.weight", params["lm_head"].size, leaf(params["lm_head"], None)


def write_hf(params, config: LlamaConfig, hf_dir, max_shard_bytes: int = 5 * 2 ** 30, dtype: str | None = None,
             progress: bool = False):
    """Write config.json + (sharded) safetensors for params that `transformers` loads, one shard in memory."""
    hf_dir = local_hf_dir(hf_dir)
    hf_dir.mkdir(parents=True, exist_ok=True)
    dtype = dtype or config.param_dtype
    itemsize = _np_dtype(dtype).itemsize
    # Plan shards from sizes alone, so file names can carry the shard count before any tensor is converted.
    plan: list[list] = [[]]
    size = total = 0
    for name, count, thunk in hf_tensors(params, config):
        nbytes = count * itemsize
        if size and size + nbytes > max_shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append((name, thunk))
        size += nbytes
        total += nbytes
    names = ["model.safetensors"] if len(plan) == 1 else \
        [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    weight_map = {}
    for fname, shard in zip(names, plan):
        tensors = {name: jnp.asarray(thunk()).astype(dtype) for name, thunk in shard}
        save_file(tensors, str(hf_dir / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, fname))
        if progress:
            print(f"hf export: wrote {hf_dir / fname} ({len(tensors)} tensors)", flush=True)
        del tensors
    if len(plan) > 1:
        (hf_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (hf_dir / "config.json").write_text(json.dumps(config.replace(param_dtype=dtype).to_hf_config(), indent=2))
