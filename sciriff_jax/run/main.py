"""t5x-style gin entry point: `python -m sciriff_jax.main --gin_file=RUN.gin --gin.MACRO=value`.

Run files (gin_configs/runs/*.gin) set `run.modes` (train, eval, infer, in order) and configure
`finetune`, `evaluate_run` and `infer_run`; experiment files include one model and one run file.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import pathlib
import sys
import time
import tokenize
from typing import Sequence

import gin
import jax

from sciriff_jax.parallel import distributed
from sciriff_jax.run import errors, gin_compat, gin_setup, quiet
from sciriff_jax.run import macros as macro_checks

GIN_CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[2] / "gin_configs"
MODES = ("train", "eval", "infer")


class GinConfigError(ValueError):
    """A gin file or --gin.X binding that cannot be used; the message says which and why."""


def gin_flag_bindings(parser: argparse.ArgumentParser, rest: Sequence[str]) -> list[str]:
    """`--gin.NAME=VALUE` arguments as gin bindings `NAME=VALUE`; anything else is a usage error of `parser`."""
    bindings = []
    for arg in rest:
        if not arg.startswith("--gin."):
            parser.error(f"unrecognised argument {arg!r} (gin overrides are --gin.NAME=VALUE)")
        name, sep, value = arg[len("--gin."):].partition("=")
        if not sep:
            parser.error(f"{arg!r}: expected --gin.NAME=VALUE")
        bindings.append(f"{name}={value}")
    return bindings


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
    """Parse --gin_file (repeatable), --gin.NAME=VALUE / --gin_bindings and --mode overrides."""
    parser = argparse.ArgumentParser(
        prog="python -m sciriff_jax.main",
        description="Run a gin-configured sciriff-jax job (train / eval / infer).",
        epilog="Example: python -m sciriff_jax.main --gin_file=gin_configs/runs/demo.gin "
        '--gin.TRAIN_STEPS=50 --gin.MODEL_DIR=\\"/tmp/run\\"',
    )
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable; include paths are resolved against gin_configs/)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding, e.g. 'MODEL_DIR=\"/tmp/x\"' (repeatable)")
    parser.add_argument("--mode", choices=MODES, action="append", default=None, help="override run.modes (repeatable)")
    parser.add_argument("--gin_search_path", action="append", default=[], help="extra directory for gin includes")
    parser.add_argument("--max_examples", type=int, default=None,
                        help="quick runs: decode at most this many examples per task (same as --gin.MAX_EXAMPLES=N)")
    parser.add_argument(errors.DEBUG_FLAG, action="store_true", help="show the traceback of an error")
    parser.add_argument(quiet.VERBOSE_FLAG, action="store_true", help="show TensorFlow's, absl's, XLA's and TFDS's "
                        f"start-up messages and progress bars (or set {quiet.VERBOSE_ENV}=1)")
    known, rest = parser.parse_known_args(list(argv))
    known.gin_bindings.extend(gin_flag_bindings(parser, rest))
    if known.max_examples is not None:
        known.gin_bindings.append(f"MAX_EXAMPLES={known.max_examples}")
    if not known.gin_file:
        parser.error("at least one --gin_file is needed, e.g. --gin_file=gin_configs/runs/demo.gin")
    return known


class _QuietIncludeSearch(logging.Filter):
    """Drop gin's 'Path not found' log lines: it logs one per search path it tries for every include."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found:")


_QUIET_INCLUDE_SEARCH = _QuietIncludeSearch()


def _model_from_checkpoint_without_a_model_file() -> None:
    """No models/*.gin: finetune takes the shape from INITIAL_CHECKPOINT_PATH (an HF dir or Orbax checkpoint)."""
    try:
        bound = gin.query_parameter("finetune.model")
    except ValueError:
        return
    if isinstance(bound, gin.config.ConfigurableReference) and not gin.get_bindings("LlamaConfig"):
        gin.parse_config("finetune.model = None")  # finetune says what to set when there is no checkpoint either


