"""Orbax checkpoints: model params + LlamaConfig, and the training state (optimizer, step, data position).

One on-disk format. A checkpoint is a directory holding Orbax items:
  params/   the parameter pytree (Orbax StandardSave, sharded-array aware)
  config/   the LlamaConfig as JSON (`config.to_dict()`)
  opt_state/, train_state/   only in training checkpoints (optimizer state; step + data position JSON)
Training writes MODEL_DIR/checkpoints/<step>/. Orbax writes each step into a temporary directory and
renames it when complete, so a crash mid-save leaves no directory named `<step>`. Once committed, every file's
checksum is recorded (io/checksums.py) and checked before anything is restored: a resume skips a corrupt or
incomplete newest step (moved to MODEL_DIR/checkpoints_corrupt/) for the next older verified one, and loading a
corrupt checkpoint for eval or export is an error.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from sciriff_jax.io import checksums, paths, writes
from sciriff_jax.io.checksums import CorruptCheckpointError
from sciriff_jax.model.config import RUNTIME, LlamaConfig

CHECKPOINTS_SUBDIR = "checkpoints"
CORRUPT_SUBDIR = "checkpoints_corrupt"  # where a resume moves steps that failed verification (kept, not deleted)


def _config_to_dict(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, dict):
        return dict(config)
    return config.to_dict()


def _config_from_dict(d: dict):
    return LlamaConfig.from_dict(d)


class ModelChangedError(ValueError):
    """A resume whose model differs from the one its MODEL_DIR's checkpoint was trained as (a non-RUNTIME field)."""


def config_changes(recorded: LlamaConfig, run: LlamaConfig) -> tuple[dict, dict]:
    """({field: (recorded, run)} for fields a resume may not change, {...} for the RUNTIME ones it may)."""
    runtime = set(LlamaConfig.fields_of_kind(RUNTIME))
    fixed, changed = {}, {}
    for name in LlamaConfig.__dataclass_fields__:
        old, new = getattr(recorded, name), getattr(run, name)
        if old != new:
            (changed if name in runtime else fixed)[name] = (old, new)
    return fixed, changed


# TensorStore reports a failed write as ValueError('... Failed writing: "<file>": ... [os_error_code='28']').
_OS_ERROR_CODE = re.compile(r"\[os_error_code='?(\d+)'?\]")
_QUOTED_PATH = re.compile(r'"((?:/|[A-Za-z][A-Za-z0-9+.-]*://)[^"]*)"')


def os_error_of(err: BaseException, where) -> OSError | None:
    """The OS error behind a failed Orbax save (a Python OSError in its chain, or TensorStore's os_error_code),
    naming the file it reports or else `where`; None when the failure is not the OS's."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno:
            return writes.named(err, where)
        text = str(err)
        code = _OS_ERROR_CODE.search(text)
        if code:
            files = _QUOTED_PATH.findall(text[:code.start()])
            number = int(code.group(1))
            return OSError(number, os.strerror(number), files[-1] if files else os.fspath(where))
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def _saving(where):
    """Inside: a save failed by the OS (disk full, read-only, permissions) is raised as that OSError, naming the
    file, with Orbax's error as its cause."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 -- only the OS's failures are translated, the rest re-raised
        found = os_error_of(err, where)
        if found is None or found is err:
            raise
        raise found from err


class _OrbaxSaveErrors(logging.Filter):
    """Drops the tracebacks Orbax's save threads log for a failed save (one per thread, hundreds of lines): the
    error reaches the user once, raised by the save or wait that follows (its traceback with --debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.levelno >= logging.ERROR
                    and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def _late_write_after_failed_save(unraisable) -> bool:
    """TensorStore completing the other writes of a save that already failed, into Orbax's closed event loop."""
    return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


