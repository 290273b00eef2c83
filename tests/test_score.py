"""`sciriff-jax score`: scoring a predictions JSONL from any model, on the real SciRIFF-Eval sample."""
import json

import pytest

from sciriff_jax.scoring import score


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
    path.write_text('{"_instance_id": "bioasq_list_qa:validation:0", "output": "[]", "prediction": "[]"}\n'
                    '{"output": "[]", "prediction": \n')
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(path)]) == 2
    assert f"{path}:2: not a JSON object" in capsys.readouterr().err


def test_missing_prediction_field_is_reported_with_file_and_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [{"_instance_id": "bioasq_list_qa:validation:0", "output": "[]",
                                               "prediction": "[]"},
                                              {"_instance_id": "bioasq_list_qa:validation:1", "output": "[]"}])
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(path)]) == 2
    assert f"{path}:2: missing field(s) prediction" in capsys.readouterr().err


def test_reference_that_is_not_json_names_file_and_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", [{"_instance_id": "scierc_ner:validation:0", "output": "Uses",
                                               "prediction": "Uses"}])
    assert score.main(["--task", "scierc_ner", "--predictions", str(path)]) == 2
    assert f"{path}:1" in capsys.readouterr().err


def test_file_with_task_field_scores_each_task_and_the_table_mean(tmp_path, capsys):
    rows = [{"_instance_id": "bioasq_list_qa:validation:0", "task": "bioasq_list_qa", "output": '["a"]',
             "prediction": '["a"]'},
            {"_instance_id": "sample_classification:validation:0", "task": "sciriff_sample_classification",
             "scorer": "label_f1", "output": "Uses", "prediction": "Background"}]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    assert score.main(["--predictions", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["table"] == {"bioasq_list_qa/f1": 1.0, "sciriff_sample_classification/f1": 0.0}
    assert printed["tasks"]["sciriff_sample_classification"]["scorer"] == "label_f1"
    assert printed["mean"] == 0.5


def test_scorer_imports_neither_tensorflow_nor_jax():
    import subprocess
    import sys

    code = ("import sys; from sciriff_jax.scoring import judge, metrics, score; "
            "heavy = [m for m in ('tensorflow', 'jax', 'seqio') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ----------------------------------------------------------------------------- never silently wrong

def _ids(task, n):
    return [f"{task}:validation:{i}" for i in range(n)]


def _lines(task, outputs, predictions=None):
    return [{"_instance_id": iid, "output": out, "prediction": (predictions or outputs)[i]}
            for i, (iid, out) in enumerate(zip(_ids(task, len(outputs)), outputs))]


def test_ids_from_another_task_are_refused_naming_file_line_and_task(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bioasq.jsonl", _lines("bioasq_list_qa", ['["a"]', '["b"]']))
    for wrong in ("biored_ner", "evidence_inference"):
        assert score.main(["--task", wrong, "--predictions", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{path}:1: instance 'bioasq_list_qa:validation:0' is not from task {wrong!r}" in err
    assert score.main(["--task", "sciriff_4096_bioasq_list_qa", "--predictions", str(path)]) == 0


def test_duplicate_ids_are_refused_naming_both_lines(tmp_path, capsys):
    rows = _lines("bioasq_list_qa", ['["a"]', '["b"]'])
    path = write_jsonl(tmp_path / "p.jsonl", rows + [rows[0]])
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(path)]) == 2
    assert f"{path}:3: duplicate instance 'bioasq_list_qa:validation:0' (also at {path}:1)" in capsys.readouterr().err


def test_with_references_unknown_ids_and_changed_outputs_are_refused_and_missing_ones_counted(tmp_path, capsys):
    refs = write_jsonl(tmp_path / "validation.jsonl", _lines("bioasq_list_qa", ['["a"]', '["b"]', '["c"]']))
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"_instance_id": "bioasq_list_qa:validation:9",
                                                        "output": '["z"]', "prediction": '["z"]'}])
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(unknown), "--references", str(refs)]) == 2
    assert f"{unknown}:1: instance 'bioasq_list_qa:validation:9' is not in the references ({refs})" in \
        capsys.readouterr().err
    changed = write_jsonl(tmp_path / "changed.jsonl", _lines("bioasq_list_qa", ['["a"]', '["x"]']))
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(changed), "--references", str(refs)]) == 2
    assert f"{changed}:2: 'output' of 'bioasq_list_qa:validation:1' differs" in capsys.readouterr().err
    partial = write_jsonl(tmp_path / "partial.jsonl", _lines("bioasq_list_qa", ['["a"]', '["b"]']))
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(partial), "--references", str(refs)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n_missing"] == 1 and "1 reference instance(s) have no prediction" in err


