"""Schema-constrained decoding (decoding/constrain.py with llguidance): every answer parses and validates against
its schema, even from a random model; a free-text row beside constrained rows, and every unconstrained run, decode
as without constraints; the masks come from real tokenizers (a tokenizer.json and a SentencePiece model)."""
import json
import sys

import jax
import numpy as np
import pytest

from sciriff_jax.decoding import batcher, constrain
from sciriff_jax.decoding.generate import DecodeHooks, GenerationConfig, generate
from sciriff_jax.model import LlamaConfig, init_params
from tests import hf_dirs

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

CONFIG = LlamaConfig(vocab_size=416, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     dtype="float32")
STRINGS = {"type": "array", "items": {"type": "string"}}
# Bounded, so that a random model's answers end within the token limit and can be parsed whole.
SHORT_STRINGS = {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3}
VERDICT = {"type": "object", "properties": {"verdict": {"enum": ["SUPPORT", "CONTRADICT", "NEI"]},
                                            "evidence": {"type": "array", "items": {"type": "integer", "maximum": 99},
                                                         "maxItems": 2}},
           "required": ["verdict", "evidence"], "additionalProperties": False}
TEXTS = ["List the genes", "hello world", "The claim is supported", "And what else?", "BRCA1 TP53"]
QUIET = DecodeHooks(log=None)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return hf_dirs.byte_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def hf(tokenizer_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return tok, tok.token_to_id("<|im_end|>")


@pytest.fixture(scope="module")
def params():
    # Scaled-up weights: the random model's choices are sharp, so a wrong mask would show.
    return jax.tree.map(lambda x: x * 4.0, init_params(CONFIG, jax.random.PRNGKey(0)))


def bits_of(matchers, slot):
    return np.unpackbits(matchers.rows([slot]).view(np.uint8), bitorder="little").astype(bool)


def walk(matchers, ids, eos):
    """Feed `ids` through slot 0; assert each is allowed and EOS is not until the last; return the final mask."""
    for t in ids:
        allowed = bits_of(matchers, 0)
        assert allowed[t] and not allowed[eos]
        matchers.consume(0, t)
    return bits_of(matchers, 0)


def test_masks_allow_the_references_tokens_and_eos_only_once_the_json_is_complete(tokenizer_dir, hf):
    tok, eos = hf
    c = constrain.Constraint.create(tokenizer_dir, [VERDICT, None], vocab_size=CONFIG.vocab_size, eos_id=eos)
    m = constrain.Matchers(c, 2, CONFIG.vocab_size)
    m.start(0, 0)
    m.start(1, 1)
    assert m.rows([0, 1]).shape == (2, 13) and m.rows([0, 1]).dtype == np.uint32
    assert bits_of(m, 1).all()  # free text: every token
    # First a space or newline (at most 3 of them), or the object's start: '{' or '{"' (one token here).
    assert {tok.id_to_token(i) for i in np.flatnonzero(bits_of(m, 0))} == {"{", '{"', "\u0120", "\u010a"}
    final = walk(m, tok.encode('{"verdict": "SUPPORT", "evidence": [1, 2]}', add_special_tokens=False).ids, eos)
    assert final[eos] and final.sum() == 1  # complete: only EOS
    m.stop(0)
    assert bits_of(m, 0).all() and not m.errors


def test_a_sentencepiece_model_gives_masks_from_its_pieces(tmp_path):
    import sentencepiece as spm

    prefix = str(tmp_path / "llama_like")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(hf_dirs.CORPUS), model_prefix=prefix, vocab_size=380,
                                   pad_id=0, bos_id=1, eos_id=2, unk_id=3, byte_fallback=True, minloglevel=2,
                                   hard_vocab_limit=False)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    # minItems 1: after '[' the schema forces '"', which llguidance tokenizes with our encoder (no dummy prefix).
    c = constrain.Constraint.create(prefix + ".model", [dict(STRINGS, minItems=1)], vocab_size=416, eos_id=2)
    m = constrain.Matchers(c, 1, 416)
    m.start(0, 0)
    assert not bits_of(m, 0)[sp.get_piece_size():].any()  # the model's padded rows are never allowed
    # SentencePiece's own pieces, '▁' (its dummy prefix: a space, allowed before the JSON) first.
    ids = sp.encode('["BRCA1 genes", "hello world"]')
    assert sp.id_to_piece(ids[0]) == "\u2581" and sp.id_to_piece(ids[1]) == "["
    assert walk(m, ids, 2)[2] and not m.errors


def decode_constrained(params, prompts, schemas, tokenizer_dir, eos, *, max_new, sampling=batcher.Sampling(),
                       sharding=None):
    c = constrain.Constraint.create(tokenizer_dir, schemas, vocab_size=CONFIG.vocab_size, eos_id=eos)
    generation = GenerationConfig(max_new, eos, sampling=sampling, constraint=c)
    return generate(CONFIG, params, prompts, generation, hooks=QUIET, batch_size=3, sharding=sharding)


