"""The gin-configured finetuning run: model config, mesh, data, optimizer, checkpoints, eval hook, loop."""
from __future__ import annotations

import json
import math
import time
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from sciriff_jax import checkpoint, data, distributed, logging_utils, optim, paths, train

# Fields of LlamaConfig a run may change on top of a checkpoint: numerics, memory and context length (e.g. the
# 16K experiment scales RoPE), never the parameter shapes.
_RUNTIME_FIELDS = ("dtype", "remat_policy", "attention_backend", "rope_scaling", "max_position")


def resolve_model_config(model_config, initial_checkpoint_path, *, attention_backend=None, remat_policy=None):
    """The run's LlamaConfig: the initial checkpoint's shapes (when given) + runtime fields of `model_config`."""
    config = model_config
    if initial_checkpoint_path:
        stored = checkpoint.load_config(initial_checkpoint_path)
        if model_config is not None:
            shape_fields = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                            "num_kv_heads", "head_dim")
            diff = {k: (getattr(model_config, k), getattr(stored, k)) for k in shape_fields
                    if getattr(model_config, k) != getattr(stored, k)}
            if diff:
                raise ValueError(
                    f"finetune.model_config does not match INITIAL_CHECKPOINT_PATH={initial_checkpoint_path}: "
                    f"{ {k: f'config {a} vs checkpoint {b}' for k, (a, b) in diff.items()} }. Include the model gin "
                    "file that matches the checkpoint, or leave model_config unset to use the checkpoint's.")
            stored = stored.replace(**{k: getattr(model_config, k) for k in _RUNTIME_FIELDS})
        config = stored
    if config is None:
        raise ValueError("finetune needs a model: set finetune.model_config (include a gin_configs/models/*.gin) "
                         "or INITIAL_CHECKPOINT_PATH.")
    overrides = {k: v for k, v in (("attention_backend", attention_backend), ("remat_policy", remat_policy)) if v}
    return config.replace(**overrides) if overrides else config


def _num_params(abstract_params) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params)))


def _teacher_forced_eval(model, make_batches, mesh, rules, steps: int):
    """eval_fn(params, step) -> {"loss": token-weighted CE over the first `steps` batches of an eval stream}."""
    loss_sums = jax.jit(train.make_loss_fn(model))
    cached = []  # the eval batches are read once and kept, so each evaluation sees the same tokens

    def run(params, step):
        if not cached:
            batches = make_batches()
            cached.extend(next(batches) for _ in range(steps))
        total, weight = 0.0, 0.0
        with train.mesh_context(mesh, rules):
            for batch in cached:
                l, w = loss_sums(params, batch)
                total, weight = total + float(l), weight + float(w)
        return {"loss": total / max(weight, 1.0), "target_tokens": weight}
    return run


