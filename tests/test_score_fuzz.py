"""Property-based fuzzing of `sciriff-jax score` over the nine SciRIFF-Eval tasks: any prediction text, any field
types, hostile JSON and bytes give exit 0 with scores in [0, 1] or exit 2 with a message, never an exception."""
import contextlib
import io
import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sciriff_jax.scoring import metrics, score

REFERENCES = {  # one valid reference answer per task, as the release writes them
    "bioasq_list_qa": '["BRCA1", "TP53"]',
    "multicite_intent_classification": '["Background", "Uses"]',
    "biored_ner": json.dumps({**{k: [] for k in metrics._NER_BIORED}, "Gene": ["BRCA1"]}),
    "scierc_ner": json.dumps({**{k: [] for k in metrics._NER_SCIERC}, "Method": ["CNN"]}),
    "evidence_inference": '[["aspirin", "placebo", "pain", "significantly decreased", "Pain fell."]]',
    "scifact_entailment": '{"verdict": "SUPPORT", "evidence": ["It works."]}',
    "qasper_abstractive_qa": '{"answer": "BERT", "evidence": ["We use BERT."]}',
    "discomat_te": "| a | b |\n| 1 | 2 |",
    "mup_single_document_summarization": "The paper proposes a method.",
}
assert set(REFERENCES) == set(metrics.EVAL_SCORERS)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
hostile_text = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"a": ' * n + "1" + "}" * n),
    st.integers(4000, 6000).map(lambda n: "[" + "7" * n + "]"),
    st.sampled_from(["", "null", "NaN", "[}", "{]", "</s>", '{"verdict": ["x"]}', '[["a"]]', '{"answer": 5}']),
)
field_values = st.one_of(json_values, hostile_text)


@st.composite
def lines(draw, task):
    n = draw(st.integers(1, 4))
    out = []
    for i in range(n):
        row = {"_instance_id": f"{task}:validation:{i}", "output": REFERENCES[task],
               "prediction": draw(st.one_of(hostile_text, st.none()))}
        for field in draw(st.lists(st.sampled_from(["_instance_id", "output", "prediction", "task", "scorer",
                                                    "input"]), max_size=2)):
            row[field] = draw(field_values)  # any type where a string belongs
        out.append(json.dumps(row, ensure_ascii=draw(st.booleans())).encode())
    if draw(st.integers(0, 9)) == 0:  # now and then, bytes that are not a JSON object, or not UTF-8
        out.insert(draw(st.integers(0, len(out))), draw(st.binary(max_size=40)))
    return b"\n".join(out) + b"\n"


def _score(content: bytes, task: str):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "p.jsonl")
        with open(path, "wb") as f:
            f.write(content)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = score.main(["--task", task, "--predictions", path])
        return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True, scope="module")
def no_judge():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SCIRIFF_JUDGE_URL", raising=False)  # judge metrics are "skipped": no network in a fuzz test
        yield


@pytest.mark.parametrize("task", metrics.EVAL_SCORERS)
# Bounded: 25 files per task (about a second each task on 2 cores), no example database written to the checkout.
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_predictions_file_gives_a_score_or_a_named_error(task, data):
    code, out, err = _score(data.draw(lines(task)), task)
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("error: ") and "p.jsonl" in err
        return
    result = json.loads(out.splitlines()[0])
    for value in result["headline"].values():
        assert value == metrics.SKIPPED or 0.0 <= value <= 1.0, result["headline"]
