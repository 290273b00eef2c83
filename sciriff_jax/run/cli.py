"""`sciriff-jax <subcommand>`: the gin run modes plus the tools (score, data, convert, export, aot)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from sciriff_jax.io import checksums, paths
from sciriff_jax.run import errors, quiet
from sciriff_jax.scoring import score

# Each subcommand imports its own stack when it runs (inside its function), so `sciriff-jax score` and `--help` start
# without JAX, and only `data` loads TensorFlow.
RUN_FILES = {"train": "runs/finetune.gin", "eval": "runs/eval.gin", "infer": "runs/infer.gin", "demo": "runs/demo.gin",
             "dpo": "runs/dpo.gin"}

USAGE = """usage: sciriff-jax <subcommand> [args]

gin runs (same flags as `python -m sciriff_jax.main`; default --gin_file in brackets):
  train   finetune a model                       [runs/finetune.gin]
  eval    decode an eval mixture and score it    [runs/eval.gin]
  infer   decode and write predictions only      [runs/infer.gin]
  demo    the built-in end-to-end demo           [runs/demo.gin]
  dpo     preference-tune (DPO / SimPO) a model  [runs/dpo.gin]
tools:
  score   score predictions from any model: --task TASK --predictions FILE.jsonl
  data    stats MIXTURE | show TASK | prefs --checkpoint C --mixture M --out DIR (preference pairs)
  convert Hugging Face Llama directory -> Orbax checkpoint: convert HF_DIR OUT_DIR
  export  Orbax checkpoint -> Hugging Face directory: export CKPT_DIR HF_DIR
  verify  check a checkpoint's files against their checksums: verify MODEL_DIR|STEP_DIR [--seal]
  report  plots (PNG) and one HTML page of a run: report MODEL_DIR (a training run writes it when it ends)
  aot     ahead-of-time compile for a TPU topology: aot --gin_file=... --topology=v5p-128

