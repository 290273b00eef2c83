"""The preference-tuning run (DPO, or reference-free SimPO): finetune's pieces with a preference step.

It starts from INITIAL_CHECKPOINT_PATH (an HF directory, a finetune run's MODEL_DIR or Orbax checkpoint) whose
params, frozen, are DPO's reference; the pairs are a preference folder (`sciriff-jax data prefs`) read as a SeqIO
task tokenized with that checkpoint's own ChatFormat. Checkpoints, resume, preemption, the run lock, metrics.jsonl /
TensorBoard and train_summary.json are finetune's; per step it also logs rewards/chosen, rewards/rejected,
rewards/margins and rewards/accuracy.
"""
from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp

from sciriff_jax.data import preferences
from sciriff_jax.data.preferences import PreferenceDataConfig
from sciriff_jax.io import checkpoint, loader, paths, tokenizer_files
from sciriff_jax.model import lora as lora_lib
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import Llama, param_shapes
from sciriff_jax.parallel import distributed
from sciriff_jax.parallel.sharding import MeshConfig, Sharding
from sciriff_jax.train import finetune, loop, run_log, setup
from sciriff_jax.train.dpo_loss import (DPOConfig, make_preference_loss, make_preference_step,
                                        make_variables_logprob_fn)
from sciriff_jax.train.finetune import RunConfigError, TrainConfig
from sciriff_jax.train.optim import OptimizerConfig
from sciriff_jax.train.preemption import PreemptionGuard

_log = finetune._log


def dpo(train: TrainConfig, data: PreferenceDataConfig, preference: DPOConfig = DPOConfig(),
        model: LlamaConfig | None = None, optimizer: OptimizerConfig = OptimizerConfig(),
        mesh: MeshConfig = MeshConfig(), lora: lora_lib.LoraConfig | None = None, *,
        operative_config: str | None = None) -> dict:
    """Preference-tune INITIAL_CHECKPOINT_PATH on `data`; resumes from MODEL_DIR's latest checkpoint. `BATCH_SIZE`
    (train.batch_size) counts pairs: each update reads 2 x BATCH_SIZE rows. With `lora`, only adapters over the
    frozen base train, and the base without adapters is the reference (no second copy of the weights); the
    checkpoints then hold the adapters. Returns the summary dict."""
    distributed.maybe_initialize()
    lock = finetune.lock_model_dir(train)
    try:
        return _dpo(train, data, preference, model, optimizer, mesh, lora, operative_config, lock)
    finally:
        if lock is not None:
            lock.release()


def _dpo(train, data, preference, model, optimizer, mesh, lora, operative_config, lock) -> dict:
    """The run in the order it happens: model and format, the pairs, the plan, the setup, the start, the reference,
    the loop, the summary."""
    t_start = time.time()
    if not train.initial_checkpoint_path:
        raise RunConfigError("a preference run tunes a model: set INITIAL_CHECKPOINT_PATH to an HF directory, a "
                             "finetune run's MODEL_DIR or an Orbax checkpoint (its params are DPO's reference)")
    model_dir = str(paths.resolve(train.model_dir))
    config = finetune.resolve_model_config(model, train)
    chat_format = _chat_format(train, config, model_dir)
    name = preferences.register(data, chat_format)
    train_steps, epochs, counts = _plan(train, data, name)
    run_setup = build_setup(config, mesh, optimizer, train_steps, train.microbatches, lora)
    run_setup.check_batch(2 * train.batch_size)
    batches = preferences.pair_batches(name, data, sharding=run_setup.sharding.batch, pairs=train.batch_size,
                                       seed=train.seed, epochs=epochs)
    ckpt = checkpoint.TrainCheckpointer(model_dir, period=train.checkpoint_period, keep=train.keep_checkpoints,
                                        config=config, async_save=train.async_checkpoints,
                                        before_save=lock.check if lock is not None else None, log=_log)
    if lora is None:
        start_step, params, opt_state = finetune.start_or_resume(train, run_setup, ckpt, batches, model_dir)
        frozen, described = _reference(preference, train, run_setup, params, start_step)
    else:
        start_step, params, opt_state, frozen = start_lora(train, run_setup, ckpt, batches, lora)
        described = "the base without adapters" if preference.needs_reference else "none (reference-free)"
    step = _step(preference, run_setup, lora)
    _log(f"{preference.loss} (beta {preference.beta}), reference: {described}; {run_setup.num_params / 1e6:.2f}M "
         f"params, mesh {dict(run_setup.sharding.mesh.shape)}, {train.batch_size} pairs x 2 rows x {data.length} "
         f"tokens per update, steps {start_step}->{train_steps}")
    run_log.save_operative_config(model_dir, operative_config)
    logger = run_log.RunLogger(
        model_dir, total_steps=train_steps, start_step=start_step, tokens_per_step=2 * train.batch_size * data.length,
        flops_per_token=config.flops_per_token(data.length), log_every=train.log_every, tensorboard=train.tensorboard)
    try:
        with PreemptionGuard() as guard:
            result = loop.train_loop(
                step_fn=finetune._check_vocab(lambda p, o, b: step(p, o, b, frozen), config.vocab_size),
                params=params, opt_state=opt_state, batches=batches,
                settings=loop.LoopConfig(train_steps, start_step, on_nonfinite=train.on_nonfinite),
                schedule=run_setup.schedule, checkpointer=ckpt, logger=logger, preemption=guard)
    finally:
        batches.close()
        try:
            logger.close()
        finally:
            ckpt.close()
    result["preference"] = {**dataclasses.asdict(preference), "reference": described, "data": data.path,
                            "task": name, "pairs": counts[0], "pairs_longer_than_length": counts[1],
                            "chat_format": chat_format.describe(),
                            "lora": lora.to_dict() if lora is not None else None}
    return finetune._summarize(result, model_dir, train_steps, start_step, time.time() - t_start,
                               run_setup.num_params)


