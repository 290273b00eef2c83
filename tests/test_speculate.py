"""Prompt-lookup speculative decoding gives plain greedy decoding's tokens exactly (random and copying models, real
SciRIFF prompts, one device and the 8-device mesh), ends rows where greedy does, and refuses what it cannot do."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sciriff_jax.decoding import batcher, speculate
from sciriff_jax.decoding.generate import DecodeHooks, GenerationConfig, generate
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


def _train_copying_model(texts, steps=160, batch=16):
    """A tiny Llama trained (Adam, real gradient steps) to repeat a window of real text after SEP."""
    rng = np.random.default_rng(0)
    docs = [t for t in texts if len(t) > WINDOW]
    params = init_params(REAL, jax.random.PRNGKey(0))
    opt = optax.adam(3e-3)

    def loss(p, tokens):
        logp = jax.nn.log_softmax(Llama(REAL).apply({"params": p}, tokens)[:, WINDOW:-1])
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, WINDOW + 1:, None], axis=-1))  # the copy's tokens

    @jax.jit
    def step(p, state, tokens):
        value, grads = jax.value_and_grad(loss)(p, tokens)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    state = opt.init(params)
    for _ in range(steps):
        rows = []
        for d in (docs[i] for i in rng.integers(len(docs), size=batch)):
            s = rng.integers(len(d) - WINDOW)
            rows.append(list(d[s:s + WINDOW]) + [SEP] + list(d[s:s + WINDOW]))
        params, state, value = step(params, state, jnp.asarray(rows, jnp.int32))
    assert float(value) < 0.5, f"the copying model did not learn to copy (loss {float(value):.2f})"
    return params


@pytest.fixture(scope="module")
def vocabulary():
    from seqio_tasks import vocab as vocab_lib  # the data layer (TensorFlow)

    return vocab_lib.get_vocabulary()


@pytest.fixture(scope="module")
def real_texts(vocabulary):
    """Real SciRIFF-Eval instances' inputs (the shared sample), tokenized; skips where there is no ../shared."""
    if not SHARED_SCIRIFF.is_dir():
        pytest.skip(f"real SciRIFF sample not found at {SHARED_SCIRIFF} (only CI and developers have ../shared)")
    out = {}
    for task in ("bioasq_list_qa", "scifact_entailment", "scierc_ner", "biored_ner"):
        lines = (SHARED_SCIRIFF / "eval_sample" / f"{task}.jsonl").open().read().splitlines()
        out[task] = [list(vocabulary.encode(json.loads(line)["input"])) for line in lines[:12]]
    return out


@pytest.fixture(scope="module")
def copying_model(real_texts):
    # Trained on two tasks' documents; the tests prompt it with the other two's.
    return _train_copying_model(real_texts["scierc_ner"] + real_texts["biored_ner"])


def _copy_prompts(texts, n=6):
    """A window of each real prompt, SEP, and the window's first 3 tokens: a copying model repeats the rest."""
    out = []
    for t in texts[:n]:
        s = len(t) // 2
        out.append(t[s:s + WINDOW] + [SEP] + t[s:s + 3])
    return out


@pytest.fixture(scope="module")
def copy_prompts(real_texts):
    return _copy_prompts(real_texts["bioasq_list_qa"], 3) + _copy_prompts(real_texts["scifact_entailment"], 3)


@pytest.mark.slow  # the copying model trains for ~25 s
def test_a_copying_model_accepts_drafts_and_decodes_exactly_as_greedy(copying_model, copy_prompts):
    want = _plain(REAL, copying_model, copy_prompts, [WINDOW - 3] * 6, eos_id=-1, slots=4)
    copied = sum(a == b for w, p in zip(want, copy_prompts) for a, b in zip(w, p[3:WINDOW]))
    assert copied > 0.7 * len(want) * (WINDOW - 3), "the trained model should mostly copy its prompt"
    for k in (2, 8):
        got, stats = _speculative(REAL, copying_model, copy_prompts, [WINDOW - 3] * 6, k, eos_id=-1, slots=4)
        assert got == want, k
        assert stats.accepted_length() > 1.8, stats.as_dict()  # most steps accepted drafts


@pytest.mark.slow  # the copying model trains for ~25 s
def test_eos_stop_sequences_and_limits_cut_rows_inside_accepted_drafts_as_greedy_does(copying_model, copy_prompts):
    free = _plain(REAL, copying_model, copy_prompts, [WINDOW - 3] * 6, eos_id=-1, slots=4)
    # EOS is a token the first row copies mid-answer, a stop sequence two tokens of the second's, and the limits
    # fall inside runs of accepted drafts: every cut lands where plain greedy's does, never past it.
    setting = dict(eos_id=free[0][15], stop_sequences=[free[1][20:22]], slots=4)
    limits = [WINDOW - 3, WINDOW - 3, 5, 9, 14, 22]
    want = _plain(REAL, copying_model, copy_prompts, limits, **setting)
    assert len(want[0]) < 16 and free[1][20:22] == want[1][-2:] and len(want[1]) <= 22
    assert [len(t) for t in want[2:]] == [min(m, len(f)) for m, f in zip(limits[2:], free[2:])]
    got, stats = _speculative(REAL, copying_model, copy_prompts, limits, 8, **setting)
    assert got == want
    assert stats.accepted_length() > 1.8, stats.as_dict()


