"""`sciriff-jax score`: scoring a predictions JSONL from any model, on the real SciRIFF-Eval sample."""
import json

import pytest

from sciriff_jax.eval import score


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sample_rows(shared_sciriff, task, n=30):
    lines = (shared_sciriff / "eval_sample" / f"{task}.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("task", ["bioasq_list_qa", "biored_ner", "evidence_inference", "qasper_abstractive_qa",
                                  "scierc_ner", "scifact_entailment"])
def test_perfect_predictions_score_one_and_empty_score_zero(shared_sciriff, tmp_path, capsys, monkeypatch, task):
    monkeypatch.delenv("SCIRIFF_JUDGE_URL", raising=False)
    rows = sample_rows(shared_sciriff, task)
    perfect = write_jsonl(tmp_path / "perfect.jsonl", [{"_instance_id": r["_instance_id"], "output": r["output"],
                                                         "prediction": r["output"] + "</s>"} for r in rows])
    assert score.main(["--task", task, "--predictions", str(perfect)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "perfect.metrics.json").read_text())
    numbers = [v for v in printed["headline"].values() if v != "skipped"]
    assert numbers and all(v == pytest.approx(1.0) for v in numbers)
    if task == "qasper_abstractive_qa":
        assert printed["headline"]["lm_judge_answer"] == "skipped"

    empty = write_jsonl(tmp_path / "empty.jsonl", [dict(r, prediction="") for r in rows])
    assert score.main(["--task", task, "--predictions", str(empty)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert all(v in (0.0, "skipped") for v in printed["headline"].values())
    assert printed["parse"]["extract_failure"] == len(rows)


def test_bad_line_is_reported_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text('{"output": "[]", "prediction": "[]"}\n{"output": "[]", "prediction": \n')
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(path)]) == 2
    assert f"{path}:2: not a JSON object" in capsys.readouterr().err


def test_missing_prediction_field_is_reported_with_file_and_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [{"output": "[]", "prediction": "[]"}, {"output": "[]"}])
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(path)]) == 2
    assert f"{path}:2: missing field(s) prediction" in capsys.readouterr().err


def test_reference_that_is_not_json_names_file_and_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [{"output": "Uses", "prediction": "Uses"}])
    assert score.main(["--task", "scierc_ner", "--predictions", str(path)]) == 2
    assert f"{path}:1" in capsys.readouterr().err


def test_file_with_task_field_scores_each_task_and_the_table_mean(tmp_path, capsys):
    rows = [{"task": "bioasq_list_qa", "output": '["a"]', "prediction": '["a"]'},
            {"task": "sciriff_sample_classification", "scorer": "label_f1", "output": "Uses", "prediction": "Background"}]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    assert score.main(["--predictions", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["table"] == {"bioasq_list_qa/f1": 1.0, "sciriff_sample_classification/f1": 0.0}
    assert printed["tasks"]["sciriff_sample_classification"]["scorer"] == "label_f1"
    assert printed["mean"] == 0.5


def test_scorer_imports_neither_tensorflow_nor_jax():
    import subprocess
    import sys

    code = ("import sys; from sciriff_jax.eval import judge, metrics, score; "
            "heavy = [m for m in ('tensorflow', 'jax', 'seqio') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
