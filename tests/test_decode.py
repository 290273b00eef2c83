"""Continuous-batching generation equals recomputing the full forward each step; EOS, stop sequences, sampling,
slot reuse, bounded compiled shapes and the KV-cache budget behave."""
import json

import jax
import numpy as np
import pytest

from sciriff_jax.decoding import batcher, kv_memory
from sciriff_jax.decoding.generate import GenerationConfig, generate
from sciriff_jax.model import Llama, LlamaConfig, init_params

CONFIG = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     dtype="float32")
PROMPTS = [[3, 17, 9, 22, 5], [8], [4, 4, 30, 12, 19, 2, 7, 41, 33, 6, 10, 28, 15, 11, 13, 9, 9, 21], [12, 40]]


@pytest.fixture(scope="module")
def params():
    # Scaled-up weights make the random model's greedy choices depend strongly on context.
    return jax.tree.map(lambda x: x * 4.0, init_params(CONFIG, jax.random.PRNGKey(0)))


def greedy_by_recomputation(config, params, prompt, steps):
    """Reference: run the whole sequence through the model for every new token (no cache)."""
    width = 32
    while width < len(prompt) + steps:
        width *= 2
    forward = jax.jit(lambda p, t: Llama(config).apply({"params": p}, t))
    seq = list(prompt)
    for _ in range(steps):
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :len(seq)] = seq  # right padding is invisible to causal attention
        seq.append(int(np.argmax(forward(params, tokens)[0, len(seq) - 1])))
    return seq[len(prompt):]


def test_greedy_paged_decoding_equals_full_recomputation(params):
    # 3 slots for 4 prompts: a finished row's slot takes the last prompt.
    got = generate(CONFIG, params, PROMPTS, GenerationConfig(6, -1), batch_size=3)
    assert got == [greedy_by_recomputation(CONFIG, params, p, 6) for p in PROMPTS]


