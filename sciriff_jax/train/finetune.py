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
from sciriff_jax.io import checkpoint, loader, paths, run_lock, tokenizer_files, writes
from sciriff_jax.model.config import RUNTIME, LlamaConfig, resolve_dtype
from sciriff_jax.model.llama import init_params
from sciriff_jax.parallel import distributed
from sciriff_jax.parallel.sharding import MeshConfig
from sciriff_jax.io import lora_files
from sciriff_jax.model.lora import LoraConfig
from sciriff_jax.train import lora_train, loop, run_log, setup
from sciriff_jax.train.preemption import PreemptionGuard
from sciriff_jax.train.losses import LOSS_NORMALIZATIONS
from sciriff_jax.train.optim import OptimizerConfig
from sciriff_jax.train.step import make_loss_fn


RunConfigError = setup.RunConfigError  # settings that cannot work together (train/setup.py checks them)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long and how a run trains, where it writes, and what it starts from (gin: `TrainConfig.*`)."""

    model_dir: str
    # None: num_epochs passes over the (packed) mixture.
    train_steps: int | None = dataclasses.field(default=None, metadata={"min": 1})
    num_epochs: float = dataclasses.field(default=2.0, metadata={"min": 0, "above": True})
    # Global batch, rows of the data's `targets` length.
    batch_size: int = dataclasses.field(default=128, metadata={"min": 1})
    # Gradient accumulation: batch_size / microbatches rows per forward pass.
    microbatches: int = dataclasses.field(default=1, metadata={"min": 1})
    seed: int = dataclasses.field(default=0, metadata={"min": 0})  # data order and random init
    initial_checkpoint_path: str | None = None
    checkpoint_period: int = dataclasses.field(default=500, metadata={"min": 0})
    keep_checkpoints: int | None = dataclasses.field(default=3, metadata={"min": 1})
    async_checkpoints: bool = True
    log_every: int = dataclasses.field(default=10, metadata={"min": 1})
    tensorboard: bool = True
    on_nonfinite: str = dataclasses.field(default="stop", metadata={"choices": loop.NONFINITE_POLICIES})
    # "tokens": every target token of an update counts the same; "microbatch": open-instruct's (each group of
    # loss_microbatch_rows rows averages its own target tokens, then the groups are averaged; None: the whole batch).
    loss_normalization: str = dataclasses.field(default="tokens", metadata={"choices": LOSS_NORMALIZATIONS})
    loss_microbatch_rows: int | None = dataclasses.field(default=None, metadata={"min": 1})
    check_memory: bool = True  # stop before the first step when XLA's estimate exceeds the free host/device memory
    lock_lease_s: float = run_lock.DEFAULT_LEASE_S  # MODEL_DIR's run lock: how long a silent holder keeps it
    # The model's RUNTIME fields this run changes, by LlamaConfig field name (finetune.gin: DTYPE, PARAM_DTYPE,
    # ATTENTION_BACKEND, REMAT_POLICY, MAX_POSITION); a None value keeps the model file's or the initial checkpoint's
    # choice; DTYPE "auto" is the platform's (float32 on a CPU, bfloat16 on GPU / TPU).
    model_overrides: dict = dataclasses.field(default_factory=dict, metadata={"overrides": LlamaConfig})

    def __post_init__(self):
        unknown = sorted(set(self.model_overrides) - set(LlamaConfig.fields_of_kind(RUNTIME)))
        if unknown:
            raise ValueError(f"TrainConfig.model_overrides names {unknown}: a run may change only the model's RUNTIME "
                             f"fields {LlamaConfig.fields_of_kind(RUNTIME)}")

    def apply_overrides(self, config: LlamaConfig, platform: str | None = None) -> LlamaConfig:
        """`config` with the RUNTIME fields this run sets ("auto" dtypes resolved for `platform`, None: JAX's)."""
        overrides = {k: resolve_dtype(v, platform) for k, v in self.model_overrides.items() if v is not None}
        return config.replace(**overrides) if overrides else config


@dataclasses.dataclass(frozen=True)
class TrainEvalConfig:
    """Evaluations during training, every `every` steps (and at step 0 with `at_start`).

    `loss_data`: teacher-forced loss over its first `loss_batches` batches. `decode`: greedy decoding of its
    mixture scored with the SciRIFF-Eval metrics. Either is off when it names no mixture.
    """

    every: int | None = dataclasses.field(default=None, metadata={"min": 1})
    at_start: bool = False
    loss_data: DataConfig | None = None
    loss_batches: int = 4
    decode: evaluate.EvalConfig | None = None


