"""The release judge protocol against text fixtures made by the release's own functions.

tests/fixtures/judge_release/ was written by running allenai/SciRIFF e396d00's make_prompt, extract_rating
(sciriff/eval/metrics/attributed_qa_eval.py) and make_prompt, parse_model_response and
SummaryComparison._extract_data_from_prompt (sciriff/eval/metrics/summary_comparison.py) on the inputs recorded
in cases.json: a real Qasper validation instance, a MUP input as the release's template writes it, and judge
replies. The release's prompt argument is lm-eval's whole prompt (tulu template); ours is the instance's input:
the fixtures show the two give the same judge prompt.
"""
import json
import pathlib

import pytest

from sciriff_jax.scoring import judge as judge_lib
from sciriff_jax.scoring import metrics
from tests.test_judge import FakeJudgeServer

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "judge_release"
CASES = json.loads((FIXTURES / "cases.json").read_text())


@pytest.mark.parametrize("case", CASES["qasper"], ids=lambda c: c["fixture"])
def test_release_qasper_prompt_is_the_releases_text(case):
    reference = json.loads(case["output"])
    text = judge_lib.release_qasper_prompt(case["input"], reference, case["answer"])
    assert text == (FIXTURES / case["fixture"]).read_text()


@pytest.mark.parametrize("case", CASES["mup"], ids=lambda c: c["fixture"])
def test_release_mup_prompt_is_the_releases_text(case):
    text = judge_lib.release_mup_prompt(case["input"], case["output"],
                                        judge_lib.release_mup_prediction(case["prediction"]))
    assert text == (FIXTURES / case["fixture"]).read_text()


def test_release_ratings_are_read_as_the_release_reads_them():
    assert [judge_lib.release_qasper_rating(c["reply"]) for c in CASES["qasper_ratings"]] == \
        [c["rating"] for c in CASES["qasper_ratings"]]
    assert [judge_lib.release_mup_rating(c["reply"]) for c in CASES["mup_ratings"]] == \
        [c["rating"] for c in CASES["mup_ratings"]]
    # the lenient reading differs on these (the fixtures would catch a release reader that read leniently)
    assert judge_lib.extract_rating("Rating: 2\nRating: 5") == 5 and judge_lib.release_qasper_rating("Rating: 7") == 3


def test_release_is_the_default_and_lenient_stays_by_name(monkeypatch):
    for var in ("SCIRIFF_JUDGE_MODEL", "SCIRIFF_JUDGE_TEMPERATURE", "SCIRIFF_JUDGE_PROTOCOL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SCIRIFF_JUDGE_URL", "http://127.0.0.1:9/v1")
    judge = judge_lib.judge_from_env()
    assert judge.protocol == "release" and not judge.keep_rating_one and judge.mup_sample == 100
    monkeypatch.setenv("SCIRIFF_JUDGE_PROTOCOL", "lenient")
    assert judge_lib.judge_from_env().protocol == "lenient" and judge_lib.judge_from_env().keep_rating_one
    assert judge_lib.judge_from_env(protocol="release").protocol == "release"
    with pytest.raises(ValueError, match="choose one of"):
        judge_lib.Judge("http://127.0.0.1:9", "m", protocol="strict")


def test_release_qasper_scores_as_the_release():
    """Every instance judged; no answer: 1 without a call; an unreadable reply: 3; mean rating rescaled."""
    case = CASES["qasper"][0]
    ref = case["output"]
    examples = [{"input": case["input"], "output": ref, "prediction": json.dumps({"answer": a, "evidence": []})}
                for a in ("BERT", "something else", "BERT", None)] + [{"input": case["input"], "output": ref,
                                                                       "prediction": "no json"}]
    replies = {"BERT": "Explanation: ok.\nRating: 5", "something else": "Explanation: I cannot say."}
    with FakeJudgeServer(reply=lambda p: replies["BERT" if p.endswith("Model answer: BERT\n") else
                                                 "something else"]) as server:
        res = metrics.score("qasper_abstractive_qa", examples, judge=judge_lib.Judge(server.url, "m", max_retries=0))
        sent = [r["body"]["messages"][0]["content"] for r in server.requests]
    ratings = [5, 3, 5, 1, 1]
    assert res["headline"]["lm_judge_answer"] == pytest.approx((sum(ratings) / 5 - 1) / 4)
    assert len(sent) == 3 and res["judge"]["protocol"] == "release" and res["judge"]["n_rated"] == 5
    assert judge_lib.release_qasper_prompt(case["input"], json.loads(ref), "BERT") in sent


def test_release_mup_judges_the_seeded_sample_reads_bare_digits_and_drops_rating_one():
    import random

    mup = CASES["mup"][0]
    examples = [{"input": mup["input"], "output": "A summary.", "prediction": f"Summary {i}."} for i in range(120)]
    replies = {0: "Decision: 5", 1: "Decision: 1", 2: "Decision: 4.", 3: "Explanation: x\nRating: 3"}
    with FakeJudgeServer(reply=lambda p: replies[int(p.rsplit("Summary ", 1)[1].split(".")[0]) % 4]) as server:
        res = metrics.score("mup_single_document_summarization", examples,
                            judge=judge_lib.Judge(server.url, "m", max_retries=0))
        sent = [r["body"]["messages"][0]["content"] for r in server.requests]
    random.seed(42)
    chosen = sorted(random.sample(range(120), 100))  # the release: random.seed(42); sorted(random.sample(...))
    assert sorted(sent) == sorted(judge_lib.release_mup_prompt(mup["input"], "A summary.", f"Summary {i}.")
                                  for i in chosen)
    kept = [(5 - 1) / 4 if i % 4 == 0 else (3 - 1) / 4 for i in chosen if i % 4 in (0, 3)]  # 1s dropped, "4." error
    assert res["headline"]["lm_judge_reference"] == pytest.approx(sum(kept) / len(kept))
    verdict = res["judge"]
    assert verdict["n_judged"] == 100 and verdict["n_rated"] == len(kept)
    assert verdict["n_dropped_rating_one"] == sum(i % 4 == 1 for i in chosen)
    assert verdict["n_failed"] == sum(i % 4 == 2 for i in chosen)
