"""The finetuning run: resolve the model, build the setup, restore or initialise, hook evaluations, run the loop."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from sciriff_jax.data.batches import DataConfig
from sciriff_jax.eval import evaluate
from sciriff_jax.io import checkpoint, loader, paths, run_lock
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import init_params
from sciriff_jax.parallel import distributed
from sciriff_jax.parallel.sharding import MeshConfig
from sciriff_jax.train import loop, run_log, setup
from sciriff_jax.train.preemption import PreemptionGuard
from sciriff_jax.train.optim import OptimizerConfig
from sciriff_jax.train.step import make_loss_fn


class RunConfigError(ValueError):
    """Settings that cannot work together on this run's devices; the message names the gin macros."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long and how a run trains, where it writes, and what it starts from (gin: `TrainConfig.*`)."""

    model_dir: str
    train_steps: int | None = None     # None: num_epochs passes over the (packed) mixture
    num_epochs: float = 2.0
    batch_size: int = 128              # global batch, rows of the data's `targets` length
    microbatches: int = 1              # gradient accumulation: batch_size / microbatches rows per forward pass
    seed: int = 0                      # data order and random init
    initial_checkpoint_path: str | None = None
    checkpoint_period: int = 500
    keep_checkpoints: int | None = 3
    async_checkpoints: bool = True
    log_every: int = 10
    tensorboard: bool = True
    on_nonfinite: str = "stop"         # stop | skip
    lock_lease_s: float = run_lock.DEFAULT_LEASE_S  # MODEL_DIR's run lock: how long a silent holder keeps it
    # Overrides of the model's RUNTIME fields (None: the model file's or checkpoint's choice).
    attention_backend: str | None = None
    remat_policy: str | None = None

    def apply_overrides(self, config: LlamaConfig) -> LlamaConfig:
        """`config` with this run's attention backend / remat policy where they are set."""
        overrides = {k: v for k, v in (("attention_backend", self.attention_backend),
                                       ("remat_policy", self.remat_policy)) if v}
        return config.replace(**overrides) if overrides else config


@dataclasses.dataclass(frozen=True)
class TrainEvalConfig:
    """Evaluations during training, every `every` steps (and at step 0 with `at_start`).

    `loss_data`: teacher-forced loss over its first `loss_batches` batches. `decode`: greedy decoding of its
    mixture scored with the SciRIFF-Eval metrics. Either is off when it names no mixture.
    """

    every: int | None = None
    at_start: bool = False
    loss_data: DataConfig | None = None
    loss_batches: int = 4
    decode: evaluate.EvalConfig | None = None


def resolve_model_config(model: LlamaConfig | None, train: TrainConfig) -> LlamaConfig:
    """The run's LlamaConfig: the initial checkpoint's shapes (when given) + the RUNTIME fields of `model`."""
    config = model
    if train.initial_checkpoint_path:
        stored = loader.load_config(train.initial_checkpoint_path)
        if model is not None:
            diff = model.shape_mismatches(stored)
            if diff:
                raise ValueError(
                    f"finetune's model config does not match INITIAL_CHECKPOINT_PATH={train.initial_checkpoint_path}: "
                    f"{ {k: f'config {a} vs checkpoint {b}' for k, (a, b) in diff.items()} }. Include the model gin "
                    "file that matches the checkpoint, or leave the model unset to use the checkpoint's.")
            stored = stored.with_runtime_of(model)
        config = stored
    if config is None:
        raise ValueError("finetune needs a model: set finetune.model (include a gin_configs/models/*.gin) "
                         "or INITIAL_CHECKPOINT_PATH.")
    return train.apply_overrides(config)


def _teacher_forced_eval(run_setup: setup.TrainSetup, make_batches, steps: int):
    """eval_fn(params, step) -> {"loss": token-weighted CE over the first `steps` batches of an eval stream}."""
    loss_sums = jax.jit(make_loss_fn(run_setup.model))
    cached = []  # the eval batches are read once and kept, so each evaluation sees the same tokens

    def run(params, step):
        if not cached:
            batches = make_batches()
            cached.extend(next(batches) for _ in range(steps))
        total, weight = 0.0, 0.0
        with run_setup.sharding.context():
            for batch in cached:
                l, w = loss_sums(params, batch)
                total, weight = total + float(l), weight + float(w)
        return {"loss": total / max(weight, 1.0), "target_tokens": weight}
    return run


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(f"[sciriff-jax] {message}", flush=True)