def resolve_model_config(model: LlamaConfig | None, train: TrainConfig, platform: str | None = None) -> LlamaConfig:
    """The run's LlamaConfig: the initial checkpoint's shapes (when given) + the RUNTIME fields of `model`, except
    its context: a run from a checkpoint keeps the checkpoint's max_position (a Tulu 2 start keeps 8,192) unless
    MAX_POSITION sets it; then the RUNTIME fields the run's macros set (TrainConfig.model_overrides)."""
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
            # A model file states its family's context (Llama 2: 4,096); the checkpoint knows its own.
            stored = stored.with_runtime_of(model).replace(max_position=stored.max_position)
        config = stored
    if config is None:
        raise ValueError("finetune needs a model: set finetune.model (include a gin_configs/models/*.gin) "
                         "or INITIAL_CHECKPOINT_PATH.")
    return train.apply_overrides(config, platform)


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
             evals: TrainEvalConfig = TrainEvalConfig(), lora: LoraConfig | None = None, *,
             operative_config: str | None = None, eval_fn: Callable | None = None) -> dict:
    """Finetune a Llama on a SeqIO mixture; resumes from MODEL_DIR's latest checkpoint. Returns a summary dict.

    With `lora` (its rank set: LORA_RANK), the base is frozen and LoRA adapters are trained (train/lora_train.py)."""
    distributed.maybe_initialize()
    lock = lock_model_dir(train)
    lora = lora if lora is not None and lora.rank else None  # LORA_RANK=None: every parameter is trained
    try:
        return _finetune(train, data, model, optimizer, mesh, evals, (operative_config, lora), eval_fn, lock)
    finally:
        if lock is not None:
            lock.release()


def lock_model_dir(train: TrainConfig) -> run_lock.RunLock | None:
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


def _finetune(train, data, model, optimizer, mesh, evals, settings, eval_fn, lock) -> dict:
    """The run, in the order it happens: model and tokens, the update plan, the setup, the start (resumed or
    fresh), the evaluations, the loop, the summary. `settings`: (operative gin config, LoraConfig or None)."""
    operative_config, lora = settings
    t_start = time.time()
    model_dir = str(paths.resolve(train.model_dir))  # a local directory or a URL such as gs://bucket/run
    config = resolve_model_config(model, train)
    chat_format, data = run_chat_format(train, data, config, model_dir)  # before anything reads the mixture
    train_steps, epochs = _plan_updates(train, data)
    loss = (train.loss_normalization, train.loss_microbatch_rows)
    if lora is None:
        run_setup = setup.build(config, mesh=mesh, optimizer=optimizer, train_steps=train_steps,
                                microbatches=train.microbatches, loss=loss)
    else:
        run_setup = lora_train.build(config, lora, mesh=mesh, optimizer=optimizer, train_steps=train_steps,
                                     microbatches=train.microbatches, loss=loss, seed=train.seed)
    run_setup.check_batch(train.batch_size)  # before any batch is built
    run_setup = _compile_checked(run_setup, train, data.length)  # before any batch or weight is read
    batches = data.batches(sharding=run_setup.sharding.batch, global_batch_size=train.batch_size, seed=train.seed,
                           vocab_size=config.vocab_size, epochs=epochs)
    record = None
    if lora is not None:  # the frozen base, loaded once (and its fingerprint, which the checkpoints record)
        record = run_setup.load_base(train.initial_checkpoint_path, train.seed)
        _log(f"LoRA rank {lora.rank} alpha {lora.alpha} on {list(lora.targets)}; frozen base in "
             f"{lora.quantize or config.dtype} ({lora_train.base_bytes(run_setup) / 1e9:.2f} GB): "
             f"{record['base']}")
    ckpt = checkpoint.TrainCheckpointer(model_dir, period=train.checkpoint_period, keep=train.keep_checkpoints,
                                        config=config, async_save=train.async_checkpoints,
                                        before_save=lock.check if lock is not None else None, log=_log,
                                        record=record)
    start_step, params, opt_state = start_or_resume(train, run_setup, ckpt, batches, model_dir)
    sharding, length = run_setup.sharding, data.length
    _log(f"{run_setup.num_params / 1e6:.2f}M params ({config.param_dtype}; compute in {config.dtype}), mesh {dict(sharding.mesh.shape)} ({sharding.layout}), global "
         f"batch {train.batch_size} x {length} tokens, {train.microbatches} microbatch(es), steps "
         f"{start_step}->{train_steps}")
    run_log.save_operative_config(model_dir, operative_config)
    logger = run_log.RunLogger(
        model_dir, total_steps=train_steps, start_step=start_step, tokens_per_step=train.batch_size * length,
        flops_per_token=config.flops_per_token(length), log_every=train.log_every, tensorboard=train.tensorboard)
    hooks = _eval_hooks(evals, run_setup, train, model_dir, chat_format) + ([eval_fn] if eval_fn is not None else [])
    if lora is not None:  # evaluations see the merged model (a copy of the weights while they run)
        hooks = [_on_merged(hook, run_setup) for hook in hooks]
    try:
        with PreemptionGuard() as guard:
            result = loop.train_loop(
                step_fn=_check_vocab(run_setup.step, config.vocab_size), params=params, opt_state=opt_state,
                batches=batches,
                settings=loop.LoopConfig(train_steps, start_step, eval_every=evals.every,
                                         eval_at_start=evals.at_start, on_nonfinite=train.on_nonfinite),
                schedule=run_setup.schedule, checkpointer=ckpt, logger=logger,
                eval_fn=_run_all(hooks) if hooks else None, preemption=guard)
    finally:
        batches.close()  # a failed step must not leave the TF input stream to hang the process's exit
        try:
            logger.close()
        finally:
            ckpt.close()  # even when the logger's last write failed
    return _summarize(result, model_dir, train_steps, start_step, time.time() - t_start, run_setup.num_params,
                      run_setup)


