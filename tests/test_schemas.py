"""The JSON schemas of SciRIFF answers: every reference answer validates (jsonschema, the other side), every JSON task
has one, free text has none, wrong shapes fail, and SeqIO task names resolve to their release task."""
import collections
import csv
import json
import pathlib

import jsonschema
import pytest

from sciriff_jax.scoring.schemas import TASKS_WITH_SCHEMA, schema_for

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "seqio_tasks" / "data" / "sample"
# The keywords grammar libraries (llguidance, xgrammar, outlines-core) compile; no pattern, format or $ref.
GRAMMAR_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
                    "maxItems", "enum", "anyOf"}


def _output_contexts(tsv: pathlib.Path) -> dict[str, str]:
    with open(tsv, newline="", encoding="utf-8") as f:
        return {row["name"]: row["output_context"] for row in csv.DictReader(f, delimiter="\t")}


def _validate(task: str, output: str) -> None:
    jsonschema.Draft202012Validator(schema_for(task)).validate(json.loads(output))


def _keywords(schema) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        children = value.values() if key == "properties" else value if isinstance(value, list) else [value]
        for child in children:
            found |= _keywords(child)
    return found


@pytest.mark.parametrize("tsv", [REPO / "seqio_tasks" / "data" / "tasks.tsv", "shared"])
def test_the_tasks_with_a_schema_are_exactly_the_json_tasks(tsv, request):
    if tsv == "shared":
        tsv = request.getfixturevalue("shared_sciriff") / "tasks.tsv"
    contexts = _output_contexts(tsv)
    assert len(contexts) == 54
    assert TASKS_WITH_SCHEMA == {name for name, context in contexts.items() if context == "json"}
    for name, context in contexts.items():  # free text, labels and JSON Lines tables are unconstrained
        assert (schema_for(name) is None) == (context != "json"), (name, context)


def test_every_schema_is_draft_2020_12_in_the_grammar_subset():
    for task in sorted(TASKS_WITH_SCHEMA) + ["sample_ner"]:
        schema = schema_for(task)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert _keywords(schema) <= GRAMMAR_KEYWORDS, (task, _keywords(schema) - GRAMMAR_KEYWORDS)


