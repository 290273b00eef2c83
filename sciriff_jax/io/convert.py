"""`sciriff-jax convert` / `export`: a Hugging Face directory -> an Orbax checkpoint, and back, with the tokenizer
and chat template travelling along (io/tokenizer_files.py), so eval of either side needs no vocabulary flags.

Neither ever writes over something it did not make: the output must not exist or be an empty directory, and must
not be the input, hold it, lie inside it or inside a MODEL_DIR (checked before anything is read or written).
`overwrite=True` replaces only a previous output of the same command, recognised by the MARKER file it writes
last, listing every top-level name it wrote. A local output is built in a hidden temporary sibling (same
filesystem) and renamed into place at the end, so an interrupted run leaves the old directory or nothing there.
Object stores (gs://, s3://) cannot rename a directory: a URL output is written in place, and a previous one is
removed only when the new one is about to be written.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid

from etils import epath

from sciriff_jax.chat.jinja import read_template
from sciriff_jax.io import checkpoint, checksums, hf, loader, lora_files, paths, spm_json, tokenizer_files
from sciriff_jax.model import lora as lora_lib
from sciriff_jax.model.config import LlamaConfig

MARKER = "sciriff_output.json"  # {"command": "convert" | "export", "source": ..., "files": [top-level names]}
_PARTIAL = ".partial-"          # a local output is built in .<name>.partial-<id> beside it

# Built-in templates as Jinja, so an exported model chats in transformers as it was trained here.
_BUILTIN_JINJA = {
    "tulu": ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|>\n' + m['content'] | trim + "
             "eos_token + ('\n' if not loop.last else '') }}{% else %}{{ '<|' + m['role'] + '|>\n' + "
             "m['content'] | trim + '\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
             "{{ '<|assistant|>\n' }}{% endif %}"),
}


class OutputPathError(ValueError):
    """An output path convert / export will not write into; the message names the path and the fix."""


def _key(path) -> str:
    """A path to compare: a local one absolute with symlinks resolved, a URL as given without a trailing slash."""
    if paths.is_url(path):
        return os.fspath(path).rstrip("/")
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _inside(child: str, parent: str) -> bool:
    return child.startswith(parent.rstrip("/") + "/")


def _model_dir_signs(d: epath.Path) -> list[str]:
    """What makes `d` a MODEL_DIR (a training run or a checkpoint with a recorded tokenizer), if anything."""
    signs = [checkpoint.CHECKPOINTS_SUBDIR + "/"] if (d / checkpoint.CHECKPOINTS_SUBDIR).is_dir() else []
    signs += ["metrics.jsonl"] if (d / "metrics.jsonl").exists() else []
    record = f"{tokenizer_files.SUBDIR}/{tokenizer_files.RECORD}"
    return signs + ([record] if (d / record).exists() else [])


def _previous_output(out: epath.Path, command: str) -> dict | None:
    """The marker of a previous output of `command` at `out` when the directory holds nothing else, else None."""
    try:
        marker = json.loads((out / MARKER).read_text())
        written = set(marker["files"]) if marker.get("command") == command else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if written is None:
        return None
    extra = [p.name for p in out.iterdir() if p.name != MARKER and p.name not in written
             and not p.name.startswith(checksums.PREFIX)]
    return None if extra else marker


def check_output(out_dir, *, command: str, source, overwrite: bool = False) -> bool:
    """Stop with an OutputPathError unless `command` may write `out_dir`; True when it replaces a previous output."""
    out_key, src_key = _key(out_dir), _key(source)
    out = paths.resolve(out_key)
    fix = "choose a path that does not exist or an empty directory"
    if out_key == src_key or _inside(src_key, out_key) or _inside(out_key, src_key):
        where = "is" if out_key == src_key else "holds" if _inside(src_key, out_key) else "is inside"
        raise OutputPathError(f"{command}: the output {out_dir} {where} the input {source}; writing there would "
                              f"destroy it. {fix[0].upper() + fix[1:]} for the output.")
    for parent in out.parents:
        if paths.is_url(out) and not str(parent).partition("://")[2].strip("/"):
            break  # past the bucket
        if parent.is_dir() and _model_dir_signs(parent):
            raise OutputPathError(f"{command}: the output {out_dir} is inside the MODEL_DIR {parent} (it has "
                                  f"{', '.join(_model_dir_signs(parent))}); {fix} outside it.")
    if not out.exists():
        return False
    if not out.is_dir():
        raise OutputPathError(f"{command}: the output {out_dir} is a file; {fix}.")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return False
    previous = _previous_output(out, command)
    if previous is not None:
        if overwrite:
            return True
        raise OutputPathError(f"{command}: {out_dir} holds a previous `{command}` output (of {previous.get('source')})"
                              f"; pass --overwrite to replace it, or {fix}.")
    signs = _model_dir_signs(out)
    if signs:
        raise OutputPathError(f"{command}: the output {out_dir} is a MODEL_DIR (it has {', '.join(signs)}); {command} "
                              f"never writes into a training run or checkpoint: {fix}.")
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    only = f" (--overwrite replaces only a previous `{command}` output, one with {MARKER})" if overwrite else ""
    raise OutputPathError(f"{command}: the output {out_dir} is not empty ({shown}){only}; {fix}.")


def _mark(d: epath.Path, command: str, source) -> None:
    """Write the marker that lets a later `--overwrite` recognise this directory as `command`'s own output."""
    files = sorted(p.name for p in d.iterdir() if p.name != MARKER and not p.name.startswith(checksums.PREFIX))
    (d / MARKER).write_text(json.dumps({"command": command, "source": str(source), "files": files}, indent=1))