def _compile_checked(run_setup: setup.TrainSetup, train: TrainConfig, length: int) -> setup.TrainSetup:
    """The setup with its step compiled ahead of time, after its memory estimate is logged and checked against
    the free host / device memory (a step that will not fit stops here, not in swap or the OOM killer)."""
    t0 = time.time()
    compiled = run_setup.compile_step(train.batch_size, length)
    estimate = setup.estimate_memory(compiled, run_setup.sharding.mesh.devices.flat)
    _log(f"compiled the step in {time.time() - t0:.1f}s; {estimate.describe()}")
    if train.check_memory:
        setup.check_memory(estimate, microbatches=train.microbatches, batch_size=train.batch_size, length=length,
                           remat_policy=run_setup.config.remat_policy)
    return run_setup.with_compiled_step(compiled)


def _plan_updates(train: TrainConfig, data: DataConfig) -> tuple[int, int | None]:
    """(updates to run, passes over the data or None for an endless stream), said in the log."""
    batch_size, length = train.batch_size, data.length
    if data.examples_per_update:
        unit = f"rows of {length} tokens holding exactly {data.examples_per_update} examples"
    else:
        unit = f"rows of {length} packed tokens" if data.pack else "examples (unpacked, one per row)"
    if train.train_steps is not None:
        _log(f"{batch_size} {unit} per update; TRAIN_STEPS={train.train_steps} updates over an endless stream of the "
             "mixture (rate-based sampling)")
        return train.train_steps, None
    per_epoch = data.steps_per_epoch(batch_size)
    train_steps = max(int(math.ceil(train.num_epochs * per_epoch)), 1)
    # Exact epochs: a finite stream of whole passes. Packing joins the passes' rows, so one more pass is
    # read for the last update's few rows; unpacked, the passes hold exactly the batches counted.
    epochs = int(math.ceil(train.num_epochs)) + (1 if data.pack and not data.examples_per_update else 0)
    _log(f"{batch_size} {unit} per update; {train_steps} updates = {train.num_epochs} epochs x {per_epoch} "
         "updates per epoch (every example once per epoch)")
    return train_steps, epochs