def test_output_may_not_be_an_input(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", _lines("bioasq_list_qa", ['["a"]']))
    before = path.read_bytes()
    for output in (str(path), str(tmp_path / "." / "p.jsonl")):
        assert score.main(["--task", "bioasq_list_qa", "--predictions", str(path), "--output", output]) == 2
        assert "is the input file" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_deep_nesting_and_huge_integers_in_predictions_get_a_defined_score(tmp_path, capsys):
    hostile = ["[" * 100_000 + "]" * 100_000, '{"a": ' * 5000 + "1" + "}" * 5000, "[" + "9" * 10_000 + "]",
               "[" * 150 + '"a"' + "]" * 150, '["a", ' + "[" * 2000 + "]" * 2000 + "]"]
    path = write_jsonl(tmp_path / "p.jsonl", _lines("bioasq_list_qa", ['["a"]'] * len(hostile), hostile))
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == len(hostile) and 0.0 <= printed["headline"]["f1"] <= 1.0
    assert printed["parse"]["extract_failure"] == 5  # the 10,000-digit integer too (README: a parse failure)


def test_deep_or_huge_values_in_the_file_itself_name_file_and_line(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    good = json.dumps(_lines("bioasq_list_qa", ['["a"]'])[0])
    for bad, what in (('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
                      ('{"x": ' + "9" * 5000 + "}", "unreadable JSON value")):
        path.write_text(good + "\n" + bad + "\n")
        assert score.main(["--task", "bioasq_list_qa", "--predictions", str(path)]) == 2
        assert f"{path}:2: {what}" in capsys.readouterr().err


@pytest.mark.parametrize("field,value", [("task", 7), ("scorer", ["label_f1"]), ("_instance_id", 3),
                                         ("output", {"a": 1}), ("prediction", [1]), ("input", None)])
def test_a_field_of_the_wrong_type_names_file_line_and_field(tmp_path, capsys, field, value):
    row = {**_lines("bioasq_list_qa", ['["a"]'])[0], "task": "bioasq_list_qa", field: value}
    path = write_jsonl(tmp_path / "p.jsonl", [row])
    assert score.main(["--predictions", str(path)]) == 2
    assert f"{path}:1: '{field}' must be" in capsys.readouterr().err


def test_a_reference_of_the_wrong_shape_is_a_named_error(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", _lines("scifact_entailment", ['["SUPPORT"]']))
    assert score.main(["--task", "scifact_entailment", "--predictions", str(path)]) == 2
    assert f"{path}:1" in capsys.readouterr().err


@pytest.mark.parametrize("encoding,hint", [("latin-1", ""), ("utf-16", "UTF-16")])
def test_a_file_that_is_not_utf8_names_file_and_line(tmp_path, capsys, encoding, hint):
    path = tmp_path / "p.jsonl"
    first = json.dumps(_lines("bioasq_list_qa", ['["a"]'])[0])
    second = json.dumps(dict(_lines("bioasq_list_qa", ['["a"]', '["b"]'])[1], prediction='["é"]'),
                        ensure_ascii=False)
    path.write_bytes((first + "\n").encode("utf-8") + (second + "\n").encode(encoding) if encoding == "latin-1"
                     else (first + "\n" + second + "\n").encode(encoding))
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{2 if encoding == 'latin-1' else 1}: not UTF-8 text" in err and hint in err


def test_the_cli_scores_a_sample_task_by_its_name_with_the_scorer_the_data_layer_declares(tmp_path, capsys):
    from sciriff_jax.run import cli

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"_instance_id": "sample_ner:validation:0", "output": '{"Method": ["x"]}',
                                "prediction": '{"Method": ["x"]}'}) + "\n")
    assert cli.main(["score", "--task", "sciriff_sample_ner", "--predictions", str(path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["task"], result["scorer"], result["headline"]) == ("sciriff_sample_ner", "scierc_ner", {"f1": 1.0})
    assert score.main(["--task", "sciriff_sample_ner", "--predictions", str(path)]) == 2  # the leaf alone: no table