def _join_task_lists() -> None:
    """A gin list bound where a mixture name is taken (MIXTURE_OR_TASK_NAME = ["a", "b:2"], or [("a", 1), ("b", 2)])
    becomes the task-list text the data layer reads ("a,b:2", seqio_tasks/lists.py)."""
    macros = gin_compat.defined_macros()
    for _, _, param, _, macro in gin_compat.macro_bindings():
        value = gin_compat.resolve_macro(macros.get(macro), macros)
        if param == "mixture_or_task_name" and isinstance(value, (list, tuple)):
            from seqio_tasks import lists  # the data layer (TensorFlow): only where a run names a task list

            try:
                joined = lists.join(value)
            except ValueError as err:
                raise GinConfigError(f"gin macro {macro}: {err}") from None
            gin.bind_parameter(f"{macro}/gin.macro.value", joined)


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
    """Parse gin files then bindings; unknown macros, unknown configurables and missing required macros fail by name."""
    gin.clear_config()
    logging.getLogger().addFilter(_QUIET_INCLUDE_SEARCH)  # adding the same filter twice is a no-op
    gin_compat.tolerate_plain_directories_in_include_search()
    for path in [os.getcwd(), str(GIN_CONFIGS_DIR), str(GIN_CONFIGS_DIR.parent), *search_paths]:
        gin.add_config_file_search_path(path)
    for path in gin_files:
        try:
            gin.parse_config_file(path)
        except (ValueError, SyntaxError, OSError) as err:
            raise GinConfigError(f"gin file {path}: {err}") from err
        except tokenize.TokenError as err:  # e.g. an unclosed bracket: gin passes the tokenizer's error on bare
            what, (line, _) = err.args
            raise GinConfigError(f"gin file {path} (or a file it includes), line {line}: {what}; check the brackets "
                                 "and quotes above it") from err
    macros = gin_compat.defined_macros()
    for binding in bindings:
        name = binding.partition("=")[0].strip()
        if "." not in name and "/" not in name and name not in macros:
            known = ", ".join(sorted(macros)) or "(none)"
            raise GinConfigError(f"--gin.{name}: no macro {name} is defined by {', '.join(gin_files)}; known macros: {known}")
        try:
            gin.parse_config(binding)
        except (ValueError, SyntaxError, tokenize.TokenError) as err:
            raise GinConfigError(f"--gin.{binding}: {err}") from err
    _model_from_checkpoint_without_a_model_file()
    _join_task_lists()
    macros = gin_compat.defined_macros()
    missing = sorted(name for name, value in macros.items() if gin_compat.is_required(value))
    if missing:
        hint = " ".join(f'--gin.{m}=...' for m in missing)
        raise GinConfigError(f"required gin macro(s) not set: {', '.join(missing)} (pass e.g. {hint})")
    never_used = macro_checks.unused(macros, gin_compat.macro_references())
    if never_used:
        used = sorted(set(macros) - set(never_used))
        named = ", ".join(n + "".join(f" (did you mean {m}?)" for m in difflib.get_close_matches(n, used, 1))
                          for n in never_used)
        raise GinConfigError(
            f"gin macro(s) set but never used by any binding: {named}, in {', '.join(gin_files)} or their includes. "
            "gin ignores such a macro silently (a misspelt name would change nothing): fix or remove it; an "
            "experiment's mesh presets are pairs MESH_<NAME> = {...} and MICROBATCHES_<NAME> = N.")
    try:
        macro_checks.validate({n: gin_compat.resolve_macro(v, macros) for n, v in macros.items()},
                              gin_compat.macro_bindings(), skip=gin_compat.is_reference)
    except macro_checks.MacroError as err:
        raise GinConfigError(str(err)) from None


TRAINERS = ("finetune", "grpo", "dpo")  # what the train mode runs (run.trainer; runs/grpo.gin, runs/dpo.gin set theirs)