An error is one `error: ...` line on stderr and exit status 2; add --debug to any subcommand for its traceback.
TensorFlow's, absl's, XLA's and TFDS's start-up messages are hidden; add --verbose (or set SCIRIFF_JAX_VERBOSE=1).
"""


def _run_mode(mode: str, argv: list[str], exit_process: bool = False) -> int:
    from sciriff_jax.run import main as main_lib  # lazy: JAX, and TensorFlow for a SeqIO mixture

    if not any(a.startswith("--gin_file") for a in argv):
        argv = [f"--gin_file={RUN_FILES[mode]}", *argv]
    if mode not in ("demo", "dpo") and not any(a.startswith("--mode") for a in argv):
        argv = [*argv, f"--mode={mode}"]
    return main_lib.main(argv, exit_process=exit_process)


_OVERWRITE_HELP = ("replace the output directory when it holds only a previous `{command}` output (recognised by the "
                   "sciriff_output.json it writes); anything else there is never replaced")


def _convert(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sciriff-jax convert", description="Import a Hugging Face Llama checkpoint into Orbax.")
    parser.add_argument("hf_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", default="float32", help="parameter dtype of the Orbax checkpoint")
    parser.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP.format(command="convert"))
    parser.add_argument("--peft_base", default=None, help="hf_dir is a PEFT LoRA adapter directory made for this base "
                        "(an HF directory or our checkpoint): write it as a LoRA checkpoint naming that base")
    args = parser.parse_args(argv)
    from sciriff_jax.io import convert  # lazy: JAX

    if args.peft_base:
        convert.import_peft(args.hf_dir, args.peft_base, args.out_dir, overwrite=args.overwrite)
        print(f"wrote LoRA checkpoint (adapters for {args.peft_base}) to {args.out_dir}")
        return 0
    convert.import_hf(args.hf_dir, args.out_dir, dtype=args.dtype, overwrite=args.overwrite)  # errors: main's one line
    print(f"wrote Orbax checkpoint to {args.out_dir}")
    return 0


def _export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sciriff-jax export", description="Export an Orbax checkpoint as a Hugging Face Llama directory.")
    parser.add_argument("ckpt_dir")
    parser.add_argument("hf_dir")
    parser.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP.format(command="export"))
    parser.add_argument("--peft", action="store_true", help="a LoRA run: write its adapters as a PEFT adapter directory "
                        "(adapter_config.json + adapter_model.safetensors) instead of the merged model")
    args = parser.parse_args(argv)
    from sciriff_jax.io import convert  # lazy: JAX

    if args.peft:
        convert.export_peft(args.ckpt_dir, args.hf_dir, overwrite=args.overwrite)  # errors: main's one line
        print(f"wrote PEFT adapter directory to {args.hf_dir}")
        return 0
    convert.export_hf(args.ckpt_dir, args.hf_dir, overwrite=args.overwrite)  # errors: main's one line
    print(f"wrote Hugging Face checkpoint to {args.hf_dir}")
    return 0


def _verify(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sciriff-jax verify", description="Check every step of a MODEL_DIR (or one "
                                     "step directory) against the checksums recorded when it was saved.")
    parser.add_argument("path", help="a MODEL_DIR, its checkpoints/ folder, or one step directory (local or URL)")
    parser.add_argument("--seal", action="store_true", help="record checksums for a step directory that has none "
                        "(one saved before sciriff-jax recorded them, that you trust)")
    args = parser.parse_args(argv)
    from sciriff_jax.io import checkpoint  # lazy: JAX and Orbax

    root = paths.resolve(args.path)
    if args.seal:
        if not (root / "params").is_dir():
            print(f"error: --seal takes one step directory (with params/), not {root}", file=sys.stderr)
            return 2
        if any(p.name.startswith(checksums.PREFIX) for p in root.iterdir()):
            print(f"error: {root} already has checksums; verify it instead", file=sys.stderr)
            return 2
        checkpoint.seal(root)
        print(f"sealed {root}")
        return 0
    steps = [root] if (root / "params").is_dir() else checkpoint.step_dirs(root)
    if not steps:
        print(f"error: no checkpoint steps under {root}", file=sys.stderr)
        return 2
    bad = 0
    for step_dir in steps:
        problem = checksums.verify(step_dir)
        bad += problem is not None
        print(f"{step_dir}: {'ok' if problem is None else 'CORRUPT: ' + problem}")
    return 1 if bad else 0


def _data(argv: list[str]) -> int:
    if argv[:1] == ["prefs"]:  # samples a model: JAX, above the data layer
        from sciriff_jax.eval import prefs  # lazy: JAX and TensorFlow

        return prefs.main(argv[1:])
    from seqio_tasks import tools  # lazy: TensorFlow and SeqIO

    return tools.main(argv)


def _score(argv: list[str]) -> int:
    return score.main(argv, declared=_sample_scorers)


def _sample_scorers() -> dict:
    """The built-in sample's {task: scorer}: only for a task name the metrics do not know (sciriff_sample_ner)."""
    from seqio_tasks.sample import SAMPLE_SCORERS  # the data layer (TensorFlow): only when a sample task is scored

    return SAMPLE_SCORERS


def _report(argv: list[str]) -> int:
    from sciriff_jax.run import report  # lazy: matplotlib (and JAX)

    return report.main(argv)


def _aot(argv: list[str]) -> int:
    from sciriff_jax.run import aot  # lazy: JAX (and the TPU compiler)

    return aot.main(argv)


TOOLS = {"score": _score, "data": _data, "convert": _convert, "export": _export, "verify": _verify, "report": _report,
         "aot": _aot}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `sciriff-jax SUBCOMMAND ...`; an error is one `error:` line and exit 2 (its traceback with --debug)."""
    is_process = argv is None  # the console script: an error ends the process at once (run/errors.py)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if is_process:  # before any subcommand loads TensorFlow or JAX
        quiet.start(quiet.VERBOSE_FLAG in rest)
    if command in RUN_FILES:  # run/main.py parses --debug and --verbose itself
        return _run_mode(command, rest, exit_process=is_process)
    if command in TOOLS:
        rest, debug = errors.split_debug(quiet.split_verbose(rest)[0])
        return errors.run_reporting(lambda: TOOLS[command](rest) or 0, debug=debug, exit_process=is_process)
    print(f"sciriff-jax: unknown subcommand {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
