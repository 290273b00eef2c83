"""SciRIFF-Eval metrics: answer parsing, per-task scores, and the fixes over the release's code."""
import json
import math

import pytest

from sciriff_jax.scoring import metrics


def ex(output, prediction, iid="t:validation:0"):
    return {"output": output if isinstance(output, str) else json.dumps(output), "prediction": prediction, "_instance_id": iid}


# --- parsing ---------------------------------------------------------------------------------

def test_whole_answer_json_is_valid():
    assert metrics.parse_answer('{"a": [1]}', {}) == ({"a": [1]}, "valid_json")


def test_first_balanced_object_that_parses_is_extracted():
    text = 'Sure! {"bad": } then {"verdict": "SUPPORT", "evidence": []} and {"x": 1}'
    assert metrics.parse_answer(text, {"verdict": "NEI"}) == ({"verdict": "SUPPORT", "evidence": []}, "extract_success")


def test_list_shaped_task_extracts_brackets_not_braces():
    assert metrics.parse_answer('Answer: ["a", "b"] done', []) == (["a", "b"], "extract_success")


def test_unparseable_answer_scores_the_task_default():
    default = {"verdict": "NEI", "evidence": []}
    value, status = metrics.parse_answer("I cannot tell", default)
    assert (value, status) == (default, "extract_failure") and value is not default


def test_null_answer_is_default_and_not_counted_as_success():
    value, status = metrics.parse_answer("null", [])
    assert (value, status) == ([], "null_json")
    counts = metrics.parse_counts(["valid_json", "null_json", "extract_success", "extract_failure"])
    assert counts["frac_success"] == 0.5


def test_end_marker_is_removed_as_a_string_not_a_character_set():
    # str.strip("</s>") would also eat the final "s" of "yes" and the leading "s" of "s1".
    assert metrics.clean_prediction('s1 said yes</s>') == "s1 said yes"
    assert metrics.parse_answer('["genes"]</s>', [])[0] == ["genes"]


def test_json_parse_rate_counts_whole_and_extracted_json():
    preds = ['{"a": 1}', 'text {"a": 2} text', "no json", "[1, 2]"]
    assert metrics.json_parse_rate(preds, shape="dict") == pytest.approx(0.75)
    assert metrics.json_parse_rate(["[1]", "x [2] y", "{}"], shape="list") == pytest.approx(1.0)


def test_evidence_inference_closing_brace_quirk_is_kept():
    value, status = metrics.parse_answer('[["a", "b", "c", "d", "e"]}', [], fix_closing_brace=True)
    assert status == "valid_json" and value == [["a", "b", "c", "d", "e"]]


# --- list and NER F1 -------------------------------------------------------------------------

def test_list_f1_is_micro_exact_match_case_insensitive():
    res = metrics.score("bioasq_list_qa", [ex(["A", "b"], '["a", "c"]'), ex(["x"], '["X"]')])
    # correct 2 of 3 predicted, 2 of 3 references
    assert res["all"]["f1"] == pytest.approx(2 / 3)
    assert res["headline"] == {"f1": pytest.approx(2 / 3)}


def test_list_answer_given_as_string_is_one_entry_not_characters():
    res = metrics.score("bioasq_list_qa", [ex(["abc"], '"abc"')])
    assert res["all"]["f1"] == 1.0


def test_ner_typed_and_untyped_f1():
    ref = {"Gene": ["NIS"], "Disease": ["ITD"]}
    pred = json.dumps({"Gene": ["nis", "TSH"], "Chemical": ["ITD"]})
    res = metrics.score("biored_ner", [ex(ref, pred)])["all"]
    assert res["typed_f1"] == pytest.approx(prf_f1(1, 3, 2))
    assert res["untyped_f1"] == pytest.approx(prf_f1(2, 3, 2))


def prf_f1(c, p, r):
    return 2 * (c / p) * (c / r) / (c / p + c / r)