def _chat_format(train: TrainConfig, config: LlamaConfig, model_dir: str):
    """The initial checkpoint's own ChatFormat (the pairs are rendered as it was trained), recorded in
    MODEL_DIR/tokenizer/ so eval and export of this run use it."""
    try:
        fmt = loader.resolve_chat_format(train.initial_checkpoint_path)
    except FileNotFoundError as err:
        raise RunConfigError(f"INITIAL_CHECKPOINT_PATH={train.initial_checkpoint_path} has no tokenizer recorded "
                             f"({err}); the pairs must be rendered as that model was trained: use an HF directory with "
                             "its tokenizer files or a sciriff-jax run's MODEL_DIR") from None
    fmt.check_fits(config.vocab_size, "of this run")
    record = paths.resolve(model_dir) / tokenizer_files.SUBDIR
    if (record / tokenizer_files.RECORD).is_file():
        if tokenizer_files.read_record(record)["fingerprint"] != fmt.fingerprint:
            raise RunConfigError(f"MODEL_DIR={model_dir} was trained with the tokenizer in {record}, not "
                                 f"{fmt.describe()}: use a new MODEL_DIR")
    elif jax.process_index() == 0:
        tokenizer_files.write_format(record, fmt)
    return fmt


def _plan(train: TrainConfig, data: PreferenceDataConfig, name: str) -> tuple[int, int | None, tuple[int, int]]:
    """(updates, passes over the pairs or None for an endless stream, (pairs that fit, pairs left out))."""
    kept, dropped = preferences.count_pairs(name, data)
    _log(f"preference data {data.path} ({data.split}): {kept} pairs fit rows of {data.length} tokens"
         + (f", {dropped} longer left out (raise PREFERENCE_LENGTH to keep them)" if dropped else ""))
    if train.train_steps is not None:
        return train.train_steps, None, (kept, dropped)
    per_epoch = kept // train.batch_size
    if per_epoch == 0:
        raise RunConfigError(f"{kept} preference pairs make no update of BATCH_SIZE={train.batch_size} pairs: lower "
                             "BATCH_SIZE, or build more pairs")
    steps = max(int(math.ceil(train.num_epochs * per_epoch)), 1)
    _log(f"{steps} updates = {train.num_epochs} epochs x {per_epoch} updates of {train.batch_size} pairs")
    return steps, int(math.ceil(train.num_epochs)), (kept, dropped)


