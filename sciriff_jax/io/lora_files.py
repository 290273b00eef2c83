"""LoRA adapters on disk: the record naming the base an adapter belongs to, and PEFT adapter directories.

A LoRA run's checkpoints hold the adapters (params/) and their optimizer state like any run, plus a JSON item
`lora` = `record(...)`: the LoRA config and the base (its path and a fingerprint of its weights; or the seed of a
random base). A resume, an export or an eval of the run loads that base and checks the fingerprint first.

PEFT's format (`peft.PeftModel.from_pretrained` reads it): `adapter_config.json` (peft_type LORA, r, lora_alpha,
target_modules, ...) and `adapter_model.safetensors` with one `lora_A` [r, in_features] and `lora_B`
[out_features, r] per adapted Linear, named `base_model.model.model.layers.<i>.<self_attn|mlp>.<name>.lora_A.weight`.
"""
from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
from etils import epath
from safetensors import safe_open
from safetensors.numpy import save_file

from sciriff_jax.io import checkpoint, checksums, hf, paths, writes
from sciriff_jax.model import lora as lora_lib
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import param_shapes

ITEM = "lora"  # the checkpoint item (JSON) holding `record(...)`
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_MODULE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
_OURS = {"self_attn": "attn", "mlp": "mlp"}


def fingerprint(path) -> str:
    """sha256 naming a base's weights: over an Orbax checkpoint's recorded params/ checksums (verified whenever it
    is loaded), or over every weight file of a Hugging Face directory (read once)."""
    p = paths.resolve(path)
    h = hashlib.sha256()
    if (p / "config.json").is_file():  # a Hugging Face directory (loader.is_hf_dir)
        for f in hf._weight_files(hf.local_hf_dir(p)):
            h.update(f.name.encode())
            with open(f, "rb") as stream:
                while chunk := stream.read(1 << 24):
                    h.update(chunk)
        return "sha256:" + h.hexdigest()
    step = checkpoint.resolve_checkpoint_dir(p)
    entries = checksums._recorded(epath.Path(step))
    for name in sorted(k for k in entries if k.startswith("params/")):
        h.update(json.dumps([name, entries[name]]).encode())
    return "sha256:" + h.hexdigest()


def record(lora: lora_lib.LoraConfig, base_path: str | None, seed: int = 0) -> dict:
    """What a LoRA checkpoint keeps beside the adapters: their config and the base they belong to."""
    if base_path:
        base = {"path": str(paths.resolve(base_path)), "fingerprint": fingerprint(base_path)}
    else:
        base = {"path": None, "random_init_seed": int(seed)}
    return {"lora": lora.to_dict(), "base": base}


def check_same_base(recorded: dict, current: dict, where: str) -> None:
    """Stop when a checkpoint's adapters were trained on another base or LoRA config than this run's."""
    for key in ("lora", "base"):
        if recorded.get(key) != current.get(key):
            raise ValueError(
                f"{where} holds adapters for {key} {recorded.get(key)}, but this run has {current.get(key)}: they "
                "would be applied to other weights. Use a new MODEL_DIR, or the INITIAL_CHECKPOINT_PATH and LORA_* "
                "settings that trained them.")


def read_record(step_dir) -> dict | None:
    """The `lora` record of a checkpoint step directory, or None for a full-parameter checkpoint."""
    f = epath.Path(step_dir) / ITEM / "metadata"
    if not f.exists():
        return None
    return json.loads(f.read_text())


def check_base(record: dict, where) -> None:
    """Stop when the base a LoRA checkpoint names no longer holds the weights its adapters were trained on."""
    base = record["base"]
    if base.get("path") and fingerprint(base["path"]) != base["fingerprint"]:
        raise ValueError(f"{where} holds LoRA adapters for the base {base['path']} with fingerprint "
                         f"{base['fingerprint']}, but that path now holds other weights: put the base back, or export "
                         "the adapters alone with `sciriff-jax export --peft`.")


def _layer_trees(adapters: dict, num_layers: int):
    """[(layer index, {"attn": {...}, "mlp": {...}} of that layer's adapters as numpy)], scanned or not."""
    if "layers" in adapters:
        stacked = adapters["layers"]
        return [(i, {m: {k: np.asarray(v[i]) for k, v in sub.items()} for m, sub in stacked.items()})
                for i in range(num_layers)]
    return [(i, {m: {k: np.asarray(v) for k, v in sub.items()} for m, sub in adapters[f"layers_{i}"].items()})
            for i in range(num_layers) if f"layers_{i}" in adapters]


