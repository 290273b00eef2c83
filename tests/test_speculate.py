"""Prompt-lookup speculative decoding gives plain greedy decoding's tokens exactly (random and copying models, real
SciRIFF prompts, one device and the 8-device mesh), ends rows where greedy does, and refuses what it cannot do."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sciriff_jax.decoding import batcher, speculate
from sciriff_jax.decoding.generate import GenerationConfig, generate
from sciriff_jax.model import Llama, LlamaConfig, init_params
from tests.conftest import SHARED_SCIRIFF

CONFIG = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     dtype="float32")
# The sample vocabulary's size: real SciRIFF text in its tokens.
REAL = LlamaConfig(vocab_size=1536, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   dtype="float32", max_position=4096)
SEP = 3          # between a text window and its copy in the copying model's training rows
WINDOW = 40      # tokens of real text the copying model learns to repeat


def _prompts(seed, lengths, vocab):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(1, vocab, size=n)] for n in lengths]


def _plain(config, params, prompts, max_new, **kw):
    return batcher.ContinuousBatcher(config, params, log=None, **kw).run(prompts, max_new)


def _speculative(config, params, prompts, max_new, k, **kw):
    b = speculate.SpeculativeBatcher(config, params, k=k, log=None, **kw)
    return b.run(prompts, max_new), b.speculation


@pytest.fixture(scope="module")
def params():
    # Scaled-up weights make the random model's greedy choices depend strongly on context (and fall into loops).
    return jax.tree.map(lambda x: x * 4.0, init_params(CONFIG, jax.random.PRNGKey(0)))


def test_drafts_follow_the_most_recent_occurrence_of_the_longest_ngram():
    history = jnp.asarray([[5, 6, 7, 9, 5, 6, 8, 1, 2, 5, 6, 0, 0, 0],     # 2-gram (5, 6): most recent at 4..5
                           [1, 2, 3, 4, 9, 2, 3, 7, 1, 2, 3, 0, 0, 0],     # 3-gram (1, 2, 3) beats a later (2, 3)
                           [4, 8, 4, 8, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0]], jnp.int32)  # a copy may run into the text
    length = jnp.asarray([10, 10, 5], jnp.int32)  # each row's last token is history[b, length[b]]
    got = np.asarray(speculate.draft(history, length, 3, ngram=3))
    assert got[0].tolist() == [8, 1, 2]
    assert got[1].tolist() == [4, 9, 2]
    assert got[2].tolist() == [4, 8, 0]  # (4, 8) at 2..3 -> 4, 8, then the unknown next position


def test_speculative_decoding_equals_plain_greedy_on_a_random_model(params):
    # 3 slots for 6 prompts: slots are reused, and a new row's history replaces the last one's.
    prompts = _prompts(0, (5, 1, 18, 2, 40, 70), CONFIG.vocab_size)
    want = _plain(CONFIG, params, prompts, [24] * 6, eos_id=-1, slots=3)
    for k in (1, 3, 8):
        got, stats = _speculative(CONFIG, params, prompts, [24] * 6, k, eos_id=-1, slots=3)
        assert got == want, k
        # Every token but the first (from prefill) came from a verify step, 1 to k + 1 per step.
        assert stats.tokens == [len(t) - 1 for t in want]
        assert all(s <= n <= s * (k + 1) for s, n in zip(stats.steps, stats.tokens))


def test_sampling_and_logprobs_are_refused_with_the_setting_to_change(params):
    with pytest.raises(ValueError, match="SPECULATE=4 .*TEMPERATURE=0.7; set TEMPERATURE = 0.0 or SPECULATE = 0"):
        speculate.SpeculativeBatcher(CONFIG, params, k=4, eos_id=-1, sampling=batcher.Sampling(0.7), log=None)
    with pytest.raises(ValueError, match="log-probabilities .* set SPECULATE = 0"):
        speculate.SpeculativeBatcher(CONFIG, params, k=4, eos_id=-1, log=None).run([[1, 2]], [3], logprobs=True)
    with pytest.raises(ValueError, match="SPECULATE=0 .* >= 1"):
        speculate.SpeculativeBatcher(CONFIG, params, k=0, eos_id=-1, log=None)