def _reference(preference: DPOConfig, train: TrainConfig, run_setup: setup.TrainSetup, params, start_step: int):
    """(the reference's params, what it is): the starting policy, frozen (a copy at step 0, INITIAL_CHECKPOINT_PATH
    again on a resume); None for a reference-free loss."""
    if not preference.needs_reference:
        return None, "none (reference-free)"
    what = f"INITIAL_CHECKPOINT_PATH={train.initial_checkpoint_path}, frozen"
    if start_step == 0:  # the step donates the policy's buffers: the reference is its own copy
        return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=run_setup.sharding.params)(params), what
    return loader.load(train.initial_checkpoint_path, shardings=run_setup.sharding.params,
                       with_tokenizer=False).params, what


def build_setup(config, mesh, optimizer, train_steps, microbatches, lora) -> setup.TrainSetup:
    """finetune's setup; with LoRA, the trained tree is the adapters (their shardings, optimizer state and shapes)
    and the base is held apart (`sharding.base`)."""
    if lora is None:
        return setup.build(config, mesh=mesh, optimizer=optimizer, train_steps=train_steps, microbatches=microbatches)
    sharding = Sharding.create(config, mesh).for_lora(config, lora)
    setup.check_platform(config, sharding.mesh.devices.flat[0].platform)
    tx, schedule = optimizer.make(train_steps)
    shapes = lora_lib.adapter_shapes(param_shapes(config), lora)
    return setup.TrainSetup(config, sharding.with_optimizer(tx, shapes), Llama(config, mesh=sharding.mesh, lora=lora),
                            tx, schedule, shapes, microbatches, step=None)


def start_lora(train: TrainConfig, run_setup: setup.TrainSetup, ckpt, batches, lora):
    """(start step, adapters, optimizer state, frozen base): MODEL_DIR's latest adapters (input position restored)
    or fresh ones (B = 0: the starting policy is the base), over INITIAL_CHECKPOINT_PATH's params in the compute
    dtype (int8 / int4 with lora.quantize)."""
    sharding = run_setup.sharding
    base = loader.load(train.initial_checkpoint_path, shardings=sharding.base, with_tokenizer=False).params
    base = lora_lib.freeze_base(base, run_setup.config)
    if lora.quantize:
        base = lora_lib.quantize_base(base, lora.quantize)
    restored = ckpt.restore_latest(run_setup.param_shapes, run_setup.opt_state_shapes(), sharding.params,
                                   sharding.opt_state)
    if restored is not None:
        start_step, adapters, opt_state, train_state = restored
        batches.restore(train_state)
        _log(f"resumed LoRA adapters from {ckpt.directory}/{start_step}")
        return start_step, adapters, opt_state, base
    adapters = jax.jit(lambda key: lora_lib.init_adapters(param_shapes(run_setup.config), lora, key),
                       out_shardings=sharding.params)(jax.random.PRNGKey(train.seed))
    opt_state = jax.jit(run_setup.tx.init, out_shardings=sharding.opt_state)(adapters)
    _log(f"LoRA rank {lora.rank} on {list(lora.targets)}: {lora_lib.num_adapter_params(adapters) / 1e6:.3f}M "
         f"trained params over the frozen base of INITIAL_CHECKPOINT_PATH={train.initial_checkpoint_path}")
    return 0, adapters, opt_state, base


def _step(preference: DPOConfig, run_setup: setup.TrainSetup, lora=None):
    """The jitted preference step of the run's model, optimizer and shardings. `frozen` (the step's 4th argument):
    the reference's params (full DPO), the base (LoRA: without adapters it is the reference), or None (SimPO)."""
    logps = make_variables_logprob_fn(run_setup.model)
    sharding = run_setup.sharding
    if lora is None:
        policy = lambda params, frozen, batch: logps({"params": params}, batch)  # noqa: E731
        frozen_sharding = sharding.params if preference.needs_reference else None
    else:
        policy = lambda params, frozen, batch: logps(lora_lib.with_adapters(frozen, params), batch)  # noqa: E731
        frozen_sharding = sharding.base if not lora.quantize else None  # a QLoRA base keeps the placement it has
    reference = lambda params, frozen, batch: logps({"params": frozen}, batch)  # noqa: E731
    loss_sums = make_preference_loss(preference, policy, reference)
    return make_preference_step(loss_sums, run_setup.tx, microbatches=run_setup.microbatches,
                                shardings=(sharding.params, sharding.opt_state, sharding.batch, frozen_sharding),
                                context=sharding.context)