@gin.configurable
def run(modes: Sequence[str] = gin.REQUIRED, trainer: str = "finetune") -> dict:
    """Run the configured modes in order; returns their summaries by mode."""
    if trainer not in TRAINERS:
        raise GinConfigError(f"run.trainer={trainer!r}; expected one of {TRAINERS}")
    results: dict[str, dict] = {}
    for mode in modes:
        if mode not in MODES:
            raise GinConfigError(f"run.modes: unknown mode {mode!r}; expected some of {MODES}")
        started = time.time()
        if mode == "train":
            train_fn = {"grpo": gin_setup.grpo, "dpo": gin_setup.dpo}.get(trainer, gin_setup.finetune)
            results[mode] = train_fn(operative_config=gin.config_str())
        elif mode == "eval":
            results[mode] = gin_setup.evaluate_run()
        else:
            results[mode] = gin_setup.infer_run()
        print(f"[sciriff-jax] {mode} finished in {time.time() - started:.1f}s", flush=True)
    return results


def main(argv: Sequence[str] | None = None, *, exit_process: bool | None = None) -> int:
    """Entry point for `python -m sciriff_jax.main` and `sciriff-jax train|eval|infer`: 0, or 2 after one `error:` line
    (the traceback with --debug). `exit_process` (default: argv is None, the call is the process): an error ends the
    process at once."""
    flags = parse_flags(sys.argv[1:] if argv is None else argv)
    exit_process = argv is None if exit_process is None else exit_process
    if exit_process:  # the whole process: keep the libraries' start-up chatter off its stderr
        quiet.start(flags.verbose)
    return errors.run_reporting(lambda: _main(flags), debug=flags.debug, exit_process=exit_process)


def _main(flags: argparse.Namespace) -> int:
    parse_gin(flags.gin_file, flags.gin_bindings, flags.gin_search_path)
    distributed.maybe_initialize()
    results = run(modes=flags.mode) if flags.mode else run()
    write_run_report(results)
    summary = summarize(results)
    if summary:
        print(summary, flush=True)
    return 0


def write_run_report(results: dict) -> None:
    """After a training run (and the evals after it), MODEL_DIR/report/: its plots and page (run/report.py). A failure
    here loses nothing of the run and does not fail it: it is said on stderr with the command that retries it."""
    model_dir = (results.get("train") or {}).get("model_dir")
    if not model_dir or jax.process_index() != 0:
        return
    try:
        from sciriff_jax.run import report  # matplotlib: only when a training run ends

        print(f"[sciriff-jax] report: {report.write_report(model_dir)}", flush=True)
    except Exception as err:  # noqa: BLE001 -- the run is done and recorded: a drawing error must not fail it
        print(f"[sciriff-jax] the run's report was not written ({errors.message(err)}); the run and its records are "
              f"complete: `sciriff-jax report {model_dir}` writes it", file=sys.stderr, flush=True)


def summarize(results: dict) -> str:
    """The closing summary: training loss first -> last and the JSON parse rate before -> after."""
    lines = []
    train = results.get("train") or {}
    if "first_loss" in train and "last_loss" in train:
        lines.append(f"loss: first {train['first_loss']:.4f} -> last {train['last_loss']:.4f} over {train.get('steps', '?')} steps")
    if "first_reward" in train:  # GRPO
        lines.append(f"mean reward of the sampled answers: first update {train['first_reward']:.4f} -> last "
                     f"{train['last_reward']:.4f}")
    before = train.get("initial_eval", {}).get("json_parse_rate")
    after = (results.get("eval") or {}).get("json_parse_rate")
    if before is not None or after is not None:
        fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        lines.append(f"JSON parse rate on JSON-output tasks: before training {fmt(before)} -> after training {fmt(after)}")
    if not lines:
        return ""
    return "\n".join(["", "=== summary ===", *lines])


if __name__ == "__main__":
    sys.exit(main())