def _write_into_place(out: epath.Path, build, replace: bool) -> None:
    """build(directory) into a temporary sibling of a local `out`, renamed into place at the end (replacing a
    previous output when `replace`); a URL `out` is built in place (object stores cannot rename a directory)."""
    if paths.is_url(out):
        if replace:
            out.rmtree()
        build(out)
        return
    out = epath.Path(_key(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (out.parent / f".{out.name}{kind}{uuid.uuid4().hex[:8]}" for kind in (_PARTIAL, ".old-"))
    try:
        build(tmp)
        if replace:
            os.rename(out, old)
        try:
            os.rename(tmp, out)  # onto a missing path or an empty directory: atomic on one filesystem
        except BaseException:
            if replace:
                os.rename(old, out)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace:
        shutil.rmtree(old)


def import_hf(hf_dir, out_dir, dtype: str = "float32", progress: bool = True, overwrite: bool = False) -> LlamaConfig:
    """Convert a local Hugging Face directory to an Orbax checkpoint at out_dir (path or URL), recording its
    tokenizer and chat template in out_dir/tokenizer/; returns its config. out_dir must not exist or be empty
    (`overwrite`: or hold a previous convert output)."""
    src = hf.local_hf_dir(hf_dir)
    replace = check_output(out_dir, command="convert", source=src, overwrite=overwrite)  # before anything is read
    config = hf.load_hf_config(src)
    hf.check_tensors(src, config)  # headers only: shapes first, then the tokenizer, then weights
    # The tokenizer against the embedding, as eval checks it (reading the vocabulary imports TensorFlow).
    fmt = loader.resolve_chat_format(src)
    fmt.check_fits(config.vocab_size, src, fix=f"Put the tokenizer this model was trained with into {src}.")
    params, config = hf.load_hf_params(src, dtype=dtype, progress=progress)

    def build(out):
        checkpoint.save_params(out, params, config)
        tokenizer_files.write(out / tokenizer_files.SUBDIR, source_dir=src, template=fmt.template,
                              template_source=read_template(src) if fmt.template == "model" else None)
        _mark(out, "convert", src)
        checkpoint.seal(out)  # again: the checksums cover the tokenizer and the marker too

    _write_into_place(paths.resolve(out_dir), build, replace)
    if progress:
        print(f"hf import: wrote {config.num_params() / 1e6:.1f}M parameters to {out_dir} (its own tokenizer "
              f"({src}); template {fmt.template!r})", flush=True)
    return config


def import_peft(peft_dir, base, out_dir, overwrite: bool = False) -> lora_lib.LoraConfig:
    """Import a PEFT LoRA adapter directory made for `base` (an HF directory or our checkpoint) as a LoRA checkpoint
    at out_dir: the adapters in our layout plus the record naming `base` and its fingerprint, so eval / export of
    out_dir load the base and merge them. Returns the adapter's LoraConfig."""
    replace = check_output(out_dir, command="convert", source=peft_dir, overwrite=overwrite)
    config = loader.load_config(base)
    adapters, lora = lora_files.read_peft(peft_dir, config)
    record = lora_files.record(lora, str(base))

    def build(out):
        checkpoint.save_params(out, adapters, config, extra={lora_files.ITEM: record})
        _mark(out, "convert", peft_dir)
        checkpoint.seal(out)

    _write_into_place(paths.resolve(out_dir), build, replace)
    return lora


def export_peft(ckpt_dir, out_dir, overwrite: bool = False) -> None:
    """Write a LoRA run's adapters (step dir or MODEL_DIR) as a PEFT adapter directory (adapter_config.json +
    adapter_model.safetensors) for the base its checkpoint names; out_dir as for export_hf."""
    out_dir = hf.local_hf_dir(out_dir)
    replace = check_output(out_dir, command="export", source=ckpt_dir, overwrite=overwrite)
    step = checkpoint.resolve_checkpoint_dir(ckpt_dir)
    record = lora_files.read_record(step)
    if record is None:
        raise ValueError(f"{step} is a full-parameter checkpoint: --peft exports a LoRA run's adapters (LORA_RANK); "
                         "export it without --peft.")
    adapters, config = checkpoint.load_params(step)  # verified first

    def build(out):
        lora_files.write_peft(adapters, config, lora_lib.LoraConfig.from_dict(record["lora"]), out,
                              base_name=record["base"]["path"])
        _mark(out, "export", ckpt_dir)

    _write_into_place(epath.Path(out_dir), build, replace)


def _tokenizer_json(out, max_length: int, recorded) -> None:
    """Write tokenizer.json (+ tokenizer_config.json unless the recorded tokenizer had one) beside a SentencePiece-only
    tokenizer.model (io/spm_json.py), so transformers encodes every text to our ids; a model the conversion cannot
    mirror keeps tokenizer.model alone, and the export says so."""
    model = (out / "tokenizer.model").read_bytes()
    try:
        tok = spm_json.convert(model, where=f"{recorded}/tokenizer.model")
    except spm_json.ConversionError as err:
        print(f"[export] warning: no tokenizer.json written: {err}", flush=True)
        return
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True), encoding="utf-8")
    if not (out / "tokenizer_config.json").is_file():
        (out / "tokenizer_config.json").write_text(json.dumps(spm_json.tokenizer_config(model, max_length), indent=1))


