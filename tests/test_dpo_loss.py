"""DPO / SimPO losses: by hand from transformers' log-probabilities of the same weights; ln 2 at step 0."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sciriff_jax.io.hf import load_hf_params  # noqa: E402
from sciriff_jax.model import Llama  # noqa: E402
from sciriff_jax.train.dpo_loss import (DPOConfig, make_logprob_fn, make_preference_loss,  # noqa: E402
                                        make_preference_step)

# Two pairs: rows 0/1 are pair 0's chosen/rejected, rows 2/3 pair 1's. A shared prompt, answers of other lengths.
PROMPT = [1, 17, 33, 5]
ANSWERS = [[40, 41, 2], [50, 2], [60, 61, 62, 2], [70, 71, 2]]
LENGTH = 10


def pair_batch():
    rows = {k: [] for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                            "decoder_segment_ids", "decoder_positions")}
    for answer in ANSWERS:
        ids = PROMPT + answer  # the batch contract: inputs are a document's tokens but the last, targets but the first
        n = len(ids) - 1
        pad = LENGTH - n
        inputs, targets = ids[:-1] + [0] * pad, ids[1:] + [0] * pad
        weights = [0] * (len(PROMPT) - 1) + [1] * len(answer) + [0] * pad
        for k, v in zip(rows, (inputs, targets, weights, [1] * n + [0] * pad, list(range(n)) + [0] * pad)):
            rows[k].append(v)
    return {k: np.asarray(v, np.int32) for k, v in rows.items()}


def hf_model(seed):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rms_norm_eps=1e-6, initializer_range=0.2)
    return transformers.LlamaForCausalLM(config).eval()


def torch_row_logps(model, batch):
    """Per row: sum of log p(answer token) and the answer's token count, from transformers on the unpadded ids."""
    logps, counts = [], []
    for answer in ANSWERS:
        ids = torch.tensor([PROMPT + answer])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits.double(), -1)[0]
        n = len(answer)
        tail = [logp[len(PROMPT) - 1 + j, answer[j]].item() for j in range(n)]
        logps.append(sum(tail))
        counts.append(n)
    return np.array(logps), np.array(counts, float)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for name, seed in (("policy", 0), ("reference", 1)):
        model = hf_model(seed)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        params, config = load_hf_params(path)
        out[name] = (model, params, config)
    return out


def logsigmoid(x):
    return -np.log1p(np.exp(-x))


def test_dpo_loss_equals_the_loss_by_hand_from_transformers_logprobs(models):
    policy, params, config = models["policy"]
    reference, ref_params, _ = models["reference"]
    batch = pair_batch()
    pi, _ = torch_row_logps(policy, batch)
    ref, _ = torch_row_logps(reference, batch)
    beta = 0.3
    want = -np.mean(logsigmoid(beta * ((pi[0::2] - ref[0::2]) - (pi[1::2] - ref[1::2]))))
    logps = make_logprob_fn(Llama(config))
    loss_sums = make_preference_loss(DPOConfig(beta=beta), lambda p, r, b: logps(p, b), lambda p, r, b: logps(r, b))
    total, (sums, tokens) = jax.jit(loss_sums)(params, ref_params, batch)
    assert abs(float(total) / 2 - want) < 1e-5 * max(1.0, abs(want)), (float(total) / 2, want)
    assert float(tokens) == sum(map(len, ANSWERS))
    margins = beta * ((pi[0::2] - ref[0::2]) - (pi[1::2] - ref[1::2]))
    np.testing.assert_allclose(float(sums["rewards/margins"]), margins.sum(), rtol=1e-5, atol=1e-5)
    assert float(sums["rewards/accuracy"]) == float((margins > 0).sum())


def test_simpo_loss_equals_the_loss_by_hand_without_a_reference(models):
    policy, params, config = models["policy"]
    batch = pair_batch()
    pi, n = torch_row_logps(policy, batch)
    beta, ratio = 2.0, 0.5
    want = -np.mean(logsigmoid(beta * (pi[0::2] / n[0::2] - pi[1::2] / n[1::2]) - beta * ratio))
    logps = make_logprob_fn(Llama(config))
    loss_sums = make_preference_loss(DPOConfig("simpo", beta, ratio), lambda p, r, b: logps(p, b))
    total, _ = jax.jit(loss_sums)(params, None, batch)
    assert abs(float(total) / 2 - want) < 1e-5 * max(1.0, abs(want)), (float(total) / 2, want)


def _step(config, microbatches):
    logps = make_logprob_fn(Llama(config))
    loss_sums = make_preference_loss(DPOConfig(beta=0.1), lambda p, r, b: logps(p, b), lambda p, r, b: logps(r, b))
    return make_preference_step(loss_sums, optax.sgd(1e-2), microbatches=microbatches, donate=False)


def test_first_step_with_the_policy_as_reference_has_loss_ln2_and_then_learns(models):
    _, params, config = models["policy"]
    reference = jax.tree.map(jnp.copy, params)
    step = _step(config, 1)
    batch = pair_batch()
    params1, opt, metrics = step(params, optax.sgd(1e-2).init(params), batch, reference)
    assert abs(float(metrics["loss"]) - math.log(2)) < 1e-6
    assert float(metrics["rewards/margins"]) == 0.0 and float(metrics["rewards/accuracy"]) == 0.0
    assert bool(metrics["finite"]) and float(metrics["grad_norm"]) > 0
    _, _, after = step(params1, opt, batch, reference)
    assert float(after["loss"]) < math.log(2) and float(after["rewards/accuracy"]) > 0


def test_microbatched_step_equals_the_one_pass_step(models):
    _, params, config = models["policy"]
    _, ref_params, _ = models["reference"]
    batch = pair_batch()
    opt = optax.sgd(1e-2).init(params)
    one = _step(config, 1)(params, opt, batch, ref_params)
    two = _step(config, 2)(params, opt, batch, ref_params)
    for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "grad_norm"):
        np.testing.assert_allclose(float(two[2][k]), float(one[2][k]), rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), two[0], one[0])
