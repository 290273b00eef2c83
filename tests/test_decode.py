"""KV-cache generation equals recomputing the full forward each step; EOS, stop sequences and sampling behave."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sciriff_jax.eval.decode import bucket_length, generate
from sciriff_jax.model import Llama, LlamaConfig, init_params

CONFIG = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     dtype="float32")
PROMPTS = [[3, 17, 9, 22, 5], [8], [4, 4, 30, 12, 19, 2, 7, 41, 33, 6, 10, 28, 15, 11, 13, 9, 9, 21], [12, 40]]


@pytest.fixture(scope="module")
def params():
    # Scaled-up weights make the random model's greedy choices depend strongly on context.
    return jax.tree.map(lambda x: x * 4.0, init_params(CONFIG, jax.random.PRNGKey(0)))


def greedy_by_recomputation(params, prompt, steps, width=32):
    """Reference: run the whole sequence through the model for every new token (no cache)."""
    forward = jax.jit(lambda p, t: Llama(CONFIG).apply({"params": p}, t))
    seq = list(prompt)
    for _ in range(steps):
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :len(seq)] = seq  # right padding is invisible to causal attention
        seq.append(int(np.argmax(forward(params, tokens)[0, len(seq) - 1])))
    return seq[len(prompt):]


def test_greedy_kv_cache_equals_full_recomputation(params):
    # batch_size 3 over 4 prompts: two batches, left padding of different amounts within a batch.
    got = generate(CONFIG, params, PROMPTS, max_new_tokens=6, eos_id=-1, batch_size=3)
    want = [greedy_by_recomputation(params, p, 6) for p in PROMPTS]
    assert got == want


def test_generation_on_an_8_device_mesh_matches_one_device(params):
    from sciriff_jax.parallel.sharding import MeshConfig, Sharding

    sharding = Sharding.create(CONFIG, MeshConfig("fsdp_tp"))
    sharded = jax.device_put(params, sharding.params)
    want = generate(CONFIG, params, PROMPTS, max_new_tokens=4, eos_id=-1)
    assert generate(CONFIG, sharded, PROMPTS, max_new_tokens=4, eos_id=-1, sharding=sharding) == want


def test_generation_stops_at_eos_and_leaves_it_out(params):
    free = generate(CONFIG, params, PROMPTS[:1], max_new_tokens=6, eos_id=-1)[0]
    eos = free[2]
    first = free.index(eos)
    got = generate(CONFIG, params, PROMPTS[:1], max_new_tokens=6, eos_id=eos)[0]
    assert got == free[:first]


def test_generation_stops_at_a_stop_sequence_and_leaves_it_out(params):
    free = generate(CONFIG, params, PROMPTS[:2], max_new_tokens=6, eos_id=-1)
    stop = free[0][2:4]
    got = generate(CONFIG, params, PROMPTS[:2], max_new_tokens=6, eos_id=-1, stop_sequences=[stop])
    cut = min(j for j in range(len(free[0]) - 1) if free[0][j:j + 2] == stop)
    assert got[0] == free[0][:cut]
    assert stop not in [got[1][j:j + 2] for j in range(len(got[1]) - 1)]


def test_tiny_top_p_sampling_is_greedy_and_sampling_follows_the_rng(params):
    greedy = generate(CONFIG, params, PROMPTS, max_new_tokens=4, eos_id=-1)
    nucleus = generate(CONFIG, params, PROMPTS, max_new_tokens=4, eos_id=-1, temperature=1.0, top_p=1e-6,
                       rng=jax.random.PRNGKey(3))
    assert nucleus == greedy
    a = generate(CONFIG, params, PROMPTS, max_new_tokens=4, eos_id=-1, temperature=1.5, rng=jax.random.PRNGKey(1))
    b = generate(CONFIG, params, PROMPTS, max_new_tokens=4, eos_id=-1, temperature=1.5, rng=jax.random.PRNGKey(1))
    assert a == b


def test_prompt_buckets_are_powers_of_two_and_bad_arguments_are_refused(params):
    assert [bucket_length(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(CONFIG, params, PROMPTS, max_new_tokens=2000, eos_id=1)
    with pytest.raises(ValueError, match="empty prompt"):
        generate(CONFIG, params, [[]], max_new_tokens=2, eos_id=1)