@pytest.mark.parametrize("sampling", [batcher.Sampling(), batcher.Sampling(1.0, 0.9)], ids=["greedy", "top_p"])
def test_every_constrained_answer_of_a_random_model_parses_and_validates(params, tokenizer_dir, hf, sampling):
    tok, eos = hf
    prompts = [tok.encode(t).ids for t in TEXTS]
    schemas = [SHORT_STRINGS, VERDICT, SHORT_STRINGS, VERDICT, SHORT_STRINGS]
    free = generate(CONFIG, params, prompts, GenerationConfig(64, eos, sampling=sampling), batch_size=3, hooks=QUIET)
    assert not any(_valid(tok.decode(o), s) for o, s in zip(free, schemas))  # unconstrained: never JSON
    out = decode_constrained(params, prompts, schemas, tokenizer_dir, eos, max_new=64, sampling=sampling)
    for tokens, schema in zip(out, schemas):
        jsonschema.validate(json.loads(tok.decode(tokens)), schema)


def _valid(text, schema):
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def test_an_answer_cut_by_the_token_limit_is_a_prefix_of_schema_json(params, tokenizer_dir, hf):
    tok, eos = hf
    prompts = [tok.encode(t).ids for t in TEXTS[:2]]
    out = decode_constrained(params, prompts, [STRINGS, VERDICT], tokenizer_dir, eos, max_new=12)
    texts = [tok.decode(o).lstrip(" ") for o in out]  # one space may come first
    assert [len(o) for o in out] == [12, 12]
    assert texts[0].startswith('["') and texts[1].startswith('{"verdict": "')


def test_a_free_text_row_beside_constrained_rows_decodes_as_without_constraints(params, tokenizer_dir, hf):
    tok, eos = hf
    prompts = [tok.encode(t).ids for t in TEXTS]
    want = generate(CONFIG, params, prompts, GenerationConfig(24, eos), batch_size=3, hooks=QUIET)
    out = decode_constrained(params, prompts, [SHORT_STRINGS, None, VERDICT, None, SHORT_STRINGS], tokenizer_dir, eos,
                             max_new=24)
    assert out[1] == want[1] and out[3] == want[3]
    assert out[0] != want[0] and out[2] != want[2]


def test_a_constraint_without_schemas_decodes_exactly_as_without_one(params, tokenizer_dir, hf):
    tok, eos = hf
    prompts = [tok.encode(t).ids for t in TEXTS]
    for sampling in (batcher.Sampling(), batcher.Sampling(1.0, 0.9)):
        want = generate(CONFIG, params, prompts, GenerationConfig(16, eos, sampling=sampling), batch_size=3,
                        hooks=QUIET)
        assert decode_constrained(params, prompts, [None] * 5, tokenizer_dir, eos, max_new=16,
                                  sampling=sampling) == want


