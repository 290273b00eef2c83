"""GRPO with SciRIFF's verifiable rewards: rollouts on our own continuous batcher, updates on the same params.

Per update: B prompts from the RL task or mixture (rendered as SFT renders a user turn), G answers each sampled from
the current policy (temperature, top-p, max new tokens) by `decoding.batcher` reading the training params
directly; each answer's reward is its task's SciRIFF-Eval metric on that instance (`scoring.rewards`), advantages
are normalised within each prompt's group, and `inner_steps` optimizer steps minimise the clipped policy-gradient
objective over the answer tokens only,

    per token: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A) + kl_coef * KL_k3(policy || reference),

with ratio = exp(log p_now - log p_sampled), aggregated per answer then per batch (GRPO), over all tokens (DAPO), or
over rows x max_new_tokens (Dr.GRPO). The sampler's log-probabilities are the old policy's: equal (fp32, 1e-4) to
what the training forward recomputes (tests/test_grpo.py), so the first inner step's ratio is exactly 1. The
reference of the KL term is the starting params (a frozen copy; only when kl_coef > 0). Checkpoints hold the
policy, the optimizer and the prompt stream's position; each update's sampling key depends only on the seed and
the step, so a resumed run repeats an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sciriff_jax.data.batches import DataConfig
from sciriff_jax.decoding.batcher import Sampling
from sciriff_jax.eval.protocol import Protocol
from sciriff_jax.eval.progress import format_duration
from sciriff_jax.io import checkpoint, loader, paths
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model import lora as lora_lib
from sciriff_jax.model.llama import init_params
from sciriff_jax.parallel import distributed
from sciriff_jax.parallel.sharding import MeshConfig
from sciriff_jax.scoring import judge as judge_lib
from sciriff_jax.scoring import rewards
from sciriff_jax.train import dpo, finetune, losses, loop, rollout, run_log, setup
from sciriff_jax.train.optim import OptimizerConfig
from sciriff_jax.train.preemption import PreemptionGuard
from sciriff_jax.train.step import _split_microbatches, guarded_update

AGGREGATIONS = ("sequence", "token", "constant")
ROW_KEYS = ("inputs", "positions", "segment_ids", "targets", "mask", "old_logprobs", "advantages", "weights")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """What GRPO samples and how it updates (gin: `GRPOConfig.*`, runs/grpo.gin's macros)."""

    mixture_or_task_name: str
    split: str = "train"
    max_examples: int | None = dataclasses.field(default=None, metadata={"min": 1})  # prompts per task; None: all
    prompts_per_update: int = dataclasses.field(default=8, metadata={"min": 1})      # B
    samples_per_prompt: int = dataclasses.field(default=4, metadata={"min": 2})      # G
    temperature: float = dataclasses.field(default=1.0, metadata={"min": 0, "above": True})
    top_p: float = dataclasses.field(default=1.0, metadata={"min": 0, "above": True})
    max_new_tokens: int = dataclasses.field(default=256, metadata={"min": 1})
    rollout_batch_size: int = dataclasses.field(default=32, metadata={"min": 1})     # batcher slots
    inner_steps: int = dataclasses.field(default=1, metadata={"min": 1})             # optimizer steps per rollout
    clip_eps: float = dataclasses.field(default=0.2, metadata={"min": 0, "above": True})
    clip_eps_high: float | None = None   # None: clip_eps (DAPO's clip-higher sets e.g. 0.28)
    kl_coef: float = dataclasses.field(default=0.0, metadata={"min": 0})
    loss_aggregation: str = dataclasses.field(default="sequence", metadata={"choices": AGGREGATIONS})
    scale_rewards: bool = True           # divide by the group's std (GRPO); False: Dr.GRPO
    format_reward_weight: float = dataclasses.field(default=0.0, metadata={"min": 0})
    # "metric": `sciriff-jax score` on the instance; "instance": SciFact's NEI instances scored too (scoring/rewards.py)
    reward_variant: str = dataclasses.field(default="metric", metadata={"choices": ("metric", "instance")})
    sampling_seed: int = dataclasses.field(default=0, metadata={"min": 0})

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p)

    @property
    def rows(self) -> int:
        return self.prompts_per_update * self.samples_per_prompt


