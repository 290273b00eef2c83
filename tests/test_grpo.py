"""GRPO: the sampler's log-probabilities equal the training forward's (so the first ratio is exactly 1), the
objective and its aggregation variants, group advantages, and one update on every layout of the fake 8-device mesh."""
import dataclasses

import jax
import numpy as np
import pytest

from sciriff_jax.decoding import batcher
from sciriff_jax.model import Llama, LlamaConfig, init_params
from sciriff_jax.parallel.sharding import LAYOUTS, MeshConfig
from sciriff_jax.train import grpo, rollout, setup
from sciriff_jax.train.optim import OptimizerConfig

CONFIG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     dtype="float32", max_position=256)
PROMPTS = [(3, 17, 9, 22, 5), (8,), (4, 4, 30, 12, 19, 2, 7, 41, 33, 6, 10, 28, 15, 11, 13, 9, 9, 21), (12, 40)]
EOS = 1


class _Format:
    """The two things the rollout reads from a ChatFormat: EOS and decoding ids to text."""

    eos_id = EOS

    @staticmethod
    def decode(ids):
        return " ".join(str(i) for i in ids)


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.PRNGKey(0))


def _prompts():
    return [rollout.Prompt("t", "token_f1", "1 2 3", p) for p in PROMPTS]


def _rows(samples, prompts, group):
    adv = rollout.advantages(np.arange(len(samples.responses), dtype=np.float32), group)
    w = rollout.token_weights(np.array([len(r) for r in samples.responses]), "sequence", 24)
    return rollout.training_rows(samples, prompts, adv, w, rollout.row_length(samples, prompts, CONFIG.max_position))


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampled_logprobs_equal_the_training_forward(params, temperature, top_p):
    prompts = _prompts()
    samples = rollout.sample_answers(CONFIG, params, prompts, 3, sampling=batcher.Sampling(temperature, top_p),
                                     max_new_tokens=24, chat_format=_Format, rng=jax.random.PRNGKey(1), slots=5)
    assert samples.tokens > 3 * len(prompts)
    rows = _rows(samples, prompts, 3)
    recomputed = np.asarray(grpo.policy_logprobs(Llama(CONFIG), {"params": params}, rows, temperature))
    mask = rows["mask"] > 0
    assert mask.sum() == samples.tokens
    np.testing.assert_allclose(recomputed[mask], rows["old_logprobs"][mask], atol=1e-4, rtol=0)
    assert np.all(rows["old_logprobs"][mask] < 0)


def test_logprobs_leave_the_drawn_tokens_unchanged(params):
    prompts = [list(p) for p in PROMPTS]
    for sampling in (batcher.Sampling(), batcher.Sampling(0.8, 0.95)):
        runs = []
        for logprobs in (False, True):
            b = batcher.ContinuousBatcher(CONFIG, params, eos_id=EOS, slots=3, sampling=sampling, log=None)
            runs.append(b.run(prompts, [10] * len(prompts), rng=jax.random.PRNGKey(3), logprobs=logprobs))
            if logprobs:  # one more than the tokens where EOS ended the answer (EOS's own)
                assert all(len(lp) in (len(t), len(t) + 1) for lp, t in zip(b.logprobs, runs[-1]))
            else:
                assert b.logprobs is None
        assert runs[0] == runs[1]


def test_group_advantages_and_aggregations():
    adv = rollout.advantages(np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5]), 2)
    np.testing.assert_allclose(adv, [1, -1, -1, 1, 0, 0], atol=1e-5)
    np.testing.assert_allclose(rollout.advantages(np.array([1.0, 0.0]), 2, scale=False), [0.5, -0.5])
    lengths = np.array([2, 4])
    np.testing.assert_allclose(rollout.token_weights(lengths, "sequence", 8), [1 / 4, 1 / 8])
    np.testing.assert_allclose(rollout.token_weights(lengths, "token", 8), [1 / 6, 1 / 6])
    np.testing.assert_allclose(rollout.token_weights(lengths, "constant", 8), [1 / 16, 1 / 16])
    with pytest.raises(ValueError, match="LOSS_AGGREGATION"):
        rollout.token_weights(lengths, "mean", 8)


def test_stream_is_seeded_endless_and_resumable():
    prompts = [rollout.Prompt("t", "token_f1", str(i), (i + 2,)) for i in range(5)]
    a = rollout.PromptStream(prompts, seed=3)
    first = a.take(7) + a.take(6)
    b = rollout.PromptStream(prompts, seed=3)
    b.take(7)
    c = rollout.PromptStream(prompts, seed=3)
    c.restore(b.state())
    assert c.take(6) == first[7:]
    assert sorted(p.reference for p in first[:5]) == [str(i) for i in range(5)]  # a pass holds each prompt once
    assert [p.reference for p in first[:5]] != [p.reference for p in first[5:10]]