def peft_tensors(adapters: dict, config: LlamaConfig) -> dict[str, np.ndarray]:
    """Our adapters as PEFT's tensors (float32), by PEFT key."""
    out = {}
    for i, layer in _layer_trees(adapters, config.num_layers):
        for ours, sub in layer.items():
            module = "self_attn" if ours == "attn" else "mlp"
            for key in sub:
                if not key.endswith("_a"):
                    continue
                name = key[:-2]
                a, b = sub[key].astype(np.float32), sub[f"{name}_b"].astype(np.float32)
                prefix = f"base_model.model.model.layers.{i}.{module}.{name}"
                out[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, a.shape[-1]).T)
                out[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b.reshape(b.shape[0], -1).T)
    return out


def peft_config(lora: lora_lib.LoraConfig, base_name: str | None) -> dict:
    """adapter_config.json for `lora` (PEFT's LoraConfig fields)."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout, "target_modules": sorted(lora.targets), "bias": "none",
            "use_rslora": lora.rslora, "fan_in_fan_out": False, "init_lora_weights": True, "modules_to_save": None,
            "base_model_name_or_path": base_name, "inference_mode": True}


def write_peft(adapters: dict, config: LlamaConfig, lora: lora_lib.LoraConfig, out_dir, base_name=None) -> None:
    """Write a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) into `out_dir`."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(peft_tensors(adapters, config), str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    writes.write_text(out / PEFT_CONFIG, json.dumps(peft_config(lora, base_name), indent=1))


def _lora_of_peft(cfg: dict, where) -> lora_lib.LoraConfig:
    unsupported = {k: cfg.get(k) for k in ("use_dora", "modules_to_save", "layers_to_transform", "rank_pattern",
                                           "alpha_pattern") if cfg.get(k)}
    if cfg.get("peft_type") != "LORA" or cfg.get("bias", "none") != "none" or unsupported:
        raise ValueError(f"{where}: only plain LoRA adapters (peft_type LORA, bias none, no DoRA / modules_to_save / "
                         f"per-layer patterns) can be imported; this one has {unsupported or cfg.get('peft_type')}.")
    targets = cfg["target_modules"]
    targets = [targets] if isinstance(targets, str) else list(targets)
    bad = [t for t in targets if t not in lora_lib.TARGETS]
    if bad:
        raise ValueError(f"{where}: target_modules {bad} are not linear maps this model adapts {lora_lib.TARGETS}.")
    return lora_lib.LoraConfig(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                               dropout=float(cfg.get("lora_dropout") or 0.0), targets=tuple(targets),
                               rslora=bool(cfg.get("use_rslora")))


def read_peft(peft_dir, config: LlamaConfig) -> tuple[dict, lora_lib.LoraConfig]:
    """(adapters in our layout, float32; their LoraConfig) from a PEFT adapter directory for a model of `config`."""
    d = pathlib.Path(peft_dir)
    lora = _lora_of_peft(json.loads((d / PEFT_CONFIG).read_text()), d / PEFT_CONFIG)
    shapes = lora_lib.adapter_shapes(param_shapes(config), lora)
    out = {k: np.zeros(v.shape, np.float32) for k, v in _flat(shapes).items()}
    with safe_open(str(d / PEFT_WEIGHTS), framework="numpy") as f:
        for key in f.keys():
            _place(out, key, f.get_tensor(key), config, d)
    return _unflat(out), lora


def _place(out: dict, key: str, tensor, config: LlamaConfig, where) -> None:
    parts = key.split(".")
    try:
        i = int(parts[parts.index("layers") + 1])
        module, name, which = parts[parts.index("layers") + 2:parts.index("layers") + 5]
    except (ValueError, IndexError):
        raise ValueError(f"{where}: tensor {key} is not a layer's lora_A / lora_B") from None
    ab = {"lora_A": "a", "lora_B": "b"}[which]
    scanned = config.scan_layers
    path = ("layers" if scanned else f"layers_{i}", _OURS[module], f"{name}_{ab}")
    slot = out["/".join(path)]
    t = np.asarray(tensor, np.float32).T  # [in, r] or [r, out]
    target = slot[i] if scanned else slot
    target[...] = t.reshape(target.shape)


def _flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, prefix + (k,)))
        else:
            out["/".join(prefix + (k,))] = v
    return out


def _unflat(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        node = out
        *heads, last = key.split("/")
        for h in heads:
            node = node.setdefault(h, {})
        node[last] = v
    return out