# ----------------------------------------------------------------------------- the objective


def policy_logprobs(model, variables: dict, rows: dict, temperature: float):
    """[rows, length] float32 log-probability of each target under the model (`variables`: {"params": ...}, plus
    "lora" adapters for a LoRA model) at `temperature`, what the sampler computed for the tokens it drew
    (`decoding.batcher.token_logprobs`: log_softmax(logits / T)), through the chunked head of train/losses.py
    (never [rows, length, vocab] logits at once): logits / T = (hidden / T) @ head."""
    hidden = model.apply(variables, rows["inputs"], segment_ids=rows["segment_ids"], positions=rows["positions"],
                         return_hidden=True)
    if temperature > 0 and temperature != 1.0:
        hidden = hidden / jnp.asarray(temperature, hidden.dtype)
    return losses.token_logprobs(hidden, losses.output_head(variables["params"], model.config), rows["targets"])


def grpo_loss(variables: dict, rows: dict, ref_logprobs, *, model, grpo: GRPOConfig):
    """(sum over answer tokens of weight * (clipped PG + kl_coef * k3 KL), token sums of kl / clipped / entropy
    estimate / ratio for the metrics). `ref_logprobs`: the reference's, or None without a KL term."""
    lp = policy_logprobs(model, variables, rows, grpo.temperature)
    mask, adv = rows["mask"], rows["advantages"]
    ratio = jnp.exp(lp - rows["old_logprobs"])
    high = grpo.clip_eps if grpo.clip_eps_high is None else grpo.clip_eps_high
    unclipped, clipped = ratio * adv, jnp.clip(ratio, 1.0 - grpo.clip_eps, 1.0 + high) * adv
    per_token = -jnp.minimum(unclipped, clipped)
    kl = jnp.zeros_like(lp)
    if ref_logprobs is not None:
        d = ref_logprobs - lp
        kl = jnp.exp(d) - d - 1.0  # k3: unbiased, non-negative estimate of KL(policy || reference)
        per_token = per_token + grpo.kl_coef * kl
    loss = jnp.sum(rows["weights"] * per_token * mask)
    stats = {"kl": jnp.sum(kl * mask), "clipped": jnp.sum((clipped < unclipped) * mask),
             "neg_logprob": jnp.sum(-rows["old_logprobs"] * mask), "ratio": jnp.sum(ratio * mask),
             "tokens": jnp.sum(mask)}
    return loss, stats


def make_grpo_step(model, tx: optax.GradientTransformation, grpo: GRPOConfig, *, microbatches: int = 1,
                   sharding=None, lora: bool = False):
    """Jitted `step(trainable, opt_state, rows, frozen) -> (trainable, opt_state, metrics)`.

    Full-parameter: `trainable` are the params, `frozen` the KL reference's (None: no KL term). LoRA (`lora`, `model`
    a LoRA Llama): `trainable` are the adapters, `frozen` the base, and the reference is the base without adapters
    (the same arrays: no second copy). Microbatches accumulate the weighted token sums, which are already
    normalised over the whole update."""
    def ref_lps(frozen, rows):
        if frozen is None or not grpo.kl_coef:
            return None
        return jax.lax.stop_gradient(policy_logprobs(model, {"params": frozen}, rows, grpo.temperature))

    def loss_fn(trainable, rows, frozen):
        variables = lora_lib.with_adapters(frozen, trainable) if lora else {"params": trainable}
        return grpo_loss(variables, rows, ref_lps(frozen, rows), model=model, grpo=grpo)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params, opt_state, rows, ref_params):
        if microbatches == 1:
            (loss, stats), grads = grad_fn(params, rows, ref_params)
        else:
            def body(carry, mb):
                g_acc, l_acc, s_acc = carry
                (l, s), g = grad_fn(params, mb, ref_params)
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, jax.tree.map(jnp.add, s_acc, s)), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            stats0 = {k: jnp.zeros((), jnp.float32) for k in ("kl", "clipped", "neg_logprob", "ratio", "tokens")}
            init = (zeros, jnp.zeros((), jnp.float32), stats0)
            (grads, loss, stats), _ = jax.lax.scan(body, init, _split_microbatches(rows, microbatches))
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        new_params, new_opt, grad_norm, finite = guarded_update(tx, grads, opt_state, params, loss)
        n = jnp.maximum(stats["tokens"], 1.0)
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, "kl": stats["kl"] / n,
                   "clip_fraction": stats["clipped"] / n, "entropy": stats["neg_logprob"] / n,
                   "ratio_mean": stats["ratio"] / n, "target_tokens": stats["tokens"]}
        return new_params, new_opt, metrics

    kwargs = {}
    if sharding is not None:
        ref = sharding.base if lora else (sharding.params if grpo.kl_coef > 0 else None)  # None: no KL, no argument
        kwargs = dict(in_shardings=(sharding.params, sharding.opt_state, sharding.batch, ref),
                      out_shardings=(sharding.params, sharding.opt_state, None))
    return jax.jit(step, donate_argnums=(0, 1), **kwargs)