@pytest.mark.slow  # the copying model trains for ~25 s
def test_speculation_on_the_8_device_mesh_decodes_exactly_as_greedy(copying_model, copy_prompts):
    from sciriff_jax.parallel.sharding import MeshConfig, Sharding

    sharding = Sharding.create(REAL, MeshConfig("fsdp_tp"))
    sharded = jax.device_put(copying_model, sharding.params)
    limits = [WINDOW - 3, 7, 30, 12, WINDOW - 3, 18]
    want = _plain(REAL, copying_model, copy_prompts, limits, eos_id=-1, slots=4)
    got, stats = _speculative(REAL, sharded, copy_prompts, limits, 4, eos_id=-1, slots=4, sharding=sharding)
    assert got == want
    assert stats.accepted_length() > 1.5, stats.as_dict()


@pytest.fixture(scope="module")
def long_prompts(real_texts):
    """Three whole real SciRIFF-Eval prompts (about 300 to 2,000 tokens), many pages and key blocks each."""
    texts = sorted(real_texts["scifact_entailment"] + real_texts["bioasq_list_qa"], key=len)
    return [texts[0], texts[len(texts) // 2], texts[-1]]


def test_whole_real_prompts_on_a_random_model_decode_exactly_as_greedy(long_prompts):
    params = jax.tree.map(lambda x: x * 4.0, init_params(REAL, jax.random.PRNGKey(1)))
    want = _plain(REAL, params, long_prompts, [16] * 3, eos_id=-1, slots=2)
    got, _ = _speculative(REAL, params, long_prompts, [16] * 3, 4, eos_id=-1, slots=2)
    assert got == want
    from sciriff_jax.parallel.sharding import MeshConfig, Sharding

    sharding = Sharding.create(REAL, MeshConfig("fsdp_tp"))
    got, _ = _speculative(REAL, jax.device_put(params, sharding.params), long_prompts, [16] * 3, 4, eos_id=-1, slots=2,
                          sharding=sharding)
    assert got == want


def test_generate_with_speculate_gives_what_transformers_prompt_lookup_decoding_gives(tmp_path):
    # The other side: transformers' own prompt-lookup decoding (greedy, the same k) on the same HF checkpoint.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from sciriff_jax.io import loader
    from tests import hf_dirs

    hf_dir = hf_dirs.tiny_llama_dir(tmp_path / "hf")
    ours = loader.load(str(hf_dir), dtype="float32", with_tokenizer=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    # Repeated phrases, so both sides find n-gram matches to draft from.
    phrases = _prompts(3, (6, 5, 7), 400)
    prompts = [phrases[0] + phrases[1] + phrases[0][:3], phrases[2] * 3 + phrases[1][:2], phrases[1] * 2]
    eos = model.generation_config.eos_token_id
    mine = generate(ours.config, ours.params, prompts, GenerationConfig(20, eos, speculate=4), batch_size=2,
                    hooks=DecodeHooks(log=None))
    theirs = []
    for p in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False, prompt_lookup_num_tokens=4,
                                 eos_token_id=eos, pad_token_id=eos)[0, len(p):].tolist()
        theirs.append(out[:out.index(eos)] if eos in out else out)
    assert mine == theirs


def test_an_eval_with_speculate_writes_the_plain_evals_predictions_and_records_k(tmp_path):
    pytest.importorskip("transformers")
    from sciriff_jax.eval import evaluate
    from tests import hf_dirs

    hf_dir = hf_dirs.tiny_llama_dir(tmp_path / "hf")
    summaries, predictions = {}, {}
    for k in (0, 4):
        eval_config = evaluate.EvalConfig("sciriff_sample_list_qa", max_examples=3, max_new_tokens=12, batch_size=2,
                                          speculate=k)
        summaries[k] = evaluate.evaluate_run(checkpoint_path=str(hf_dir), eval_config=eval_config,
                                             output_dir=str(tmp_path / f"eval{k}"), dtype="float32")
        predictions[k] = (tmp_path / f"eval{k}" / "predictions" / "sciriff_sample_list_qa.jsonl").read_text()
    assert summaries[4]["speculate"] == 4 and summaries[0]["speculate"] == 0
    assert predictions[4] == predictions[0] and len(predictions[0].splitlines()) == 3


# Constrained decoding (decoding/constrain.py): greedy under each row's schema mask at every verified position.
VOCAB416 = LlamaConfig(vocab_size=416, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                       num_kv_heads=2, dtype="float32")
GENES = {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4}
VERDICT = {"type": "object", "properties": {"verdict": {"enum": ["SUPPORT", "CONTRADICT", "NEI"]},
                                            "evidence": {"type": "array", "items": {"type": "integer", "maximum": 99},
                                                         "maxItems": 2}},
           "required": ["verdict", "evidence"], "additionalProperties": False}


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    pytest.importorskip("llguidance")
    from tokenizers import Tokenizer
    from tests import hf_dirs

    directory = hf_dirs.byte_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    return directory, tok, tok.token_to_id("<|im_end|>")


def test_drafts_the_schema_forbids_are_not_walked_and_the_matcher_is_left_as_it_was(bpe):
    from sciriff_jax.decoding import constrain

    directory, tok, eos = bpe
    c = constrain.Constraint.create(directory, [VERDICT], vocab_size=416, eos_id=eos)
    matchers = constrain.Matchers(c, 1, 416)
    matchers.start(0, 0)
    before = matchers.rows([0]).copy()
    good = tok.encode('{"verdict": "', add_special_tokens=False).ids
    drafts = np.asarray([good[:2] + tok.encode("x", add_special_tokens=False).ids + good[:1]], np.int32)  # 3rd: bad
    speculate._MATCHERS[99] = matchers
    masks = speculate._host_draft_masks(99, drafts, np.asarray([True]))
    assert (masks[0, 0] == before[0]).all() and (matchers.rows([0]) == before).all()  # left as it was
    matchers.consume(0, good[0])
    assert (masks[0, 1] == matchers.rows([0])[0]).all()  # the mask after the first draft
    assert not (masks[0, 2] == 0xFFFFFFFF).all() and (masks[0, 3:] == 0xFFFFFFFF).all()  # the walk ends at 'x'


def test_constrained_speculation_decodes_exactly_as_constrained_greedy(bpe):
    from sciriff_jax.decoding import constrain

    jsonschema = pytest.importorskip("jsonschema")
    directory, tok, eos = bpe
    params = jax.tree.map(lambda x: x * 4.0, init_params(VOCAB416, jax.random.PRNGKey(0)))
    texts = ['Genes: "BRCA1", "TP53". Answer: ["BRCA1", "TP', '{"verdict": "NEI", "evidence": [1, 2]} again: {"ver',
             "free text here, free text here, free", 'List ["a", "b"] then ["a", "b"] and [', "The claim holds."]
    prompts = [tok.encode(t).ids for t in texts]
    schemas = [GENES, VERDICT, None, GENES, VERDICT]
    c = constrain.Constraint.create(directory, schemas, vocab_size=416, eos_id=eos)
    want = generate(VOCAB416, params, prompts, GenerationConfig(40, eos, constraint=c), batch_size=3,
                    hooks=DecodeHooks(log=None))
    got = generate(VOCAB416, params, prompts, GenerationConfig(40, eos, constraint=c, speculate=4), batch_size=3,
                   hooks=DecodeHooks(log=None))
    assert got == want
    for tokens, schema in zip(got, schemas):
        if schema is not None and len(tokens) < 40:
            jsonschema.validate(json.loads(tok.decode(tokens)), schema)
    from sciriff_jax.parallel.sharding import MeshConfig, Sharding

    sharding = Sharding.create(VOCAB416, MeshConfig("fsdp_tp"))  # the host callbacks from the 8-device mesh
    assert generate(VOCAB416, jax.device_put(params, sharding.params), prompts,
                    GenerationConfig(40, eos, constraint=c, speculate=4), batch_size=3, sharding=sharding,
                    hooks=DecodeHooks(log=None)) == want


def test_the_speculation_benchmark_reports_rates_identity_and_accepted_lengths(tmp_path, shared_sciriff):
    pytest.importorskip("transformers")
    from benchmarks import speculate as bench
    from tests import hf_dirs

    hf_dir = hf_dirs.tiny_llama_dir(tmp_path / "hf")
    out = tmp_path / "speculate.json"
    payload = bench.main(["--checkpoint", str(hf_dir), "--shared", str(shared_sciriff), "--per-task", "1",
                          "--max-new", "6", "--batch", "2", "--ks", "2", "--rounding-prompts", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["k"] for r in rows] == [0, 2] and rows[1]["identical_to_greedy"] == "yes"
    assert all(r["decode_tokens_per_s"] > 0 for r in rows) and rows[1]["mean_accepted_length"] >= 1
    assert set(bench.SHARED_TASKS) <= {key[len("accepted_"):] for key in rows[1] if key.startswith("accepted_")}
    assert payload["rounding"]["positions"] == 2 * 9 and payload["rounding"]["argmax_flips"] == 0