def _quiet_orbax_save_errors() -> None:
    """Install the filters above: Orbax's logged tracebacks, and one unraisable per late TensorStore write."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxSaveErrors) for f in logger.filters):
        logger.addFilter(_OrbaxSaveErrors())
    hook = sys.unraisablehook
    if not getattr(hook, "_sciriff_quiet", False):
        def quiet(unraisable, _next=hook):
            if not _late_write_after_failed_save(unraisable):
                _next(unraisable)
        quiet._sciriff_quiet = True
        sys.unraisablehook = quiet


def _finalized_steps(directory: epath.Path) -> list[int]:
    # Orbax's in-progress saves are named "<step>.orbax-checkpoint-tmp-<n>": digits-only names are committed.
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def step_dirs(path) -> list[epath.Path]:
    """The committed step directories of a MODEL_DIR (or its checkpoints/ folder), oldest first."""
    p = paths.resolve(path)
    for base in (p / CHECKPOINTS_SUBDIR, p):
        steps = _finalized_steps(base)
        if steps:
            return [base / str(s) for s in steps]
    return []


def resolve_checkpoint_dir(path) -> epath.Path:
    """A checkpoint step directory from `path` (local or URL): itself, or the latest step under path[/checkpoints]."""
    p = paths.resolve(path)
    if (p / "params").is_dir():
        return p
    for base in (p / CHECKPOINTS_SUBDIR, p):
        steps = _finalized_steps(base)
        if steps:
            return base / str(steps[-1])
    raise FileNotFoundError(
        f"No Orbax checkpoint at {p}: expected a step directory containing 'params/', or a MODEL_DIR with "
        f"'{CHECKPOINTS_SUBDIR}/<step>/' (incomplete '*.orbax-checkpoint-tmp-*' saves are ignored). "
        "Check INITIAL_CHECKPOINT_PATH / the path you passed, or import a Hugging Face model first."
    )


def _all_agree(ok: bool) -> bool:
    """True when `ok` holds on every process (each verified its own share of the files)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, dtype=np.int32))))


def verify_step(step_dir) -> str | None:
    """What is wrong with a committed step directory (see io/checksums.py), or None when every file is intact."""
    problem = checksums.verify(step_dir, jax.process_index(), jax.process_count())
    if not _all_agree(problem is None):
        return problem or "another process found a corrupt file (see its log)"
    return None


def seal(step_dir) -> None:
    """Record the checksums of a committed step directory (each process its own share)."""
    checksums.record(paths.resolve(step_dir), jax.process_index(), jax.process_count())


def _verified_dir(path) -> epath.Path:
    """`resolve_checkpoint_dir(path)`, verified; a corrupt one raises naming the file and an older verified step."""
    d = resolve_checkpoint_dir(path)
    problem = verify_step(d)
    if problem is None:
        return d
    older = ""
    if d.name.isdigit():  # a step of a MODEL_DIR: point at the newest older one that verifies
        for step in reversed([s for s in _finalized_steps(d.parent) if s < int(d.name)]):
            if checksums.verify(d.parent / str(step)) is None:
                older = f" The newest verified older step is {d.parent / str(step)}: pass it explicitly to use it."
                break
    raise CorruptCheckpointError(f"checkpoint {d} failed verification: {problem}.{older}")


def _abstract(tree, shardings=None):
    """ShapeDtypeStructs for restore targets, carrying `shardings` (a matching pytree) when given."""
    if shardings is None:
        return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    # Structure comes from `shardings`: checkpoint metadata trees are dict-like and would not match namedtuples.
    return jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shardings, tree)


def save_params(path, params, config, extra: dict | None = None) -> None:
    """Write `params` and `config` (LlamaConfig or dict) as an Orbax checkpoint directory at `path`; `extra`:
    more JSON items by name (a LoRA checkpoint's `lora` record)."""
    path = paths.resolve(path)
    _quiet_orbax_save_errors()
    with _saving(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        ckptr.save(
            path,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), config=ocp.args.JsonSave(_config_to_dict(config)),
                **{name: ocp.args.JsonSave(value) for name, value in (extra or {}).items()},
            ),
            force=True,
        )
    seal(path)


def read_model_config(path):
    """The LlamaConfig stored in the checkpoint at `path` (step dir or MODEL_DIR)."""
    d = resolve_checkpoint_dir(path)
    ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    return _config_from_dict(ckptr.restore(d, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])