# ----------------------------------------------------------------------------- the run


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(f"[sciriff-jax] {message}", flush=True)


def load_prompts(name: str, grpo: GRPOConfig, chat_format, config: LlamaConfig, judge=None) -> list[rollout.Prompt]:
    """The RL prompts of every task of `name` that has a reward: its `grpo.split` examples rendered as SFT renders a
    user turn (eval's "train" protocol, no shots), as token ids. A task without a metric, or scored by the LM judge
    when no judge is configured, is left out and said so."""
    import seqio_tasks  # the data layer (TensorFlow): the prompts come from SeqIO tasks
    from seqio_tasks.sample import SAMPLE_SCORERS  # the data layer: the built-in sample's scorers

    protocol, prompts = Protocol("train"), []
    for task in seqio_tasks.task_names(name):
        try:
            scorer = rewards.check_rewardable(task, SAMPLE_SCORERS, judge)
        except ValueError as err:
            _log(f"GRPO: task {task} left out: {str(err).split(';')[0]}")
            continue
        examples = seqio_tasks.raw_examples(task, grpo.split, max_examples=grpo.max_examples)
        texts = protocol.prompts(examples, chat_format, 0, scorer)
        tokens = chat_format.encode_prompts(texts, add_bos=protocol.adds_bos, max_position=config.max_position,
                                            max_new_tokens=grpo.max_new_tokens, label=task)
        prompts += [rollout.Prompt(task, scorer, ex["output"], tuple(t)) for ex, t in zip(examples, tokens)]
        _log(f"GRPO: task {task}: {len(examples)} {grpo.split} prompts, reward = {scorer}")
    return prompts


def grpo(rl: GRPOConfig, train: finetune.TrainConfig, model: LlamaConfig | None = None,
         optimizer: OptimizerConfig = OptimizerConfig(), mesh: MeshConfig = MeshConfig(),
         lora: lora_lib.LoraConfig | None = None, *, operative_config: str | None = None) -> dict:
    """GRPO on `rl.mixture_or_task_name` for train.train_steps updates (each: one rollout, rl.inner_steps optimizer
    steps), from train.initial_checkpoint_path; resumes from MODEL_DIR. With `lora` (its rank set), adapters are
    trained over the frozen base, which is also the KL reference. Returns a summary (train_summary.json)."""
    distributed.maybe_initialize()
    lock = finetune.lock_model_dir(train)
    try:
        return _grpo(rl, train, model, optimizer, mesh, (operative_config, lora), lock)
    finally:
        if lock is not None:
            lock.release()