def _one_update(layout, params_host, rows=None, kl_coef=0.1, devices=None):
    """One GRPO update on `layout` (over `devices`, default all 8): samples (unless `rows` are given), one step."""
    run_setup = setup.build(CONFIG, mesh=MeshConfig(layout), devices=devices, train_steps=4,
                            optimizer=OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0))
    sharding = run_setup.sharding
    params = jax.device_put(params_host, sharding.params)
    opt_state = jax.jit(run_setup.tx.init, out_shardings=sharding.opt_state)(params)
    g = grpo.GRPOConfig("t", prompts_per_update=4, samples_per_prompt=2, max_new_tokens=16, kl_coef=kl_coef)
    step_fn = grpo.make_grpo_step(run_setup.model, run_setup.tx, g, sharding=sharding)
    if rows is None:
        prompts = _prompts()
        samples = rollout.sample_answers(CONFIG, params, prompts, 2, sampling=g.sampling, max_new_tokens=16,
                                         chat_format=_Format, rng=jax.random.PRNGKey(5), slots=8, sharding=sharding)
        rows = _rows(samples, prompts, 2)
    ref = jax.tree.map(lambda x: x.copy(), params) if kl_coef else None
    with sharding.context():
        new, _, m = step_fn(params, opt_state, jax.device_put(rows, sharding.batch), ref)
    return rows, {k: float(v) for k, v in m.items()}, jax.device_get(new)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_update_on_every_layout_matches_one_device(params, layout):
    """Sampling and the update run under each layout of the fake 8-device mesh; the sampled log-probabilities are
    the policy's there too (ratio 1, nothing clipped, KL 0 against the same weights), and the update equals the
    one-device update of the same rows."""
    host = jax.device_get(params)
    rows, m, new = _one_update(layout, host)
    assert m["finite"] == 1.0 and m["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert m["clip_fraction"] == 0.0 and m["kl"] == pytest.approx(0.0, abs=1e-6) and m["grad_norm"] > 0
    _, one_m, one_new = _one_update("data", host, rows=rows, devices=jax.devices()[:1])
    assert m["loss"] == pytest.approx(one_m["loss"], abs=1e-5)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(one_new)):
        np.testing.assert_allclose(a, b, atol=5e-5)


def test_loss_is_the_clipped_objective_by_hand(params):
    """Sampled log-probabilities 0.5 below the policy's (ratio e^0.5, clip 0.2): a positive advantage is clipped at
    1.2, a negative one keeps the ratio; weights 1/4 per token, the masked token left out."""
    g = grpo.GRPOConfig("t", clip_eps=0.2, temperature=0.7)
    tokens = np.array([[3, 17, 9], [8, 4, 30]], np.int32)
    rows = {"inputs": tokens, "segment_ids": np.ones_like(tokens), "positions": np.tile(np.arange(3), (2, 1)),
            "targets": np.roll(tokens, -1, axis=1), "mask": np.array([[1, 1, 0], [1, 0, 0]], np.float32),
            "advantages": np.array([[1, 1, 1], [-1, -1, -1]], np.float32), "weights": np.full((2, 3), 0.25, np.float32)}
    lp = np.asarray(grpo.policy_logprobs(Llama(CONFIG), {"params": params}, rows, 0.7))
    rows["old_logprobs"] = lp - 0.5
    loss, stats = grpo.grpo_loss({"params": params}, rows, None, model=Llama(CONFIG), grpo=g)
    assert float(loss) == pytest.approx(0.25 * (-1.2 - 1.2 + np.exp(0.5)), abs=1e-5)
    assert float(stats["clipped"]) == 2.0 and float(stats["tokens"]) == 3.0
    ref = lp + 0.1  # k3 KL: e^0.1 - 0.1 - 1 per token
    loss_kl, stats = grpo.grpo_loss({"params": params}, rows, ref, model=Llama(CONFIG), grpo=dataclasses.replace(g, kl_coef=0.5))
    k3 = np.exp(0.1) - 0.1 - 1
    assert float(stats["kl"]) == pytest.approx(3 * k3, abs=1e-5)
    assert float(loss_kl) == pytest.approx(float(loss) + 0.25 * 0.5 * 3 * k3, abs=1e-5)


def test_lora_policy_samples_with_its_adapters_and_the_base_is_the_reference(params):
    """A LoRA policy (adapters beside the frozen base, never merged): the sampler's log-probabilities equal the LoRA
    training forward's, differ from the base's, and one LoRA GRPO step updates the adapters only, with the KL
    measured against the base without adapters (the same arrays)."""
    import optax

    from sciriff_jax.model import lora as lora_lib
    from sciriff_jax.model.llama import param_shapes

    lora = lora_lib.LoraConfig(rank=4, alpha=8.0)
    adapters = lora_lib.init_adapters(param_shapes(CONFIG), lora, jax.random.PRNGKey(7))
    adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(8), x.shape), adapters)  # B != 0
    variables = lora_lib.with_adapters(params, adapters)
    prompts = _prompts()
    samples = rollout.sample_answers(CONFIG, rollout.LoraPolicy(variables, lora), prompts, 2,
                                     sampling=batcher.Sampling(1.0), max_new_tokens=12, chat_format=_Format,
                                     rng=jax.random.PRNGKey(2), slots=8)
    rows = _rows(samples, prompts, 2)
    mask = rows["mask"] > 0
    model = Llama(CONFIG, lora=lora)
    np.testing.assert_allclose(np.asarray(grpo.policy_logprobs(model, variables, rows, 1.0))[mask],
                               rows["old_logprobs"][mask], atol=1e-4, rtol=0)
    base_lp = np.asarray(grpo.policy_logprobs(model, {"params": params}, rows, 1.0))[mask]
    assert np.max(np.abs(base_lp - rows["old_logprobs"][mask])) > 1e-3  # the adapters changed the policy
    g = grpo.GRPOConfig("t", prompts_per_update=4, samples_per_prompt=2, max_new_tokens=12, kl_coef=0.1)
    tx = optax.adam(1e-2)
    step = grpo.make_grpo_step(model, tx, g, lora=True)
    before = jax.device_get(adapters)  # the step donates its inputs
    new, _, m = step(adapters, tx.init(adapters), rows, params)
    assert float(m["ratio_mean"]) == pytest.approx(1.0, abs=1e-4) and float(m["kl"]) > 0
    assert jax.tree.structure(new) == jax.tree.structure(before)
    assert any(np.max(np.abs(np.asarray(a) - b)) > 0 for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(before)))