def start_or_resume(train: TrainConfig, run_setup: setup.TrainSetup, ckpt, batches, model_dir: str):
    """(start step, params, optimizer state): MODEL_DIR's latest verified checkpoint (the input position
    restored into `batches`), else INITIAL_CHECKPOINT_PATH or a random init with a fresh optimizer."""
    sharding = run_setup.sharding
    if ckpt.latest_step() is not None:
        _check_lora_resume(ckpt.directory / str(ckpt.latest_step()), run_setup.holder.get("record")
                           if isinstance(run_setup, lora_train.LoraSetup) else None)
    try:
        restored = ckpt.restore_latest(run_setup.param_shapes, run_setup.opt_state_shapes(), sharding.params,
                                       sharding.opt_state)
    except checkpoint.CorruptCheckpointError:
        raise  # its message already lists each step and what was wrong with it
    except checkpoint.ModelChangedError as err:
        raise RunConfigError(str(err)) from None  # names each field, both values and the fix
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
        return start_step, params, opt_state
    if isinstance(run_setup, lora_train.LoraSetup):
        params = run_setup.init_adapters(train.seed)
        source = f"fresh LoRA adapters (seed {train.seed}) over the frozen base"
    elif train.initial_checkpoint_path:
        params = loader.load(train.initial_checkpoint_path, dtype=run_setup.config.param_dtype,
                             shardings=sharding.params, with_tokenizer=False).params
        source = f"INITIAL_CHECKPOINT_PATH={train.initial_checkpoint_path}"
    else:
        params = jax.jit(init_params, static_argnums=0, out_shardings=sharding.params)(
            run_setup.config, jax.random.PRNGKey(train.seed))
        source = f"random init (seed {train.seed}); set INITIAL_CHECKPOINT_PATH to finetune a pretrained model"
    opt_state = jax.jit(run_setup.tx.init, out_shardings=sharding.opt_state)(params)
    _log(f"starting from {source}")
    return 0, params, opt_state


def _check_lora_resume(step_dir, record: dict | None) -> None:
    """A LoRA resume (`record`: this run's) continues adapters of this base and LoRA config only; a full one, no
    adapters."""
    recorded = lora_files.read_record(step_dir)
    if record is None:
        if recorded is not None:
            raise RunConfigError(f"{step_dir} holds LoRA adapters ({recorded['lora']}), but this run trains every "
                                 "parameter: use a new MODEL_DIR, or the LORA_* settings that trained them.")
        return
    if recorded is None:
        raise RunConfigError(f"{step_dir} is a full-parameter checkpoint, but this run trains LoRA adapters "
                             "(LORA_RANK): use a new MODEL_DIR, or LORA_RANK=None to resume it.")
    try:
        lora_files.check_same_base(recorded, record, str(step_dir))
    except ValueError as err:
        raise RunConfigError(str(err)) from None


def _on_merged(hook: Callable, run_setup) -> Callable:
    """An evaluation hook of a LoRA run: called with the base + adapters merged."""
    def run(adapters, step):
        return hook(run_setup.merged(adapters), step)
    return run


def _run_all(hooks: list) -> Callable:
    """One eval callback running every hook, their metrics merged."""
    def run_evals(params, step):
        out = {}
        for hook in hooks:
            out.update(hook(params, step))
        return out
    return run_evals


def _summarize(result: dict, model_dir: str, train_steps: int, start_step: int, seconds: float, n_params: int,
               run_setup: setup.TrainSetup | None = None) -> dict:
    """The run's summary (logged, and written to MODEL_DIR/train_summary.json by process 0); with `run_setup`, the
    dtypes, context and loss normalisation the step ran with."""
    summary = {k: v for k, v in result.items() if k not in ("params", "opt_state")}
    summary.update(model_dir=model_dir, train_steps=train_steps, seconds_total=seconds,
                   checkpoint=checkpoint.checkpoint_path_for_step(model_dir, result["final_step"]),
                   num_params=n_params)
    if run_setup is not None:
        c = run_setup.config
        summary.update(compute_dtype=c.dtype, param_dtype=c.param_dtype, max_position=c.max_position,
                       loss_normalization=run_setup.loss[0], loss_microbatch_rows=run_setup.loss[1])
        if isinstance(run_setup, lora_train.LoraSetup):  # trainable = the adapters; the base they belong to
            summary["lora"] = run_setup.holder["record"]
    if "first_loss" in summary:
        _log(f"done: steps {start_step}->{result['final_step']} in {result['seconds']:.1f}s, loss "
             f"{summary['first_loss']:.4f} -> {summary['last_loss']:.4f}; checkpoint {summary['checkpoint']}")
    if jax.process_index() == 0:
        record_summary(paths.resolve(model_dir) / "train_summary.json", summary)
    return summary


def record_summary(path, summary: dict) -> None:
    """Write train_summary.json without losing what an earlier run of this MODEL_DIR recorded there: a rerun that
    trained nothing leaves it as it is; one that trained appends the earlier record(s) under "earlier_runs"."""
    earlier = None
    if path.exists():
        try:
            earlier = json.loads(path.read_text())
        except ValueError:
            earlier = {"unreadable": path.read_text()}  # kept as text: a record is never dropped
    if earlier is not None and not summary.get("steps"):
        _log(f"nothing left to train: {path} is kept as the run that trained it wrote it")
        return
    record = dict(summary)
    if earlier is not None:
        runs = earlier.pop("earlier_runs", []) if isinstance(earlier, dict) else []
        record["earlier_runs"] = runs + [earlier]
    writes.write_text(path, json.dumps(record, indent=1, default=str))  # a failed write leaves the earlier record