def test_prompts_prefilled_together_decode_like_full_recomputation(params):
    # Several prompts per prefill call (what an accelerator does when many slots free at once).
    b = batcher.ContinuousBatcher(CONFIG, params, eos_id=-1, slots=4, log=None,
                                  layout=batcher.Layout(prefill_rows=(1, 4), chunk=8, chunk_step=4))
    assert b.run(PROMPTS, [6] * 4) == [greedy_by_recomputation(CONFIG, params, p, 6) for p in PROMPTS]
    assert b.work.prefill_calls < sum(-(-len(p) // 8) for p in PROMPTS)


def test_generation_on_an_8_device_mesh_matches_one_device(params):
    from sciriff_jax.parallel.sharding import MeshConfig, Sharding

    sharding = Sharding.create(CONFIG, MeshConfig("fsdp_tp"))
    sharded = jax.device_put(params, sharding.params)
    want = generate(CONFIG, params, PROMPTS, GenerationConfig(4, -1))
    assert generate(CONFIG, sharded, PROMPTS, GenerationConfig(4, -1), sharding=sharding) == want


@pytest.fixture(scope="module")
def sciriff_prompts(request):
    """Four real SciRIFF-Eval prompts (sample vocabulary) from about 600 to 2,600 tokens."""
    from tests.conftest import SHARED_SCIRIFF
    from seqio_tasks import vocab as vocab_lib

    if not SHARED_SCIRIFF.is_dir():
        pytest.skip(f"real SciRIFF sample not found at {SHARED_SCIRIFF} (only CI and developers have ../shared)")
    vocabulary = vocab_lib.get_vocabulary()
    rows = [json.loads(line) for line in (SHARED_SCIRIFF / "eval_sample" / "scifact_entailment.jsonl").open()]
    encoded = sorted((vocabulary.encode(r["input"]) for r in rows), key=len)
    picks = [encoded[0], encoded[len(encoded) // 2], encoded[-3], encoded[-1]]
    assert len(picks[0]) < 700 and len(picks[-1]) > 2000
    return [list(p) for p in picks]


REAL = LlamaConfig(vocab_size=1536, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   dtype="float32", max_position=4096)


@pytest.fixture(scope="module")
def real_params():
    return jax.tree.map(lambda x: x * 4.0, init_params(REAL, jax.random.PRNGKey(1)))


@pytest.fixture(scope="module")
def real_reference(sciriff_prompts, real_params):
    return [greedy_by_recomputation(REAL, real_params, p, 5) for p in sciriff_prompts]


def test_real_sciriff_prompts_of_varied_lengths_decode_like_full_recomputation(sciriff_prompts, real_params,
                                                                                real_reference):
    # Small chunks and 2 slots: prompts prefill in several chunks, over several key blocks, and slots are reused.
    b = batcher.ContinuousBatcher(REAL, real_params, eos_id=-1, slots=2, layout=batcher.Layout(chunk=256, chunk_step=64),
                                  log=None)
    assert b.run(sciriff_prompts, [5] * 4) == real_reference
    assert b.work.prefill_calls > len(sciriff_prompts)


def test_real_sciriff_prompts_on_an_8_device_mesh_decode_like_full_recomputation(sciriff_prompts, real_params,
                                                                                 real_reference):
    from sciriff_jax.parallel.sharding import MeshConfig, Sharding

    sharding = Sharding.create(REAL, MeshConfig("fsdp_tp"))
    sharded = jax.device_put(real_params, sharding.params)
    got = generate(REAL, sharded, sciriff_prompts, GenerationConfig(5, -1), batch_size=2, sharding=sharding)
    assert got == real_reference


def test_generation_stops_at_eos_and_leaves_it_out(params):
    free = generate(CONFIG, params, PROMPTS[:1], GenerationConfig(6, -1))[0]
    eos = free[2]
    first = free.index(eos)
    got = generate(CONFIG, params, PROMPTS[:1], GenerationConfig(6, eos))[0]
    assert got == free[:first]


def test_generation_stops_at_a_stop_sequence_and_leaves_it_out(params):
    free = generate(CONFIG, params, PROMPTS[:2], GenerationConfig(6, -1))
    stop = free[0][2:4]
    got = generate(CONFIG, params, PROMPTS[:2], GenerationConfig(6, -1, stop_sequences=[stop]))
    cut = min(j for j in range(len(free[0]) - 1) if free[0][j:j + 2] == stop)
    assert got[0] == free[0][:cut]
    assert stop not in [got[1][j:j + 2] for j in range(len(got[1]) - 1)]


def test_a_stop_sequence_split_across_decode_calls_is_found(params):
    free = generate(CONFIG, params, PROMPTS[:1], GenerationConfig(8, -1))[0]
    stop = free[3:6]
    b = batcher.ContinuousBatcher(CONFIG, params, eos_id=-1, slots=1, stop_sequences=[stop],
                                  layout=batcher.Layout(steps_per_call=2), log=None)
    assert b.run(PROMPTS[:1], [8]) == [free[:6]]  # the batcher keeps it; generate strips it


def test_tiny_top_p_sampling_is_greedy_and_sampling_follows_the_rng(params):
    greedy = generate(CONFIG, params, PROMPTS, GenerationConfig(4, -1))
    nucleus = generate(CONFIG, params, PROMPTS, GenerationConfig(4, -1, sampling=batcher.Sampling(1.0, 1e-6)),
                       rng=jax.random.PRNGKey(3))
    assert nucleus == greedy
    a = generate(CONFIG, params, PROMPTS, GenerationConfig(4, -1, sampling=batcher.Sampling(1.5)), rng=jax.random.PRNGKey(1))
    b = generate(CONFIG, params, PROMPTS, GenerationConfig(4, -1, sampling=batcher.Sampling(1.5)), rng=jax.random.PRNGKey(1))
    assert a == b


def test_per_prompt_token_limits_and_a_finished_row_hands_its_slot_on(params):
    limits = [7, 1, 3, 2]
    b = batcher.ContinuousBatcher(CONFIG, params, eos_id=-1, slots=2, log=None)
    out = b.run(PROMPTS, limits)
    assert [len(o) for o in out] == limits
    # Every decode row-step computed fed a live row: freed slots were refilled, never left stepping.
    assert b.work.decode_real == sum(m - 1 for m in limits)
    assert b.work.decode_computed <= b.work.decode_real + 2 * 2  # the last two calls drain a half-empty batch


def test_the_schedule_simulation_counts_the_same_work_as_the_decoder(params):
    from sciriff_jax.decoding import scheduler

    lengths, limits = [len(p) for p in PROMPTS], [7, 1, 3, 2]
    b = batcher.ContinuousBatcher(CONFIG, params, eos_id=-1, slots=2, log=None,
                                  layout=batcher.Layout(chunk=8, chunk_step=4, steps_per_call=3, prefill_rows=(1, 2)))
    b.run(PROMPTS, limits)
    sim = scheduler.simulate(lengths, limits, slots=2, page_size=b.page_size, num_pages=b.plan.num_pages, chunk=8,
                             chunk_step=4, steps_per_call=3, prefill_rows=(1, 2))
    assert sim == b.work


def test_compiled_programs_are_reused_and_their_shapes_bounded(params):
    prompts = [[5] * n for n in (3, 40, 70, 100, 130, 9)]
    generate(CONFIG, params, prompts, GenerationConfig(3, -1), batch_size=2)
    decode_programs, prefill_programs = batcher._decode._cache_size(), batcher._prefill._cache_size()
    generate(CONFIG, params, [[7] * n for n in (5, 66, 129, 12)], GenerationConfig(3, -1), batch_size=2)
    assert batcher._decode._cache_size() == decode_programs
    # Prefill chunk lengths come from the ladder (64..512 by 64): at most 8 programs per pool and row count.
    assert batcher._prefill._cache_size() - prefill_programs <= len(range(batcher.CHUNK_STEP, batcher.CHUNK + 1,
                                                                         batcher.CHUNK_STEP))


def test_prefill_never_builds_a_score_matrix_over_the_whole_prompt(params):
    chunk, prompt = 64, 1000
    pool = {k: np.zeros((CONFIG.num_layers, 32, batcher.PAGE_SIZE, CONFIG.num_kv_heads, CONFIG.head_dim), np.float32)
            for k in ("k", "v")}
    args = (params, pool, np.zeros((1, chunk), np.int32), np.array([prompt - chunk], np.int32),
            np.array([chunk - 1], np.int32), np.zeros((1, 32), np.int32), jax.random.PRNGKey(0))
    jaxpr = jax.make_jaxpr(lambda *a: batcher._prefill(*a, program=batcher.PrefillProgram(CONFIG, batcher.Sampling())))(*args)
    shapes = [v.aval.shape for eqn in _equations(jaxpr.jaxpr) for v in eqn.outvars if hasattr(v.aval, "shape")]
    block = batcher.BLOCK_PAGES * batcher.PAGE_SIZE
    largest_scores = max(np.prod(s) for s in shapes if len(s) == 5 and s[-1] == block)
    assert largest_scores == CONFIG.num_heads * chunk * block  # one [chunk, key block] tile per head
    assert not any(len(s) >= 2 and sorted(s)[-2] >= prompt for s in shapes)


def test_prefill_memory_stays_far_below_one_score_matrix_of_a_long_prompt():
    # The 135M model's attention widths, a 4,096-position cache and a 512-token chunk at its end.
    config = LlamaConfig(vocab_size=256, hidden_size=576, intermediate_size=1536, num_layers=2, num_heads=9,
                         num_kv_heads=3, dtype="float32", max_position=4096)
    from sciriff_jax.model.llama import param_shapes

    s = jax.ShapeDtypeStruct
    pages = 4096 // batcher.PAGE_SIZE
    pool = {k: s((2, pages + 1, batcher.PAGE_SIZE, 3, 64), np.float32) for k in ("k", "v")}
    lowered = batcher._prefill.lower(param_shapes(config), pool, s((1, 512), np.int32), s((1,), np.int32),
                                     s((1,), np.int32), s((1, pages), np.int32), jax.random.PRNGKey(0),
                                     program=batcher.PrefillProgram(config, batcher.Sampling()))
    temp = lowered.compile().memory_analysis().temp_size_in_bytes
    one_score_matrix = 9 * 4096 * 4096 * 4  # what prefilling the whole prompt at once would hold per layer
    assert temp < one_score_matrix / 20


def _equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (loops, conditionals, jit)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for v in value if isinstance(value, (tuple, list)) else [value]:
                inner = getattr(v, "jaxpr", v)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_kv_cache_is_reported_and_a_budget_for_one_sequence_splits_the_batch(params, capsys):
    want = generate(CONFIG, params, PROMPTS, GenerationConfig(6, -1), batch_size=4)
    per_page = batcher.PAGE_SIZE * kv_memory.bytes_per_token(CONFIG, np.float32)
    got = generate(CONFIG, params, PROMPTS, GenerationConfig(6, -1), batch_size=4, kv_cache_bytes=2 * per_page)
    assert got == want
    report = capsys.readouterr().out
    assert "KV cache: 2 pages x 64 tokens" in report and "rows wait for pages" in report


def test_a_sequence_that_cannot_fit_the_kv_budget_is_refused_before_decoding(params):
    per_page = batcher.PAGE_SIZE * kv_memory.bytes_per_token(CONFIG, np.float32)
    with pytest.raises(ValueError, match=r"longest sequence \(70 positions.*Lower max_new_tokens"):
        generate(CONFIG, params, [[3] * 64], GenerationConfig(6, -1), kv_cache_bytes=2 * per_page)


def test_bad_arguments_are_refused(params):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(CONFIG, params, PROMPTS, GenerationConfig(2000, 1))
    with pytest.raises(ValueError, match="empty prompt"):
        generate(CONFIG, params, [[]], GenerationConfig(2, 1))
    with pytest.raises(ValueError, match="2 max_new_tokens values for 4 prompts"):
        generate(CONFIG, params, PROMPTS, GenerationConfig([2, 3], 1))