def export_hf(ckpt_dir, hf_dir, dtype: str | None = None, max_shard_bytes: int = 5 * 2 ** 30,
              overwrite: bool = False) -> None:
    """Export an Orbax checkpoint (step dir or MODEL_DIR, local or URL) to a local Hugging Face directory, with the
    tokenizer files and chat template it was trained with (transformers' AutoTokenizer loads them). hf_dir must
    not exist or be empty (`overwrite`: or hold a previous export)."""
    hf_dir = hf.local_hf_dir(hf_dir)  # before reading the checkpoint, which may take minutes
    replace = check_output(hf_dir, command="export", source=ckpt_dir, overwrite=overwrite)
    loaded = loader.load(ckpt_dir, with_tokenizer=False)  # verified first: a corrupt file is named
    recorded = tokenizer_files.recorded_dir(ckpt_dir)
    if recorded is None:
        raise FileNotFoundError(f"checkpoint {ckpt_dir} records no tokenizer ({tokenizer_files.SUBDIR}/"
                                f"{tokenizer_files.RECORD}): an export without one could not be used. Copy the "
                                "tokenizer files it was trained with into the exported directory yourself, or "
                                "record them with sciriff_jax.io.tokenizer_files.write.")
    fmt = loader.resolve_chat_format(ckpt_dir)  # the recorded tokenizer and template, as eval reads them
    vocab = fmt.check_fits(loaded.config.vocab_size, ckpt_dir).vocabulary

    def build(out):
        hf.write_hf(loaded.params, loaded.config, out, max_shard_bytes=max_shard_bytes, dtype=dtype, progress=True)
        local = tokenizer_files.local_copy(recorded)
        for name in tokenizer_files.HF_FILES + ("tokenizer.model",):
            if (local / name).is_file():
                (out / name).write_bytes((local / name).read_bytes())
        if (out / "tokenizer.model").is_file() and not (out / "tokenizer.json").is_file():
            _tokenizer_json(out, loaded.config.max_position, recorded)
        if fmt.template in _BUILTIN_JINJA and not (out / "chat_template.jinja").exists():
            (out / "chat_template.jinja").write_text(_BUILTIN_JINJA[fmt.template], encoding="utf-8")
        # The tokenizer's own special ids, as transformers reads them (whether a prompt starts with BOS is the chat
        # template's business, written beside it).
        generation = {"bos_token_id": vocab.bos_id, "eos_token_id": vocab.eos_id,
                      "pad_token_id": vocab.pad_id, "do_sample": False}
        if (out / "generation_config.json").is_file():  # the recorded tokenizer's own, copied above
            generation = {**json.loads((out / "generation_config.json").read_text()), **{
                k: v for k, v in generation.items() if k != "eos_token_id"}}
        (out / "generation_config.json").write_text(json.dumps(generation, indent=1))
        _mark(out, "export", ckpt_dir)

    _write_into_place(epath.Path(hf_dir), build, replace)