def _decode_jaxpr(params, constrained):
    slots, width = 2, -(-CONFIG.vocab_size // 32)
    rows = batcher.Rows(*(np.zeros(slots, np.int32) for _ in range(4)), np.ones(slots, bool))
    pool = {k: np.zeros((CONFIG.num_layers, 4, 64, CONFIG.num_kv_heads, CONFIG.head_dim), np.float32) for k in "kv"}
    allowed = constrain.Allowed(np.zeros((slots, width), np.uint32), np.int32(0)) if constrained else None
    program = batcher.DecodeProgram(CONFIG, 4, batcher.Sampling(), (), constrained=constrained)
    return str(jax.make_jaxpr(lambda *a: batcher._decode(*a, program=program))(
        params, pool, np.zeros((slots, 4), np.int32), rows, np.zeros((slots, 0), np.int32), np.bool_(False),
        np.int32(1), jax.random.PRNGKey(0), allowed))


def test_only_the_constrained_decode_program_masks_and_calls_the_host(params):
    plain, constrained = _decode_jaxpr(params, False), _decode_jaxpr(params, True)
    assert "callback" not in plain and "shift_right_logical" not in plain
    assert constrained.count("io_callback") == 1 and "shift_right_logical" in constrained


def test_constrained_decoding_on_an_8_device_mesh_matches_one_device(params, tokenizer_dir, hf):
    from sciriff_jax.parallel.sharding import MeshConfig, Sharding

    assert len(jax.devices()) == 8
    tok, eos = hf
    prompts = [tok.encode(t).ids for t in TEXTS]
    schemas = [SHORT_STRINGS, None, VERDICT, SHORT_STRINGS, None]
    want = decode_constrained(params, prompts, schemas, tokenizer_dir, eos, max_new=40)
    sharding = Sharding.create(CONFIG, MeshConfig("fsdp_tp"))
    got = decode_constrained(jax.device_put(params, sharding.params), prompts, schemas, tokenizer_dir, eos,
                             max_new=40, sharding=sharding)
    assert got == want
    for tokens, schema in zip(got, schemas):
        if schema is not None:
            jsonschema.validate(json.loads(tok.decode(tokens)), schema)


def test_a_schema_that_cannot_compile_is_refused_before_decoding_in_one_line(tokenizer_dir):
    bad = {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 1}
    with pytest.raises(ValueError, match=r"^constrained decoding: the JSON schema \{.*minItems \(3\) is greater than "
                                         r"maxItems \(1\)\); fix the schema or decode that task unconstrained\.$"):
        constrain.Constraint.create(tokenizer_dir, [None, bad], vocab_size=CONFIG.vocab_size, eos_id=3)


def test_constraining_without_the_library_says_what_to_install(tokenizer_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(ImportError, match=r"CONSTRAINED = True needs the grammar library llguidance.*"
                                          r"pip install 'sciriff-jax\[constrained\]'"):
        constrain.Constraint.create(tokenizer_dir, [STRINGS], vocab_size=CONFIG.vocab_size, eos_id=3)


@pytest.fixture(scope="module")
def sample_model():
    from sciriff_jax.model.config import LlamaConfig as Config
    from seqio_tasks import vocab as vocab_lib

    config = Config(vocab_size=1536, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                    max_position=1024, dtype="float32", param_dtype="float32")
    return config, init_params(config, jax.random.PRNGKey(0)), vocab_lib.get_vocabulary()


def test_a_constrained_eval_answers_in_each_tasks_schema_and_says_so_in_its_summary(sample_model, tmp_path):
    from sciriff_jax.chat.format import ChatFormat
    from sciriff_jax.eval import evaluate

    config, params, vocabulary = sample_model  # the built-in sample's real SentencePiece vocabulary
    tasks = ["sciriff_sample_list_qa", "sciriff_sample_ner"]
    summaries = {}
    for constrained in (False, True):
        eval_config = evaluate.EvalConfig(",".join(tasks), max_examples=2, max_new_tokens=6, batch_size=2,
                                          constrained=constrained)
        summaries[constrained] = evaluate.evaluate_tasks(config, params, tasks, ChatFormat(vocabulary, "tulu"),
                                                         eval_config=eval_config,
                                                         output_dir=tmp_path / str(constrained))
    assert summaries[False]["constrained"] == {"on": False}
    record = json.loads((tmp_path / "True" / "summary.json").read_text())["constrained"]
    assert record == {"on": True, "library": constrain.library_version(), "schema_tasks": tasks, "free_tasks": []}
    assert record["library"].startswith("llguidance ")
    starts = {"sciriff_sample_list_qa": '["', "sciriff_sample_ner": '{"'}
    for task in tasks:
        rows = [json.loads(line) for line in (tmp_path / "True" / "predictions" / f"{task}.jsonl").open()]
        assert len(rows) == 2 and all(r["prediction"].lstrip().startswith(starts[task]) for r in rows)
        free = [json.loads(line) for line in (tmp_path / "False" / "predictions" / f"{task}.jsonl").open()]
        assert not any(r["prediction"].lstrip().startswith(starts[task]) for r in free)
    # Predictions decoded unconstrained are never resumed into a constrained run (nor the other way).
    with pytest.raises(ValueError, match="other settings \\(constrained"):
        evaluate.evaluate_tasks(config, params, tasks, ChatFormat(vocabulary, "tulu"), output_dir=tmp_path / "False",
                                eval_config=evaluate.EvalConfig(",".join(tasks), max_examples=2, max_new_tokens=6,
                                                                batch_size=2, constrained=True))


def test_the_benchmark_times_both_systems_on_real_prompts_and_constrained_answers_are_json(tmp_path, shared_sciriff):
    from benchmarks import constrained as bench

    result = bench.main(["--tiny", "--out", str(tmp_path / "c.json")])
    assert [r["system"] for r in result["rows"]] == ["unconstrained", "constrained", "constrained program, no schema"]
    assert all(r["new_tokens_per_s"] > 0 and r["decode_ms_per_step"] > 0 for r in result["rows"])
    assert result["rows"][0]["matcher_s"] == 0 < result["rows"][1]["matcher_s"]
    assert result["rows"][2]["new_tokens"] == result["rows"][0]["new_tokens"]  # all-ones masks: the same tokens
    assert result["rows"][0]["answers_valid"] == 0
    assert set(result["constrained_answer_starts"]) <= {"[", "{"}
    assert json.loads((tmp_path / "c.json").read_text())["tokenizer"]["vocab"] == 600
