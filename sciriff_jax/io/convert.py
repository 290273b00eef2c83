"""`sciriff-jax convert` / `export`: a Hugging Face directory -> an Orbax checkpoint, and back."""
from __future__ import annotations

from sciriff_jax.io import checkpoint, hf, loader, paths
from sciriff_jax.model.config import LlamaConfig


def import_hf(hf_dir, out_dir, dtype: str = "float32", progress: bool = True) -> LlamaConfig:
    """Convert a local Hugging Face Llama directory to an Orbax checkpoint at out_dir (path or URL); returns its config."""
    params, config = hf.load_hf_params(hf_dir, dtype=dtype, progress=progress)
    checkpoint.save_params(out_dir, params, config)
    hf.copy_tokenizer(hf.local_hf_dir(hf_dir), paths.resolve(out_dir))
    if progress:
        print(f"hf import: wrote {config.num_params() / 1e6:.1f}M parameters to {out_dir}", flush=True)
    return config


def export_hf(ckpt_dir, hf_dir, dtype: str | None = None, max_shard_bytes: int = 5 * 2 ** 30) -> None:
    """Export an Orbax checkpoint (step dir or MODEL_DIR, local or URL) to a local Hugging Face directory."""
    hf_dir = hf.local_hf_dir(hf_dir)  # before reading the checkpoint, which may take minutes
    loaded = loader.load(ckpt_dir)
    hf.write_hf(loaded.params, loaded.config, hf_dir, max_shard_bytes=max_shard_bytes, dtype=dtype, progress=True)
    hf.copy_tokenizer(checkpoint.resolve_checkpoint_dir(ckpt_dir), hf_dir)