def test_ner_answer_as_json_list_is_scored_untyped_instead_of_crashing():
    res = metrics.score("scierc_ner", [ex({"Task": ["parsing"], "Method": []}, '["parsing"]')])["all"]
    assert res["untyped_f1"] == 1.0 and res["typed_f1"] == 0.0 and res["answer_not_object"] == 1


# --- evidence inference ----------------------------------------------------------------------

REL = ["aspirin", "placebo", "pain", "significantly decreased", "Aspirin reduced pain a lot."]


def test_relation_f1_exact_substring_and_overlap():
    near = ["aspirin 100mg", "placebo", "pain score", "significantly decreased", "aspirin reduced pain"]
    res = metrics.score("evidence_inference", [ex([REL], json.dumps([near]))])["all"]
    assert res["exact_f1"] == 0.0
    assert res["substring_f1"] == 1.0
    assert res["overlap_f1"] == 1.0


def test_relation_overlap_needs_every_field_above_threshold():
    far = list(REL)
    far[2] = "mortality"
    res = metrics.score("evidence_inference", [ex([REL], json.dumps([far]))])["all"]
    assert res["overlap_f1"] == 0.0


def test_relation_answer_as_object_scores_zero_instead_of_crashing():
    res = metrics.relation_f1([({"intervention": "aspirin"}, [REL])])
    assert res["overlap_f1"] == 0.0 and res["answer_not_list"] == 1
    # Through `score` the release's "}" -> "]" quirk makes an object answer a parse failure.
    scored = metrics.score("evidence_inference", [ex([REL], '{"intervention": "aspirin"}')])
    assert scored["all"]["overlap_f1"] == 0.0 and scored["parse"]["extract_failure"] == 1


def test_duplicate_reference_tuples_can_each_be_matched():
    res = metrics.score("evidence_inference", [ex([REL, REL], json.dumps([REL, REL]))])["all"]
    assert res["overlap_f1"] == 1.0 and res["exact_f1"] == 1.0


def test_single_unnested_tuple_is_accepted():
    res = metrics.score("evidence_inference", [ex([REL], json.dumps(REL))])["all"]
    assert res["exact_f1"] == 1.0


# --- SciFact ---------------------------------------------------------------------------------

def test_scifact_label_f1_ignores_nei_and_evidence_token_f1():
    refs = [{"verdict": "SUPPORT", "evidence": ["Statins work."]}, {"verdict": "NEI", "evidence": []}]
    preds = ['{"verdict": "SUPPORT", "evidence": ["Statins work well."]}', '{"verdict": "CONTRADICT", "evidence": []}']
    res = metrics.score("scifact_entailment", [ex(r, p) for r, p in zip(refs, preds)])["all"]
    assert res["label_p"] == 0.5 and res["label_r"] == 1.0
    assert res["evidence_token_f1"] == pytest.approx(prf_f1(2, 3, 2))


def test_scifact_non_object_answer_still_counts_the_reference():
    refs = [{"verdict": "SUPPORT", "evidence": ["x y"]}] * 2
    preds = ['{"verdict": "SUPPORT", "evidence": ["x y"]}', '["SUPPORT"]']
    res = metrics.score("scifact_entailment", [ex(r, p) for r, p in zip(refs, preds)])["all"]
    assert res["label_r"] == 0.5 and res["evidence_token_r"] == 0.5 and res["answer_not_object"] == 1


# --- Qasper, DiscoMat, generic ---------------------------------------------------------------

def test_qasper_answer_and_evidence_token_f1_and_judge_skipped():
    ref = {"answer": "BERT and RoBERTa", "evidence": ["We compare against BERT."]}
    pred = '{"answer": "BERT", "evidence": ["We compare against BERT."]}'
    res = metrics.score("qasper_abstractive_qa", [ex(ref, pred), ex(ref, "null")])
    assert res["all"]["answer_f1"] == pytest.approx(prf_f1(1, 1, 3) / 2)  # "and" is kept, "a/an/the" dropped
    assert res["all"]["evidence_f1"] == pytest.approx(0.5)
    assert res["headline"]["lm_judge_answer"] == "skipped" and res["judge"]["status"] == "skipped"
    assert res["parsed"]["evidence_f1"] == pytest.approx(0.5)  # null answers stay in the parsed view, as the release