def finetune(*, model_dir: str, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
             train_steps: int | None = None, batch_size: int = 128, model_config=None, learning_rate: float = 2e-5,
             warmup_ratio: float = 0.03, schedule: str = "linear", weight_decay: float = 0.0,
             grad_clip: float | None = 1.0, microbatches: int = 1, checkpoint_period: int = 500,
             keep_checkpoints: int | None = 3, initial_checkpoint_path: str | None = None,
             mesh_layout: str = "data", mesh_shape=None, log_every: int = 10, seed: int = 0,
             use_cached_tasks: bool = False, eval_fn: Callable | None = None, eval_every: int | None = None,
             eval_at_start: bool = False, operative_config: str | None = None, num_epochs: float = 2.0,
             split: str = "train", pack: bool = True, shuffle: bool = True, on_nonfinite: str = "stop",
             async_checkpoints: bool = True, attention_backend: str | None = None, remat_policy: str | None = None,
             eval_mixture_or_task_name: str | None = None, eval_split: str = "validation", eval_batches: int = 4,
             decode_eval_mixture_or_task_name: str | None = None, decode_eval_max_examples: int | None = 16,
             decode_eval_max_new_tokens: int = 256, data_source: str = "seqio", tensorboard: bool = True) -> dict:
    """Finetune a Llama on a SeqIO mixture; resumes from MODEL_DIR's latest checkpoint. Returns a summary dict."""
    from sciriff_jax import partitioning
    from sciriff_jax.model.llama import Llama, init_params, param_shapes

    distributed.maybe_initialize()
    t_start = time.time()
    model_dir = str(paths.resolve(model_dir))  # a local directory or a URL such as gs://bucket/run
    is_main = jax.process_index() == 0
    config = resolve_model_config(model_config, initial_checkpoint_path, attention_backend=attention_backend,
                                  remat_policy=remat_policy)
    length = int(dict(task_feature_lengths)["targets"])

    mesh = partitioning.make_mesh(mesh_layout, mesh_shape)
    rules = partitioning.logical_rules(mesh_layout)
    psh = partitioning.param_shardings(config, mesh, mesh_layout)
    bsh = partitioning.batch_sharding(mesh, mesh_layout)
    model = Llama(config, mesh=mesh)
    dp = math.prod(mesh.shape[a] for a in partitioning.BATCH_AXES)
    if batch_size % (microbatches * dp) and is_main:
        print(f"[sciriff-jax] WARNING: BATCH_SIZE={batch_size} / MICROBATCHES={microbatches} rows per forward pass "
              f"do not split evenly over the {dp} data-parallel devices; XLA will replicate work. Use a multiple.",
              flush=True)

    if data_source == "seqio":
        batches = data.seqio_batches(mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths,
                                     global_batch_size=batch_size, sharding=bsh, split=split, seed=seed,
                                     shuffle=shuffle, pack=pack, use_cached_tasks=use_cached_tasks)
    elif data_source == "synthetic":
        batches = data.synthetic_batches(sharding=bsh, global_batch_size=batch_size, length=length,
                                         vocab_size=config.vocab_size, seed=seed)
    else:
        raise ValueError(f"finetune.data_source={data_source!r}; choose 'seqio' or 'synthetic'.")

    if train_steps is None:
        per_epoch = data.steps_per_epoch(mixture_or_task_name=mixture_or_task_name,
                                         task_feature_lengths=task_feature_lengths, global_batch_size=batch_size,
                                         split=split, pack=pack, use_cached_tasks=use_cached_tasks)
        train_steps = max(int(math.ceil(num_epochs * per_epoch)), 1)
        if is_main:
            print(f"[sciriff-jax] TRAIN_STEPS not set: {num_epochs} epochs x {per_epoch} batches = {train_steps} steps",
                  flush=True)

    tx, sched = optim.make_optimizer(learning_rate, train_steps, warmup_ratio=warmup_ratio, schedule=schedule,
                                     weight_decay=weight_decay, grad_clip=grad_clip)
    shapes = param_shapes(config)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, psh)
    osh = train.opt_state_shardings(tx, abstract, mesh=mesh)
    ckpt = checkpoint.TrainCheckpointer(model_dir, period=checkpoint_period, keep=keep_checkpoints, config=config,
                                        async_save=async_checkpoints)

    start_step = 0
    try:
        restored = ckpt.restore_latest(shapes, jax.eval_shape(tx.init, shapes), psh, osh)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"MODEL_DIR={model_dir} holds checkpoint step {ckpt.latest_step()} that does not fit this run's model or "
            f"optimizer ({type(err).__name__}: {str(err)[:300]}). Use a new MODEL_DIR, or the gin config that wrote it."
        ) from err
    if restored is not None:
        start_step, params, opt_state, train_state = restored
        batches.restore(train_state)
        if is_main:
            print(f"[sciriff-jax] resumed from {ckpt.directory}/{start_step} (input position "
                  f"{train_state.get('batches_consumed')} batches)", flush=True)
    else:
        if initial_checkpoint_path:
            params, _ = checkpoint.load_params(initial_checkpoint_path, shardings=psh)
            source = f"INITIAL_CHECKPOINT_PATH={initial_checkpoint_path}"
        else:
            params = jax.jit(init_params, static_argnums=0, out_shardings=psh)(config, jax.random.PRNGKey(seed))
            source = f"random init (seed {seed}); set INITIAL_CHECKPOINT_PATH to finetune a pretrained model"
        opt_state = jax.jit(tx.init, out_shardings=osh)(params)
        if is_main:
            print(f"[sciriff-jax] starting from {source}", flush=True)

    n_params = _num_params(shapes)
    if is_main:
        print(f"[sciriff-jax] {n_params / 1e6:.2f}M params, mesh {dict(mesh.shape)} ({mesh_layout}), global batch "
              f"{batch_size} x {length} tokens, {microbatches} microbatch(es), steps {start_step}->{train_steps}",
              flush=True)
    logging_utils.save_operative_config(model_dir, operative_config)
    logger = logging_utils.RunLogger(
        model_dir, total_steps=train_steps, start_step=start_step, tokens_per_step=batch_size * length,
        flops_per_token=logging_utils.llama_flops_per_token(n_params, config.num_layers, config.hidden_size, length),
        log_every=log_every, tensorboard=tensorboard)

    hooks = []
    if eval_mixture_or_task_name:
        def eval_stream():
            return data.seqio_batches(mixture_or_task_name=eval_mixture_or_task_name,
                                      task_feature_lengths=task_feature_lengths, global_batch_size=batch_size,
                                      sharding=bsh, split=eval_split, seed=seed, shuffle=False, pack=pack,
                                      use_cached_tasks=use_cached_tasks)
        hooks.append(_teacher_forced_eval(model, eval_stream, mesh, rules, eval_batches))
    if decode_eval_mixture_or_task_name:
        from sciriff_jax import evaluate  # lazy: decoding metrics need seqio_tasks
        from seqio_tasks import vocab as vocab_lib

        hooks.append(evaluate.make_eval_hook(
            decode_eval_mixture_or_task_name, config=config, vocabulary=vocab_lib.get_vocabulary(), mesh=mesh,
            max_examples=decode_eval_max_examples, max_new_tokens=decode_eval_max_new_tokens,
            output_dir=paths.resolve(model_dir) / "eval"))
    if eval_fn is not None:
        hooks.append(eval_fn)

    def run_evals(params, step):
        out = {}
        for hook in hooks:
            out.update(hook(params, step))
        return out

    step_fn = train.make_train_step(model, tx, microbatches=microbatches, mesh=mesh, rules=rules,
                                    param_shardings=psh, opt_shardings=osh, batch_sharding=bsh)
    step_fn = _check_vocab(step_fn, config.vocab_size)
    try:
        with checkpoint.PreemptionGuard() as guard:
            result = train.train_loop(
                step_fn=step_fn, params=params, opt_state=opt_state, batches=batches, train_steps=train_steps,
                start_step=start_step, schedule=sched, checkpointer=ckpt, logger=logger,
                eval_fn=run_evals if hooks else None, eval_every=eval_every, eval_at_start=eval_at_start,
                on_nonfinite=on_nonfinite, preemption=guard)
    finally:
        logger.close()
        ckpt.close()
    summary = {k: v for k, v in result.items() if k not in ("params", "opt_state")}
    summary.update(model_dir=model_dir, train_steps=train_steps, seconds_total=time.time() - t_start,
                   checkpoint=checkpoint.checkpoint_path_for_step(model_dir, result["final_step"]),
                   num_params=n_params)
    if is_main:
        if "first_loss" in summary:
            print(f"[sciriff-jax] done: steps {start_step}->{result['final_step']} in {result['seconds']:.1f}s, "
                  f"loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}; checkpoint {summary['checkpoint']}",
                  flush=True)
        (paths.resolve(model_dir) / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


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