@dataclasses.dataclass
class _Run:
    """What the update loop reads: the settings, the model's setup, the format, the prompts, the frozen params (the
    KL reference's for full-parameter training, None without KL; the base for LoRA) and the LoRA config."""

    grpo: GRPOConfig
    train: finetune.TrainConfig
    setup: setup.TrainSetup
    chat_format: object
    stream: rollout.PromptStream
    step_fn: object
    frozen: object = None
    judge: object = None
    lora: object = None

    def policy(self, trainable):
        """What the sampler runs: the params, or the LoRA adapters beside the frozen base."""
        if self.lora is None:
            return trainable
        return rollout.LoraPolicy(lora_lib.with_adapters(self.frozen, trainable), self.lora)


def _grpo(grpo_config, train, model, optimizer, mesh, settings, lock) -> dict:
    t_start = time.time()
    operative_config, lora = settings
    lora = lora if lora is not None and lora.rank else None
    model_dir = str(paths.resolve(train.model_dir))
    if train.train_steps is None:
        raise setup.RunConfigError("GRPO needs TRAIN_STEPS (the number of rollout + update rounds); set "
                                   "--gin.TRAIN_STEPS=N")
    config = finetune.resolve_model_config(model, train)
    data = DataConfig(mixture_or_task_name=grpo_config.mixture_or_task_name)
    chat_format, data = finetune.run_chat_format(train, data, config, model_dir)
    if config.max_position and grpo_config.max_new_tokens >= config.max_position:
        raise setup.RunConfigError(f"MAX_NEW_TOKENS={grpo_config.max_new_tokens} leaves no room for a prompt in the "
                                   f"model's context of {config.max_position} tokens; set it below that")
    judge = judge_lib.judge_from_env()
    stream = rollout.PromptStream(load_prompts(data.mixture_or_task_name, grpo_config, chat_format, config, judge),
                                  train.seed)
    if lora is not None and lora.quantize:
        raise setup.RunConfigError("GRPO with a quantized base (LORA_QUANTIZE) is not supported yet: the sampler "
                                   "runs the float base; set LoraConfig.quantize = None")
    # LoRA: dpo's setup and start (adapters trained, the base loaded frozen and held apart: sharding.base).
    run_setup = dpo.build_setup(config, mesh, optimizer, train.train_steps * grpo_config.inner_steps,
                           train.microbatches, lora)
    _check_rows(grpo_config, train, run_setup)
    ckpt = checkpoint.TrainCheckpointer(model_dir, period=train.checkpoint_period, keep=train.keep_checkpoints,
                                        config=config, async_save=train.async_checkpoints,
                                        before_save=lock.check if lock is not None else None, log=_log)
    if lora is None:
        start_step, params, opt_state = finetune.start_or_resume(train, run_setup, ckpt, stream, model_dir)
        frozen = _reference(train, run_setup, params, start_step) if grpo_config.kl_coef > 0 else None
    else:
        start_step, params, opt_state, frozen = dpo.start_lora(train, run_setup, ckpt, stream, lora)
    step_fn = make_grpo_step(run_setup.model, run_setup.tx, grpo_config, microbatches=train.microbatches,
                             sharding=run_setup.sharding, lora=lora is not None)
    run = _Run(grpo_config, train, run_setup, chat_format, stream, step_fn, frozen, judge, lora)
    _log(f"GRPO: {run_setup.num_params / 1e6:.2f}M {'LoRA ' if lora else ''}params, mesh {dict(run_setup.sharding.mesh.shape)}, "
         f"{grpo_config.prompts_per_update} prompts x {grpo_config.samples_per_prompt} samples per update, "
         f"{grpo_config.inner_steps} optimizer step(s) each, updates {start_step}->{train.train_steps}")
    run_log.save_operative_config(model_dir, operative_config)
    logger = GRPOLogger(model_dir, total_steps=train.train_steps, start_step=start_step, tokens_per_step=0,
                        log_every=train.log_every, tensorboard=train.tensorboard)
    try:
        with PreemptionGuard() as guard:
            result = _updates(run, params, opt_state, start_step, ckpt, logger, guard)
    finally:
        try:
            logger.close()
        finally:
            ckpt.close()
    return _summarize(result, model_dir, train.train_steps, time.time() - t_start)