def load_params(path, shardings=None):
    """Restore `(params, LlamaConfig)` from a step directory or a MODEL_DIR (latest step).

    `shardings`: optional pytree of jax.sharding.Sharding matching the params, to restore straight
    onto a mesh; without it arrays land on the default device.
    """
    d = _verified_dir(path)  # never restore bytes that differ from what was saved
    ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    config = _config_from_dict(ckptr.restore(d, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
    if shardings is None:
        restore = ocp.args.StandardRestore()
    else:
        meta = ocp.StandardCheckpointer().metadata(d / "params")
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        restore = ocp.args.StandardRestore(_abstract(tree, shardings))
    params = ckptr.restore(d, args=ocp.args.Composite(params=restore))["params"]
    return params, config


class TrainCheckpointer:
    """Periodic async saves of (params, opt_state, step, data position) under MODEL_DIR/checkpoints, keep-N.

    Each save is sealed with checksums once Orbax has committed it, in a background thread so training goes on;
    `restore_latest` restores the newest step that verifies.
    """

    def __init__(self, model_dir, *, period: int, keep: int | None = 3, config=None, async_save: bool = True,
                 before_save=None, log=None, record: dict | None = None):
        self.model_dir = paths.resolve(model_dir)
        self.directory = self.model_dir / CHECKPOINTS_SUBDIR
        self.period = int(period) if period else 0
        self.config = _config_to_dict(config)
        self._model = config if isinstance(config, LlamaConfig) else None  # what a resume is checked against
        self.before_save = before_save
        self.record = record  # a LoRA run's: its config and the base it belongs to (io/lora_files.py), item `lora`
        self.log = log or (lambda message: print(f"[sciriff-jax] {message}", flush=True))
        _quiet_orbax_save_errors()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True
            ),
        )
        self.last_saved_step: int | None = self.manager.latest_step()
        self._sealing: threading.Thread | None = None
        self._seal_error: tuple[int, str, BaseException] | None = None  # (step, what failed, the error)

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """True when `step` falls on the checkpoint period."""
        return self.period > 0 and step % self.period == 0

    def _seal_when_committed(self, step: int) -> None:
        what = "saving"
        try:
            self.manager.wait_until_finished()
            what = "recording the checksums of"
            seal(self.directory / str(step))
        except BaseException as err:  # re-raised in the main thread by the next save / wait
            self._seal_error = (step, what, err)

    def _join_sealing(self) -> None:
        """Re-raise what failed in the sealing thread: an OS error as itself, naming the file (the step is left
        unsealed, so a resume skips it for the previous verified one)."""
        if self._sealing is not None:
            self._sealing.join()
            self._sealing = None
        if self._seal_error is not None:
            (step, what, err), self._seal_error = self._seal_error, None
            found = os_error_of(err, self.directory / str(step))
            if found is not None and found is not err:
                raise found from err
            if found is not None:
                raise err
            raise RuntimeError(f"{what} checkpoint step {step} in {self.directory} failed: {err}") from err

    def save(self, step: int, params, opt_state, train_state: dict, *, wait: bool = False) -> None:
        """Start an (async) save of the full training state at `step`; `train_state` is JSON (data position etc.)."""
        if self.last_saved_step == step:  # e.g. a preemption right after a periodic save of this step
            if wait:
                self.wait()
            return
        if self.before_save is not None:
            self.before_save()  # e.g. the run lock: a run that lost MODEL_DIR must not write into it
        self._join_sealing()
        with _saving(self.directory / str(step)):  # a synchronous save fails here; an async one at the next wait
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(params),
                    opt_state=ocp.args.StandardSave(opt_state),
                    train_state=ocp.args.JsonSave(dict(train_state, step=int(step))),
                    config=ocp.args.JsonSave(self.config),
                    **({"lora": ocp.args.JsonSave(self.record)} if self.record is not None else {}),
                ),
                force=True,
            )
        self.last_saved_step = step
        # Orbax never calls back on commit: a thread waits for it, then hashes what was written.
        self._sealing = threading.Thread(target=self._seal_when_committed, args=(step,), daemon=True,
                                         name=f"seal-checkpoint-{step}")
        self._sealing.start()
        if wait:
            self.wait()

    def _set_aside(self, step: int, problem: str) -> None:
        """Move a step that failed verification out of Orbax's sight (kept for inspection, never deleted)."""
        target = self.model_dir / CORRUPT_SUBDIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.log(f"skipping checkpoint step {step}: {problem}; moved it to {target}")
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")

    def restore_latest(self, params_like, opt_state_like, params_shardings=None, opt_shardings=None):
        """`(step, params, opt_state, train_state)` of the newest verified step, or None when there is none.

        Newer steps that fail verification are moved to MODEL_DIR/checkpoints_corrupt/ with a log line; when steps
        exist but none verifies, nothing is moved and CorruptCheckpointError lists what was wrong with each. `*_like` are pytrees
        (arrays or ShapeDtypeStructs) giving structure, shapes and dtypes. A step recording another model than this
        checkpointer's `config` (a field not marked RUNTIME) raises ModelChangedError before anything is restored.
        """
        problems = {}
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = verify_step(self.directory / str(step))
            if problem is None:
                break
            problems[step] = problem
        else:
            if problems:  # nothing is moved: the user decides what to do with them
                raise CorruptCheckpointError(
                    f"no checkpoint in {self.directory} verifies: "
                    + "; ".join(f"step {s}: {p}" for s, p in problems.items())
                    + ". Use a new MODEL_DIR, move the checkpoints away to start over, or seal a step you trust.")
            return None
        for bad, problem in problems.items():
            self._set_aside(bad, problem)
        if problems:
            self.manager.reload()  # forget the steps just moved away
            self.last_saved_step = self.manager.latest_step()
        self._check_config(step)
        r = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(params_like, params_shardings)),
                opt_state=ocp.args.StandardRestore(_abstract(opt_state_like, opt_shardings)),
                train_state=ocp.args.JsonRestore(),
            ),
        )
        return step, r["params"], r["opt_state"], dict(r["train_state"])

    def _check_config(self, step: int) -> None:
        """Stop before restoring when the run's model differs from the one `step` recorded in a field that is not
        RUNTIME (it would train another function on these weights); log the RUNTIME fields that change."""
        step_dir = self.directory / str(step)
        if self._model is None or not (step_dir / "config").exists():  # a checkpoint written without its config
            return
        fixed, changed = config_changes(read_model_config(step_dir), self._model)
        if fixed:
            said = "; ".join(f"{k} {old} in the checkpoint vs {new} in this run" for k, (old, new) in fixed.items())
            raise ModelChangedError(
                f"MODEL_DIR={self.model_dir} was trained as another model than this run's: {said} (checkpoint "
                f"{step_dir}). Resuming would train a different model on those weights. Use a new MODEL_DIR, or the "
                f"gin settings that wrote it ({self.model_dir / 'operative_config.gin'}); only the RUNTIME fields "
                f"{list(LlamaConfig.fields_of_kind(RUNTIME))} may change on a resume.")
        for k, (old, new) in changed.items():
            self.log(f"resuming with {k} {new} (checkpoint: {old})")

    def last_good_step(self) -> int | None:
        """The newest step that verifies now (for error messages), or None."""
        try:
            self.wait()
        except (RuntimeError, OSError):
            pass  # a failed save or seal leaves that step unverified; the walk below skips it
        for step in sorted(self.manager.all_steps(), reverse=True):
            if checksums.verify(self.directory / str(step)) is None:
                return step
        return None

    def wait(self) -> None:
        """Block until pending async saves are committed and their checksums recorded; a save the OS failed
        (disk full, read-only, permissions) raises that OSError naming the file."""
        try:
            with _saving(self.directory):
                self.manager.wait_until_finished()
        finally:
            self._join_sealing()  # the sealing thread saw the same failure: raised with its step, or after this one

    def close(self) -> None:
        """Finish pending saves (and their checksums) and release the manager."""
        try:
            self.wait()
        except BaseException:
            with contextlib.suppress(Exception):  # it would raise the failed save again, as Orbax's error
                self.manager.close()
            raise
        with _saving(self.directory):
            self.manager.close()


def checkpoint_path_for_step(model_dir, step: int) -> str:
    """Where step `step` of MODEL_DIR is stored."""
    return os.path.join(os.fspath(model_dir), CHECKPOINTS_SUBDIR, str(step))