def run_chat_format(train: TrainConfig, data: DataConfig, config: LlamaConfig, model_dir: str):
    """(ChatFormat the run trains with or None for synthetic data, the data config naming the mixture tokenized
    with it).

    An initial checkpoint's own tokenizer and template (an HF directory's, or the ones its run recorded) are the
    run's when the mixture's set has no vocabulary of its own: the mixture is read through the task set of that
    format (seqio_tasks.name_for). A set someone configured keeps its format, and stops, naming both, when its
    vocabulary is not the checkpoint's. Without an initial checkpoint, the mixture's own format is the run's. The
    format is recorded in MODEL_DIR/tokenizer/ so eval and export of this run use it without flags.
    """
    if data.source != "seqio" or not data.mixture_or_task_name:
        return None, data
    import seqio_tasks  # the data layer (TensorFlow): real data needs it anyway

    name = data.mixture_or_task_name
    own = None
    if train.initial_checkpoint_path:
        try:
            own = loader.resolve_chat_format(train.initial_checkpoint_path)
        except FileNotFoundError:
            own = None  # a checkpoint without a tokenizer trains with the mixture's own
    if own is not None and not seqio_tasks.is_configured(name):  # the checkpoint's format for the default set
        name = seqio_tasks.name_for(name, own)
        _log(f"data: INITIAL_CHECKPOINT_PATH={train.initial_checkpoint_path}: {own.describe()}")
    fmt = seqio_tasks.chat_format_of(name)
    if own is not None and fmt.fingerprint != own.fingerprint:  # a vocabulary someone chose is never replaced
        raise ValueError(
            f"{data.mixture_or_task_name} tokenizes with {fmt.describe()}, but INITIAL_CHECKPOINT_PATH="
            f"{train.initial_checkpoint_path} was trained with {own.describe()}: its embeddings would read other "
            "words. Unset $SCIRIFF_JAX_VOCAB to use the checkpoint's tokenizer, or register the mixture with it "
            "(seqio_tasks.register(prefix=..., chat_format=...)).")
    fmt.check_fits(config.vocab_size, "of this run")
    record = paths.resolve(model_dir) / tokenizer_files.SUBDIR
    if (record / tokenizer_files.RECORD).is_file():
        if tokenizer_files.read_record(record)["fingerprint"] != fmt.fingerprint:
            raise ValueError(f"MODEL_DIR={model_dir} was trained with the tokenizer in {record}, not "
                             f"{fmt.describe()}: use a new MODEL_DIR, or the vocabulary that run used.")
    elif jax.process_index() == 0:
        tokenizer_files.write_format(record, fmt)
    return fmt, dataclasses.replace(data, mixture_or_task_name=name)


def _eval_hooks(evals: TrainEvalConfig, run_setup: setup.TrainSetup, train: TrainConfig, model_dir: str,
                chat_format=None) -> list:
    """The configured evaluations as `hook(params, step) -> metrics` callables, in the run's ChatFormat."""
    hooks = []
    loss_data = evals.loss_data
    if loss_data is not None and loss_data.mixture_or_task_name:
        if chat_format is not None:
            import seqio_tasks  # the data layer (TensorFlow): a SeqIO eval mixture needs it anyway

            if not seqio_tasks.is_configured(loss_data.mixture_or_task_name):  # as the training mixture
                loss_data = dataclasses.replace(
                    loss_data, mixture_or_task_name=seqio_tasks.name_for(loss_data.mixture_or_task_name, chat_format))

        def eval_stream():
            return loss_data.batches(sharding=run_setup.sharding.batch, global_batch_size=train.batch_size,
                                     seed=train.seed, vocab_size=run_setup.config.vocab_size)
        hooks.append(_teacher_forced_eval(run_setup, eval_stream, evals.loss_batches))
    if evals.decode is not None and evals.decode.mixture_or_task_name:
        if chat_format is None:
            raise ValueError("the decoding eval (DECODE_EVAL_MIXTURE_OR_TASK_NAME) needs the run's tokenizer, but "
                             "the training data is synthetic; train on a SeqIO mixture or unset it.")
        hooks.append(evaluate.make_eval_hook(  # template "auto": prompts as training renders them
            evals.decode, config=run_setup.config, chat_format=chat_format,
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