def _check_rows(rl: GRPOConfig, train, run_setup: setup.TrainSetup) -> None:
    """The B x G rows of an update must split evenly into microbatches over the data-parallel devices."""
    dp = run_setup.sharding.data_parallel
    if rl.rows % (train.microbatches * dp):
        raise setup.RunConfigError(
            f"PROMPTS_PER_UPDATE x SAMPLES_PER_PROMPT = {rl.rows} rows per update do not divide into MICROBATCHES="
            f"{train.microbatches} x {dp} data-parallel devices (mesh {dict(run_setup.sharding.mesh.shape)}); make "
            f"the product a multiple of {train.microbatches * dp}")


def _reference(train, run_setup: setup.TrainSetup, params, start_step: int):
    """The frozen reference of the KL term: the run's starting params (a copy; reloaded on a resume)."""
    if start_step == 0:
        return jax.tree.map(jnp.copy, params)
    if train.initial_checkpoint_path:
        return loader.load(train.initial_checkpoint_path, shardings=run_setup.sharding.params,
                           with_tokenizer=False).params
    return jax.jit(init_params, static_argnums=0, out_shardings=run_setup.sharding.params)(
        run_setup.config, jax.random.PRNGKey(train.seed))


def rollout_update(run: _Run, params, opt_state, step: int):
    """One GRPO update: sample, score, build the rows, `inner_steps` optimizer steps. Returns (params, opt_state,
    metrics as floats, whether every inner step was finite)."""
    g, prompts = run.grpo, run.stream.take(run.grpo.prompts_per_update)
    sharding = run.setup.sharding
    samples = rollout.sample_answers(run.setup.config, run.policy(params), prompts, g.samples_per_prompt, sampling=g.sampling,
                                     max_new_tokens=g.max_new_tokens, chat_format=run.chat_format,
                                     rng=rollout.rollout_key(g.sampling_seed, step), slots=g.rollout_batch_size,
                                     sharding=sharding)
    rollout.score_answers(samples, prompts, format_weight=g.format_reward_weight, judge=run.judge,
                          variant=g.reward_variant)
    adv = rollout.advantages(np.array([r.total for r in samples.rewards]), g.samples_per_prompt, scale=g.scale_rewards)
    weights = rollout.token_weights(np.array([len(r) for r in samples.responses]), g.loss_aggregation,
                                    g.max_new_tokens)
    rows = rollout.training_rows(samples, prompts, adv, weights,
                                 rollout.row_length(samples, prompts, run.setup.config.max_position))
    rows = jax.device_put(rows, sharding.batch)
    started, finite, first = time.time(), True, None
    with sharding.context():
        for _ in range(g.inner_steps):
            params, opt_state, m = run.step_fn(params, opt_state, rows, run.frozen)
            finite = finite and bool(m["finite"])
            first = first or {"ratio_first": float(m["ratio_mean"])}
    m = {k: float(v) for k, v in m.items()}
    train_s = time.time() - started
    real = float(np.sum(np.asarray(jax.device_get(rows["segment_ids"])))) * g.inner_steps
    metrics = {**rollout.reward_metrics(samples, prompts), "loss": m["loss"], "grad_norm": m["grad_norm"],
               "kl": m["kl"] if run.frozen is not None and g.kl_coef else None,  # no reference without a KL term
               "clip_fraction": m["clip_fraction"], "entropy": m["entropy"], **first,
               "rollout_tokens_per_s": samples.tokens / max(samples.seconds, 1e-9),
               "train_tokens_per_s": real / max(train_s, 1e-9), "rollout_s": samples.seconds, "train_s": train_s,
               "zero_advantage_groups": float(np.mean(np.all(adv.reshape(-1, g.samples_per_prompt) == 0, axis=1))),
               "learning_rate": float(run.setup.schedule(step * g.inner_steps - 1))}
    return params, opt_state, metrics, finite


