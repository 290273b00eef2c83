"""Orbax checkpoints: model params + LlamaConfig, and the training state (optimizer, step, data position).

One on-disk format. A checkpoint is a directory holding Orbax items:
  params/   the parameter pytree (Orbax StandardSave, sharded-array aware)
  config/   the LlamaConfig as JSON (`config.to_dict()`)
  opt_state/, train_state/   only in training checkpoints (optimizer state; step + data position JSON)
Training writes MODEL_DIR/checkpoints/<step>/. Orbax writes each step into a temporary directory and
renames it when complete, so a crash mid-save leaves no directory named `<step>`: only
fully-committed steps are ever restored.
"""
from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from sciriff_jax.io import paths
from sciriff_jax.model.config import LlamaConfig

CHECKPOINTS_SUBDIR = "checkpoints"


def _config_to_dict(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, dict):
        return dict(config)
    return config.to_dict()


def _config_from_dict(d: dict):
    return LlamaConfig.from_dict(d)


def _finalized_steps(directory: epath.Path) -> list[int]:
    # Orbax's in-progress saves are named "<step>.orbax-checkpoint-tmp-<n>": digits-only names are committed.
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


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


def _abstract(tree, shardings=None):
    """ShapeDtypeStructs for restore targets, carrying `shardings` (a matching pytree) when given."""
    if shardings is None:
        return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    # Structure comes from `shardings`: checkpoint metadata trees are dict-like and would not match namedtuples.
    return jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shardings, tree)


def save_params(path, params, config) -> None:
    """Write `params` and `config` (LlamaConfig or dict) as an Orbax checkpoint directory at `path`."""
    path = paths.resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    ckptr.save(
        path,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), config=ocp.args.JsonSave(_config_to_dict(config))
        ),
        force=True,
    )


def load_config(path):
    """The LlamaConfig stored in the checkpoint at `path` (step dir or MODEL_DIR)."""
    d = resolve_checkpoint_dir(path)
    ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    return _config_from_dict(ckptr.restore(d, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])


def load_params(path, shardings=None):
    """Restore `(params, LlamaConfig)` from a step directory or a MODEL_DIR (latest step).

    `shardings`: optional pytree of jax.sharding.Sharding matching the params, to restore straight
    onto a mesh; without it arrays land on the default device.
    """
    d = resolve_checkpoint_dir(path)
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
    """Periodic async saves of (params, opt_state, step, data position) under MODEL_DIR/checkpoints, keep-N."""

    def __init__(self, model_dir, *, period: int, keep: int | None = 3, config=None, async_save: bool = True):
        self.directory = paths.resolve(model_dir) / CHECKPOINTS_SUBDIR
        self.period = int(period) if period else 0
        self.config = _config_to_dict(config)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True
            ),
        )
        self.last_saved_step: int | None = self.manager.latest_step()

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """True when `step` falls on the checkpoint period."""
        return self.period > 0 and step % self.period == 0

    def save(self, step: int, params, opt_state, train_state: dict, *, wait: bool = False) -> None:
        """Start an (async) save of the full training state at `step`; `train_state` is JSON (data position etc.)."""
        if self.last_saved_step == step:  # e.g. a preemption right after a periodic save of this step
            if wait:
                self.manager.wait_until_finished()
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                train_state=ocp.args.JsonSave(dict(train_state, step=int(step))),
                config=ocp.args.JsonSave(self.config),
            ),
            force=True,
        )
        self.last_saved_step = step
        if wait:
            self.manager.wait_until_finished()

    def restore_latest(self, params_like, opt_state_like, params_shardings=None, opt_shardings=None):
        """`(step, params, opt_state, train_state)` of the newest committed step, or None when there is none.

        `*_like` are pytrees (arrays or ShapeDtypeStructs) giving structure, shapes and dtypes.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        r = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(params_like, params_shardings)),
                opt_state=ocp.args.StandardRestore(_abstract(opt_state_like, opt_shardings)),
                train_state=ocp.args.JsonRestore(),
            ),
        )
        return step, r["params"], r["opt_state"], dict(r["train_state"])

    def wait(self) -> None:
        """Block until pending async saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


class PreemptionGuard:
    """Turns SIGTERM (preemption notice) into a flag the loop polls, so it can save before exiting."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signals = signals
        self._flag = threading.Event()
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        print(f"[sciriff-jax] received signal {signum}: saving a checkpoint, then exiting", flush=True)
        self._flag.set()

    def requested(self) -> bool:
        """True once a signal arrived on any process (agreed across hosts so all save the same step)."""
        local = self._flag.is_set()
        if jax.process_count() == 1:
            return local
        return bool(np.any(multihost_utils.process_allgather(np.asarray(local, dtype=np.int32))))

    def __exit__(self, *exc):
        for s, prev in self._previous.items():
            signal.signal(s, prev)
        return False


def checkpoint_path_for_step(model_dir, step: int) -> str:
    """Where step `step` of MODEL_DIR is stored."""
    return os.path.join(os.fspath(model_dir), CHECKPOINTS_SUBDIR, str(step))