def test_parsed_view_excludes_extract_failures():
    res = metrics.score("bioasq_list_qa", [ex(["a"], '["a"]'), ex(["b"], "no idea")])
    assert res["all"]["f1"] == pytest.approx(prf_f1(1, 1, 2))
    assert res["parsed"]["f1"] == 1.0
    assert res["parse"]["extract_failure"] == 1 and res["json_parse_rate"] == 0.5


def test_13a_tokenizer_splits_punctuation_but_not_decimals():
    assert metrics.tokenize_13a("Hello, world. Tg = 3.5 (1-2)") == ["Hello", ",", "world", ".", "Tg", "=", "3.5", "(", "1", "-", "2", ")"]


def test_bleu_matches_hand_computation():
    # precisions 5/6, 4/5, 3/4, 2/3; brevity penalty exp(1 - 7/6)
    expected = (5 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25 * math.exp(1 - 7 / 6)
    assert metrics.bleu(["a b c d e f"], ["a b c d e g x"]) == pytest.approx(expected)
    assert metrics.score("discomat_te", [ex("| 1 | 2 |", "| 1 | 2 |")])["headline"] == {"bleu": pytest.approx(1.0)}


def test_label_f1_is_macro_over_reference_labels():
    pairs = [("Uses", "Uses"), ("uses.", "Uses"), ("Background", "Motivation"), ('"Motivation"', "Motivation")]
    res = metrics.score("label_f1", [ex(r, p) for p, r in pairs])["all"]
    assert res["accuracy"] == 0.75
    assert res["f1"] == pytest.approx((1.0 + prf_f1(1, 1, 2)) / 2)


def test_token_f1_scorer_is_mean_squad_f1():
    res = metrics.score("token_f1", [ex("a beam search decoder", "beam search"), ex("x", "")])
    assert res["headline"]["f1"] == pytest.approx(prf_f1(2, 2, 3) / 2)


def test_registered_task_name_resolves_to_its_eval_scorer_and_unknown_fails_by_name():
    assert metrics.resolve_scorer("sciriff_4096_evidence_inference") == "evidence_inference"
    with pytest.raises(ValueError, match="no SciRIFF-Eval scorer for 'nope'"):
        metrics.score("nope", [])


def test_missing_prediction_field_names_the_example():
    with pytest.raises(ValueError, match="t:validation:7.*prediction"):
        metrics.score("bioasq_list_qa", [{"output": "[]", "_instance_id": "t:validation:7"}])


def test_table_mean_leaves_out_skipped_judge_metrics():
    row = {"a/f1": 0.5, "b/lm_judge": "skipped", "c/f1": 1.0}
    assert metrics.table_mean(row) == 0.75


# --- the real sample -------------------------------------------------------------------------

def test_perfect_and_empty_predictions_on_real_eval_sample(shared_sciriff):
    for path in sorted((shared_sciriff / "eval_sample").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()][:40]
        perfect = metrics.score(path.stem, [dict(r, prediction=r["output"]) for r in rows])
        empty = metrics.score(path.stem, [dict(r, prediction="") for r in rows])
        numbers = {k: v for k, v in perfect["headline"].items() if v != "skipped"}
        assert numbers and all(v == pytest.approx(1.0) for v in numbers.values()), (path.stem, numbers)
        assert all(v in (0.0, "skipped") for v in empty["headline"].values()), (path.stem, empty["headline"])
        assert perfect["json_parse_rate"] == 1.0 and empty["json_parse_rate"] == 0.0
