"""GRPO's verifiable rewards give exactly what `sciriff-jax score` gives the same answer in a one-line file."""
import json

import pytest

from sciriff_jax.scoring import rewards, score
from sciriff_jax.scoring.metrics import EVAL_SCORERS, table_mean, table_row

SAMPLE_FILE = "seqio_tasks/data/sample/validation.jsonl"


def _variants(output: str) -> list[str]:
    """Answers of graded quality from a reference: perfect, half the entries + a wrong one, cut short, empty, prose."""
    out = [output + "</s>", output[: len(output) * 3 // 5], "", "I cannot answer that."]
    try:
        value = json.loads(output)
    except ValueError:
        words = output.split()
        return out + [" ".join(words[: len(words) // 2] + ["unrelated"])]
    if isinstance(value, list):
        out.append(json.dumps(value[: len(value) // 2] + ["a wrong entry"]))
    elif "verdict" in value:
        flipped = "SUPPORT" if value["verdict"] == "CONTRADICT" else "CONTRADICT"
        out.append(json.dumps({"verdict": flipped, "evidence": value["evidence"][:1]}))
    else:
        out.append(json.dumps({k: (v[: len(v) // 2] + ["wrong"] if isinstance(v, list) else v) for k, v in value.items()}))
    return out


def _score_cli(tmp_path, capsys, task, row, prediction) -> dict:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"_instance_id": f"{task}:validation:0", "output": row["output"],
                                "prediction": prediction}) + "\n")
    assert score.main(["--task", task, "--predictions", str(path), "--output", str(tmp_path / "m.json")]) == 0
    return json.loads(capsys.readouterr().out)


def _cases(shared_sciriff):
    rows = []
    for task in EVAL_SCORERS:
        path = shared_sciriff / "eval_sample" / f"{task}.jsonl"
        if path.exists() and not rewards.judge_scored(task):
            rows += [(task, json.loads(line)) for line in path.read_text().splitlines()[:3]]
    for line in open(SAMPLE_FILE).read().splitlines()[:20]:  # label_f1 / token_f1 / BLEU on free text
        row = json.loads(line)
        if not row["output"].lstrip().startswith(("[", "{")):
            rows += [("label_f1", row), ("token_f1", row), ("discomat_te", row)]
    return rows


def test_rewards_equal_sciriff_jax_score_on_single_instance_files(shared_sciriff, tmp_path, capsys):
    seen, values = set(), []
    for task, row in _cases(shared_sciriff):
        for prediction in _variants(row["output"]):
            printed = _score_cli(tmp_path, capsys, task, row, prediction)
            expected = table_mean(table_row({task: printed}))
            got = rewards.reward(rewards.check_rewardable(task), row["output"], prediction)
            assert got.task == expected and got.total == expected, (task, prediction[:80])
            parse = printed.get("parse")
            assert got.format == float(parse["extract_failure"] == 0 if parse else bool(prediction.strip()))
            assert 0.0 <= got.total <= 1.0
            seen.add(task)
            values.append(got.total)
    assert seen >= {"bioasq_list_qa", "biored_ner", "scierc_ner", "evidence_inference", "scifact_entailment",
                    "label_f1", "token_f1", "discomat_te"}
    assert 0.0 in values and 1.0 in values and any(0.0 < v < 1.0 for v in values)  # graded, not all-or-nothing


def test_format_term_and_judge_tasks():
    ref = '["a", "b"]'
    half = rewards.reward("bioasq_list_qa", ref, '["a"]', format_weight=1.0)
    assert half.task == pytest.approx(2 / 3) and half.format == 1.0 and half.total == pytest.approx((2 / 3 + 1) / 2)
    broken = rewards.reward("bioasq_list_qa", ref, "a, b", format_weight=0.5)
    assert broken.format == 0.0 and broken.total == 0.0
    for task in ("qasper_abstractive_qa", "sciriff_4096_mup_single_document_summarization"):
        with pytest.raises(ValueError, match="judge"):
            rewards.check_rewardable(task)
    assert rewards.check_rewardable("qasper_abstractive_qa", judge=object()) == "qasper_abstractive_qa"
    assert rewards.check_rewardable("sciriff_sample_ner", {"sample_ner": "scierc_ner"}) == "scierc_ner"
    with pytest.raises(ValueError, match="format_weight"):
        rewards.reward("token_f1", "x", "x", format_weight=-1)


def test_instance_variant_scores_scifact_nei_instances_and_leaves_the_rest_to_the_metric():
    nei = json.dumps({"verdict": "NEI", "evidence": []})
    support = json.dumps({"verdict": "SUPPORT", "evidence": ["Mice lived longer."]})
    # the metric: an NEI reference gives 0 to the right answer and to a wrong one alike
    assert rewards.reward("scifact_entailment", nei, nei).task == 0.0
    assert rewards.reward("scifact_entailment", nei, support).task == 0.0
    # the instance variant: right verdict and no evidence = 1; a wrong verdict with evidence = 0
    assert rewards.reward("scifact_entailment", nei, nei, variant="instance").task == 1.0
    assert rewards.reward("scifact_entailment", nei, support, variant="instance").task == 0.0
    # a SUPPORT reference: label accuracy + evidence token F1 (here both 1), a wrong verdict keeps its evidence term
    assert rewards.reward("scifact_entailment", support, support, variant="instance").task == 1.0
    contradict = json.dumps({"verdict": "CONTRADICT", "evidence": ["Mice lived longer."]})
    assert rewards.reward("scifact_entailment", support, contradict, variant="instance").task == 0.5
    # other scorers: the metric's number
    ref, pred = json.dumps(["a", "b"]), json.dumps(["a"])
    assert (rewards.reward("bioasq_list_qa", ref, pred, variant="instance").task
            == rewards.reward("bioasq_list_qa", ref, pred).task)
    with pytest.raises(ValueError, match="REWARD_VARIANT"):
        rewards.reward("bioasq_list_qa", ref, pred, variant="nei")