def _updates(run: _Run, params, opt_state, start_step: int, ckpt, logger, guard) -> dict:
    summary = {"start_step": start_step, "steps": 0, "rewards": {}, "losses": {}, "skipped_steps": [],
               "rollout_seconds": 0.0, "train_seconds": 0.0}
    started, total, step = time.time(), run.train.train_steps, start_step
    for step in range(start_step + 1, total + 1):
        params, opt_state, metrics, finite = rollout_update(run, params, opt_state, step)
        if not finite:
            loop.handle_nonfinite(step, metrics, run.stream, ckpt, run.train.on_nonfinite)
            summary["skipped_steps"].append(step)
        summary["rewards"][step], summary["losses"][step] = metrics["reward_mean"], metrics["loss"]
        summary.setdefault("first_reward", metrics["reward_mean"])
        summary["last_reward"], summary["last_loss"] = metrics["reward_mean"], metrics["loss"]
        summary.setdefault("first_loss", metrics["loss"])
        summary["rollout_seconds"] += metrics["rollout_s"]
        summary["train_seconds"] += metrics["train_s"]
        summary["steps"] += 1
        logger.log_train(step, metrics)
        loop.checkpoint_step(step, params, opt_state, run.stream, ckpt, guard, last=step == total)
    ckpt.wait()
    summary.update(final_step=step, seconds=time.time() - started, params=params, opt_state=opt_state)
    return summary


def _summarize(result: dict, model_dir: str, train_steps: int, seconds: float) -> dict:
    summary = {k: v for k, v in result.items() if k not in ("params", "opt_state")}
    summary.update(model_dir=model_dir, train_steps=train_steps, seconds_total=seconds, trainer="grpo",
                   checkpoint=checkpoint.checkpoint_path_for_step(model_dir, result["final_step"]))
    if "first_reward" in summary:
        split = summary["rollout_seconds"] / max(summary["rollout_seconds"] + summary["train_seconds"], 1e-9)
        _log(f"GRPO done: updates {summary['start_step']}->{summary['final_step']} in {summary['seconds']:.1f}s, mean "
             f"reward {summary['first_reward']:.4f} -> {summary['last_reward']:.4f}; rollout {100 * split:.0f}% of "
             f"the time; checkpoint {summary['checkpoint']}")
    if jax.process_index() == 0:
        finetune.record_summary(paths.resolve(model_dir) / "train_summary.json", summary)
    return summary


class GRPOLogger(run_log.RunLogger):
    """RunLogger whose progress line reads like an RL run: reward, parse rate, KL, clip fraction, answer length,
    rollout and train tokens/s (metrics.jsonl and TensorBoard get every metric)."""

    def log_train(self, step: int, metrics: dict) -> None:
        if not (step % self.log_every == 0 or step == self.total_steps or step == self.start_step + 1):
            return
        now = time.time()
        steps, dt = step - self._last_step, max(now - self._last_t, 1e-9)
        self._write({"step": step, **{k: v for k, v in metrics.items() if v is not None},
                     "steps_per_s": steps / dt, "elapsed_s": now - self._t0})
        first = step == self.start_step + 1
        eta = "-- (first step compiles)" if first else format_duration(dt / max(steps, 1) * (self.total_steps - step))
        pct = int(100.0 * step / max(self.total_steps, 1) // 5)
        if self.is_writer:
            m = metrics
            kl = "-" if m.get("kl") is None else f"{m['kl']:.4f}"  # no reference without a KL term
            print(f"[{'#' * pct}{'.' * (20 - pct)}] step {step}/{self.total_steps} reward {m['reward_mean']:.4f} "
                  f"(std {m['reward_std']:.3f}, parse {m['parse_rate']:.2f}) kl {kl} clip "
                  f"{m['clip_fraction']:.3f} len {m['response_length_mean']:.0f} rollout "
                  f"{m['rollout_tokens_per_s']:,.0f} tok/s {m['rollout_s']:.1f}s train {m['train_tokens_per_s']:,.0f} "
                  f"tok/s {m['train_s']:.1f}s eta {eta}", flush=True)
        self._last_t, self._last_step = now, step