def test_every_shared_eval_reference_validates(shared_sciriff):
    counts = collections.Counter()
    for path in sorted((shared_sciriff / "eval_sample").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            task = row["_instance_id"].split(":", 1)[0]
            assert schema_for(task) is not None, task
            _validate(task, row["output"])
            _validate(f"sciriff_4096_{task}", row["output"])
            counts[task] += 1
    assert counts == {"bioasq_list_qa": 64, "biored_ner": 100, "evidence_inference": 250,
                      "qasper_abstractive_qa": 107, "scierc_ner": 50, "scifact_entailment": 184}


def test_every_builtin_sample_reference_validates():
    counts = collections.Counter()
    for split in ("train", "validation"):
        for line in (SAMPLE_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            task = row["_instance_id"].split(":", 1)[0]
            is_json = row["metadata"]["output_context"] == "json"
            assert (schema_for(f"sciriff_{task}") is not None) == is_json, task
            if is_json:
                _validate(f"sciriff_{task}", row["output"])
                counts[task] += 1
    assert counts == {"sample_ner": 390, "sample_list_qa": 390, "sample_entailment": 390}


@pytest.mark.parametrize("task, answer", [
    ("scifact_entailment", {"verdict": "MAYBE", "evidence": []}),
    ("scifact_entailment", {"verdict": "SUPPORT", "evidence": "one sentence"}),
    ("scifact_entailment", {"verdict": "SUPPORT"}),
    ("covidfact_entailment", {"verdict": "NEI", "evidence": []}),
    ("biored_ner", {"Chemical": ["glucose"]}),
    ("scierc_ner", {"Generic": [], "Material": [], "Method": [], "Metric": [], "OtherScientificTerm": [],
                    "Task": [], "Dataset": []}),
    ("bioasq_list_qa", []),
    ("bioasq_list_qa", {"answer": ["BRCA1"]}),
    ("evidence_inference", [["aspirin", "placebo", "headache", "significantly decreased"]]),
    ("evidence_inference", [["aspirin", None, "headache", "decreased", "It fell."]]),
    ("scierc_re", [["a", "b", "CAUSES"]]),
    ("qasper_abstractive_qa", {"answer": "BERT", "evidence": []}),
    ("multicite_intent_classification", ["Background", "Criticism"]),
    ("annotated_materials_syntheses_events", [{"trigger": "heated", "arguments": []}]),
    ("sciriff_sample_ner", {"Method": [], "Task": [], "Material": []}),
])
def test_a_wrong_shaped_answer_fails_validation(task, answer):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema_for(task)).validate(answer)


def test_shapes_the_templates_allow_validate():
    jsonschema.validate(None, schema_for("qasper_extractive_qa"))  # unanswerable: the single word null
    jsonschema.validate([["aspirin", None, "pain", "no significant difference", "No change."]],
                        schema_for("evidence_inference"))  # no comparator reported
    jsonschema.validate([["a , b", "INHIBITOR", "c"], ["2", "4-dinitrophenol", "SUBSTRATE", "d"]],
                        schema_for("chemprot_re"))  # an entity holding ", " splits into more parts


@pytest.mark.parametrize("name", ["scifact_entailment", "sciriff_4096_scifact_entailment",
                                  "sciriff_16384_scifact_entailment", "sciriff_8192_scifact_entailment_first1000"])
def test_seqio_task_names_resolve_to_the_release_task(name):
    assert schema_for(name) == schema_for("scifact_entailment") is not None


def test_sample_tasks_have_their_own_shapes():
    assert list(schema_for("sciriff_sample_ner")["properties"]) == ["Method", "Task", "Material", "Metric"]
    assert schema_for("sciriff_sample_entailment") == schema_for("scifact_entailment")
    assert schema_for("sciriff_sample_classification") is None and schema_for("sample_summarization") is None


def test_an_unknown_task_name_is_an_error_not_unconstrained():
    with pytest.raises(ValueError, match="no SciRIFF task in the name 'sciriff_4096_nonesuch'"):
        schema_for("sciriff_4096_nonesuch")


def test_each_call_returns_a_fresh_schema():
    schema_for("biored_ner")["properties"].clear()
    assert "Chemical" in schema_for("biored_ner")["properties"]


# The grammar library's side (llguidance, what sciriff_jax.decoding.constrain compiles schemas with): every schema
# compiles, and every reference is a string its grammar accepts when written as the references are (separators ", "
# and ": ", general \uXXXX escapes allowed: json.dumps / tojson escape non-ASCII).
REFERENCE_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False,
                   "json_allow_general_unicode_escapes": True}


def test_every_schema_compiles_and_admits_the_references_in_llguidance(tmp_path, shared_sciriff):
    llguidance = pytest.importorskip("llguidance", reason="llguidance (the 'constrained' extra) is not installed")
    import llguidance.hf  # noqa: F401  # its transformers bridge
    from transformers import PreTrainedTokenizerFast

    import hf_dirs

    tokenizer = llguidance.hf.from_tokenizer(
        PreTrainedTokenizerFast.from_pretrained(str(hf_dirs.byte_bpe_tokenizer(tmp_path / "tok"))))
    paths = sorted((shared_sciriff / "eval_sample").glob("*.jsonl")) + sorted(SAMPLE_DIR.glob("*.jsonl"))
    refs = collections.defaultdict(list)
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            refs[row["_instance_id"].split(":", 1)[0]].append(row["output"])
    for task in sorted(TASKS_WITH_SCHEMA) + ["sample_ner", "sample_list_qa", "sample_entailment"]:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_for(task), overrides=REFERENCE_STYLE)
        assert llguidance.LLMatcher.validate_grammar(grammar, tokenizer) == "", task
        for output in refs.get(task, []):
            matcher = llguidance.LLMatcher(tokenizer, grammar)
            matcher.consume_tokens(tokenizer.tokenize_str(output))
            assert not matcher.is_error() and matcher.is_accepting(), (task, output[:200], matcher.get_error())
    bad = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_json_schema(
        schema_for("scierc_re"), overrides=REFERENCE_STYLE))
    bad.consume_tokens(tokenizer.tokenize_str('[["a", "b", "CAUSES"]]'))
    assert bad.is_error()