def finetune(train: TrainConfig, data: DataConfig, model: LlamaConfig | None = None,
             optimizer: OptimizerConfig = OptimizerConfig(), mesh: MeshConfig = MeshConfig(),
             evals: TrainEvalConfig = TrainEvalConfig(), *, operative_config: str | None = None,
             eval_fn: Callable | None = None) -> dict:
    """Finetune a Llama on a SeqIO mixture; resumes from MODEL_DIR's latest checkpoint. Returns a summary dict."""
    distributed.maybe_initialize()
    lock = _lock_model_dir(train)
    try:
        return _finetune(train, data, model, optimizer, mesh, evals, operative_config, eval_fn, lock)
    finally:
        if lock is not None:
            lock.release()


def _lock_model_dir(train: TrainConfig) -> run_lock.RunLock | None:
    """Process 0 takes MODEL_DIR's run lock; every process learns whether it got it, so all stop together."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = run_lock.RunLock(train.model_dir, lease_s=train.lock_lease_s, log=_log).acquire()
        except run_lock.RunLockedError as err:
            error = err
    if jax.process_count() > 1:
        ok = bool(multihost_utils.broadcast_one_to_all(np.asarray(error is None, dtype=np.int32)))
        if not ok and error is None:
            error = run_lock.RunLockedError(f"process 0 could not lock MODEL_DIR={train.model_dir} (see its log)")
    if error is not None:
        raise error
    return lock


def _finetune(train, data, model, optimizer, mesh, evals, operative_config, eval_fn, lock) -> dict:
    t_start = time.time()
    model_dir = str(paths.resolve(train.model_dir))  # a local directory or a URL such as gs://bucket/run
    config = resolve_model_config(model, train)
    batch_size, length = train.batch_size, data.length
    tokenizer = _training_tokenizer(train, data, config, model_dir)  # before anything reads the mixture

    train_steps, epochs = train.train_steps, None
    if data.examples_per_update:
        unit = f"rows of {length} tokens holding exactly {data.examples_per_update} examples"
    else:
        unit = f"rows of {length} packed tokens" if data.pack else "examples (unpacked, one per row)"
    if train_steps is None:
        per_epoch = data.steps_per_epoch(batch_size)
        train_steps = max(int(math.ceil(train.num_epochs * per_epoch)), 1)
        # Exact epochs: a finite stream of whole passes. Packing joins the passes' rows, so one more pass is
        # read for the last update's few rows; unpacked, the passes hold exactly the batches counted.
        epochs = int(math.ceil(train.num_epochs)) + (1 if data.pack and not data.examples_per_update else 0)
        _log(f"{batch_size} {unit} per update; {train_steps} updates = {train.num_epochs} epochs x {per_epoch} "
             "updates per epoch (every example once per epoch)")
    else:
        _log(f"{batch_size} {unit} per update; TRAIN_STEPS={train_steps} updates over an endless stream of the "
             "mixture (rate-based sampling)")

    run_setup = setup.build(config, mesh=mesh, optimizer=optimizer, train_steps=train_steps,
                            microbatches=train.microbatches)
    sharding = run_setup.sharding
    if batch_size % (train.microbatches * sharding.data_parallel):
        # Before any batch is built: an uneven split would only fail later, inside the data feed or XLA.
        per_pass, dp = batch_size / train.microbatches, sharding.data_parallel
        raise RunConfigError(
            f"BATCH_SIZE={batch_size} / MICROBATCHES={train.microbatches} = {per_pass:g} rows per forward pass do not "
            f"divide over the {dp} data-parallel devices (data x fsdp of mesh {dict(sharding.mesh.shape)}, "
            f"MESH_LAYOUT={sharding.layout!r}). Use a BATCH_SIZE that is a multiple of MICROBATCHES x {dp} "
            f"(e.g. {train.microbatches * dp * max(1, round(per_pass / dp))}), or another MESH_SHAPE.")
    batches = data.batches(sharding=sharding.batch, global_batch_size=batch_size, seed=train.seed,
                           vocab_size=config.vocab_size, epochs=epochs)
    ckpt = checkpoint.TrainCheckpointer(model_dir, period=train.checkpoint_period, keep=train.keep_checkpoints,
                                        config=config, async_save=train.async_checkpoints,
                                        before_save=lock.check if lock is not None else None, log=_log)

    start_step = 0
    try:
        restored = ckpt.restore_latest(run_setup.param_shapes, run_setup.opt_state_shapes(), sharding.params,
                                       sharding.opt_state)
    except checkpoint.CorruptCheckpointError:
        raise  # its message already lists each step and what was wrong with it
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"MODEL_DIR={model_dir} holds checkpoint step {ckpt.latest_step()} that does not fit this run's model or "
            f"optimizer ({type(err).__name__}: {str(err)[:300]}). Use a new MODEL_DIR, or the gin config that wrote it."
        ) from err
    if restored is not None:
        start_step, params, opt_state, train_state = restored
        batches.restore(train_state)
        _log(f"resumed from {ckpt.directory}/{start_step} (input position {train_state.get('batches_consumed')} "
             "batches)")
    else:
        if train.initial_checkpoint_path:
            params = loader.load(train.initial_checkpoint_path, shardings=sharding.params, with_tokenizer=False).params
            source = f"INITIAL_CHECKPOINT_PATH={train.initial_checkpoint_path}"
        else:
            params = jax.jit(init_params, static_argnums=0, out_shardings=sharding.params)(
                config, jax.random.PRNGKey(train.seed))
            source = (f"random init (seed {train.seed}); set INITIAL_CHECKPOINT_PATH to finetune a pretrained "
                      "model")
        opt_state = jax.jit(run_setup.tx.init, out_shardings=sharding.opt_state)(params)
        _log(f"starting from {source}")

    n_params = run_setup.num_params
    _log(f"{n_params / 1e6:.2f}M params, mesh {dict(sharding.mesh.shape)} ({sharding.layout}), global batch "
         f"{batch_size} x {length} tokens, {train.microbatches} microbatch(es), steps {start_step}->{train_steps}")
    run_log.save_operative_config(model_dir, operative_config)
    logger = run_log.RunLogger(
        model_dir, total_steps=train_steps, start_step=start_step, tokens_per_step=batch_size * length,
        flops_per_token=config.flops_per_token(length), log_every=train.log_every, tensorboard=train.tensorboard)

    hooks = _eval_hooks(evals, run_setup, data, train, model_dir, tokenizer)
    if eval_fn is not None:
        hooks.append(eval_fn)

    def run_evals(params, step):
        out = {}
        for hook in hooks:
            out.update(hook(params, step))
        return out

    step_fn = _check_vocab(run_setup.step, config.vocab_size)
    try:
        with PreemptionGuard() as guard:
            result = loop.train_loop(
                step_fn=step_fn, params=params, opt_state=opt_state, batches=batches, train_steps=train_steps,
                start_step=start_step, schedule=run_setup.schedule, checkpointer=ckpt, logger=logger,
                eval_fn=run_evals if hooks else None, eval_every=evals.every, eval_at_start=evals.at_start,
                on_nonfinite=train.on_nonfinite, preemption=guard)
    finally:
        logger.close()
        ckpt.close()
    summary = {k: v for k, v in result.items() if k not in ("params", "opt_state")}
    summary.update(model_dir=model_dir, train_steps=train_steps, seconds_total=time.time() - t_start,
                   checkpoint=checkpoint.checkpoint_path_for_step(model_dir, result["final_step"]),
                   num_params=n_params)
    if "first_loss" in summary:
        _log(f"done: steps {start_step}->{result['final_step']} in {result['seconds']:.1f}s, loss "
             f"{summary['first_loss']:.4f} -> {summary['last_loss']:.4f}; checkpoint {summary['checkpoint']}")
    if jax.process_index() == 0:
        (paths.resolve(model_dir) / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _training_tokenizer(train: TrainConfig, data: DataConfig, config: LlamaConfig, model_dir: str):
    """(vocabulary, template) the mixture tokenizes with, None for synthetic data.

    An initial checkpoint's own tokenizer and template (an HF directory's, or the ones its run recorded) become the
    data layer's, unless another vocabulary was configured (then: an error naming both). The pair is recorded in
    MODEL_DIR/tokenizer/ so eval and export of this run use it without flags.
    """
    if data.source != "seqio" or not data.mixture_or_task_name:
        return None
    import seqio_tasks  # the data layer (TensorFlow): real data needs it anyway
    from seqio_tasks import vocab as vocab_lib

    from sciriff_jax.io import tokenizer_files

    own = None
    if train.initial_checkpoint_path:
        try:
            own = loader.resolve_tokenizer(train.initial_checkpoint_path)
        except FileNotFoundError:
            own = None  # a checkpoint without a tokenizer trains with the configured vocabulary
    if own is not None:
        configured = vocab_lib.configured_vocabulary(seqio_tasks.SETTINGS.vocab_path)
        if configured is None:
            seqio_tasks.configure(vocab_path=loader.vocabulary_for(own.vocabulary_path), template=own.template)
            _log(f"data: INITIAL_CHECKPOINT_PATH={train.initial_checkpoint_path}: {own.note}")
    vocab, template = seqio_tasks.tokenizer_of(data.mixture_or_task_name)
    if own is not None and vocab_lib.fingerprint(vocab) != loader._fingerprint_of(own.vocabulary_path):
        raise ValueError(
            f"{data.mixture_or_task_name} tokenizes with {vocab_lib.describe(vocab)}, but INITIAL_CHECKPOINT_PATH="
            f"{train.initial_checkpoint_path} was trained with {own.vocabulary_path}: its embeddings would read "
            f"other words. Unset ${vocab_lib.VOCAB_ENV} / seqio_tasks.configure(vocab_path=...) to use the "
            "checkpoint's tokenizer, or register the mixture with it.")
    if vocab.vocab_size > config.vocab_size:
        raise ValueError(f"the vocabulary {vocab_lib.describe(vocab)} has {vocab.vocab_size} tokens but the model has "
                         f"{config.vocab_size} embedding rows (vocab_size): use the model's own tokenizer or a model "
                         "gin file with a larger VOCAB_SIZE.")
    record = paths.resolve(model_dir) / tokenizer_files.SUBDIR
    if (record / tokenizer_files.RECORD).is_file():
        if tokenizer_files.read_record(record)["fingerprint"] != vocab_lib.fingerprint(vocab):
            raise ValueError(f"MODEL_DIR={model_dir} was trained with the tokenizer in {record}, not "
                             f"{vocab_lib.describe(vocab)}: use a new MODEL_DIR, or the vocabulary that run used.")
    elif jax.process_index() == 0:
        tokenizer_files.write_vocabulary(record, vocab, template)
    return vocab, template


def _eval_hooks(evals: TrainEvalConfig, run_setup: setup.TrainSetup, data: DataConfig, train: TrainConfig,
                model_dir: str, tokenizer=None) -> list:
    """The configured evaluations as `hook(params, step) -> metrics` callables."""
    hooks = []
    loss_data = evals.loss_data
    if loss_data is not None and loss_data.mixture_or_task_name:
        def eval_stream():
            return loss_data.batches(sharding=run_setup.sharding.batch, global_batch_size=train.batch_size,
                                     seed=train.seed, vocab_size=run_setup.config.vocab_size)
        hooks.append(_teacher_forced_eval(run_setup, eval_stream, evals.loss_batches))
    if evals.decode is not None and evals.decode.mixture_or_task_name:
        if tokenizer is None:
            raise ValueError("the decoding eval (DECODE_EVAL_MIXTURE_OR_TASK_NAME) needs the run's tokenizer, but "
                             "the training data is synthetic; train on a SeqIO mixture or unset it.")
        vocab, template = tokenizer
        decode_config = evals.decode
        if decode_config.template in (None, "", loader.DEFAULT_TEMPLATE):
            decode_config = dataclasses.replace(decode_config, template=template)  # prompts as training renders
        hooks.append(evaluate.make_eval_hook(
            decode_config, config=run_setup.config, vocabulary=vocab,
            sharding=run_setup.sharding, output_dir=paths.resolve(model_dir) / "eval"))
    return hooks


def _check_vocab(step_fn, vocab_size: int):
    """Wrap the step so the first batch's token ids are checked against the model's vocabulary."""
    checked = []

    def run(params, opt_state, batch):
        if not checked:
            top = int(jnp.max(batch["decoder_target_tokens"]))
            if top >= vocab_size:
                raise ValueError(
                    f"the data has token id {top} but the model's vocab_size is {vocab_size}: the SeqIO vocabulary "
                    "does not match the model. Use the model's tokenizer (seqio_tasks.vocab) or a matching model gin.")
            checked.append(True)
        return step_fn(params, opt_state, batch)
    return run
