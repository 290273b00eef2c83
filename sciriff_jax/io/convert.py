"""`sciriff-jax convert` / `export`: a Hugging Face directory -> an Orbax checkpoint, and back, with the tokenizer
and chat template travelling along (io/tokenizer_files.py), so eval of either side needs no vocabulary flags."""
from __future__ import annotations

import json

from sciriff_jax.chat.format import resolve_template
from sciriff_jax.chat.jinja import read_template
from sciriff_jax.io import checkpoint, hf, loader, paths, tokenizer_files
from sciriff_jax.model.config import LlamaConfig

# Built-in templates as Jinja, so an exported model chats in transformers as it was trained here.
_BUILTIN_JINJA = {
    "tulu": ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' + m['content'] | trim + "
             "eos_token + ('\n' if not loop.last else '') }}{% else %}{{ '<|' + m['role'] + '|>\n' + "
             "m['content'] | trim + '\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
             "{{ '<|assistant|>\n' }}{% endif %}"),
}


def import_hf(hf_dir, out_dir, dtype: str = "float32", progress: bool = True) -> LlamaConfig:
    """Convert a local Hugging Face directory to an Orbax checkpoint at out_dir (path or URL), recording its
    tokenizer and chat template in out_dir/tokenizer/; returns its config."""
    src = hf.local_hf_dir(hf_dir)
    hf.check_tensors(src, hf.load_hf_config(src))  # headers only: shapes first, then the tokenizer, then weights
    if tokenizer_files.tokenizer_file(src) is None:
        loader.resolve_chat_format(src)  # raises, saying what to copy into the directory
    template = resolve_template(None, tokenizer_files.has_chat_template(src))  # no vocabulary read: no TensorFlow
    params, config = hf.load_hf_params(src, dtype=dtype, progress=progress)
    out = paths.resolve(out_dir)
    checkpoint.save_params(out, params, config)
    tokenizer_files.write(out / tokenizer_files.SUBDIR, source_dir=src, template=template,
                          template_source=read_template(src) if template == "model" else None)
    checkpoint.seal(out)  # again: the checksums cover the tokenizer too
    if progress:
        print(f"hf import: wrote {config.num_params() / 1e6:.1f}M parameters to {out_dir} (its own tokenizer "
              f"({src}); template {template!r})", flush=True)
    return config


def export_hf(ckpt_dir, hf_dir, dtype: str | None = None, max_shard_bytes: int = 5 * 2 ** 30) -> None:
    """Export an Orbax checkpoint (step dir or MODEL_DIR, local or URL) to a local Hugging Face directory, with the
    tokenizer files and chat template it was trained with (transformers' AutoTokenizer loads them)."""
    hf_dir = hf.local_hf_dir(hf_dir)  # before reading the checkpoint, which may take minutes
    loaded = loader.load(ckpt_dir, with_tokenizer=False)  # verified first: a corrupt file is named
    recorded = tokenizer_files.recorded_dir(ckpt_dir)
    if recorded is None:
        raise FileNotFoundError(f"checkpoint {ckpt_dir} records no tokenizer ({tokenizer_files.SUBDIR}/"
                                f"{tokenizer_files.RECORD}): an export without one could not be used. Copy the "
                                "tokenizer files it was trained with into the exported directory yourself, or "
                                "record them with sciriff_jax.io.tokenizer_files.write.")
    hf.write_hf(loaded.params, loaded.config, hf_dir, max_shard_bytes=max_shard_bytes, dtype=dtype, progress=True)
    local = tokenizer_files.local_copy(recorded)
    for name in tokenizer_files.HF_FILES + ("tokenizer.model",):
        if (local / name).is_file():
            (hf_dir / name).write_bytes((local / name).read_bytes())
    fmt = loader.resolve_chat_format(ckpt_dir)  # the recorded tokenizer and template, as eval reads them
    if fmt.template in _BUILTIN_JINJA and not (hf_dir / "chat_template.jinja").exists():
        (hf_dir / "chat_template.jinja").write_text(_BUILTIN_JINJA[fmt.template], encoding="utf-8")
    vocab = fmt.check_fits(loaded.config.vocab_size, ckpt_dir).vocabulary
    # The tokenizer's own special ids, as transformers reads them (whether a prompt starts with BOS is the chat
    # template's business, written beside it).
    generation = {"bos_token_id": vocab.bos_id, "eos_token_id": vocab.eos_id,
                  "pad_token_id": vocab.pad_id, "do_sample": False}
    if (hf_dir / "generation_config.json").is_file():
        generation = {**json.loads((hf_dir / "generation_config.json").read_text()), **{
            k: v for k, v in generation.items() if k != "eos_token_id"}}
    (hf_dir / "generation_config.json").write_text(json.dumps(generation, indent=1))
