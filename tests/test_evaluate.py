"""SciRIFF-Eval runs: scorer lookup, scoring decoded records into the paper's table, outputs, gin wiring."""
import json

import pytest

from sciriff_jax.chat.format import ChatFormat
from sciriff_jax.eval import evaluate
from sciriff_jax.eval.protocol import TRAIN_FEWSHOT_DELIMITER, Protocol


def records_from(shared_sciriff, task, n, predict):
    lines = (shared_sciriff / "eval_sample" / f"{task}.jsonl").read_text().splitlines()[:n]
    rows = [json.loads(line) for line in lines]
    return [dict(r, task=task, prediction=predict(r)) for r in rows]


def test_table_mean_pooled_parse_rate_and_outputs(shared_sciriff, tmp_path):
    records = {"scierc_ner": records_from(shared_sciriff, "scierc_ner", 4, lambda r: r["output"]),
               "bioasq_list_qa": records_from(shared_sciriff, "bioasq_list_qa", 4, lambda r: "no answer"),
               "qasper_abstractive_qa": records_from(shared_sciriff, "qasper_abstractive_qa", 2, lambda r: r["output"])}
    summary = evaluate.score_records(records, {t: t for t in records})
    assert summary["table"] == {"scierc_ner/f1": 1.0, "bioasq_list_qa/f1": 0.0,
                                "qasper_abstractive_qa/lm_judge_answer": "skipped", "qasper_abstractive_qa/f1_evidence": 1.0}
    assert summary["mean"] == pytest.approx(2 / 3)
    assert summary["json_parse_rate"] == pytest.approx(6 / 10)

    evaluate.write_summary(summary, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["mean"] == pytest.approx(2 / 3)
    table = (tmp_path / "summary.md").read_text()
    assert "| bioasq_list_qa | f1 | 0.0 | 4 | 0.0 | 0 / 0 / 4 |" in table
    assert "| qasper_abstractive_qa | lm_judge_answer | skipped |" in table
    assert "| **mean** | 3 of 4 numbers | 66.7 |" in table

    flat = evaluate.flat_metrics(summary)
    assert flat["scierc_ner/json_parse_rate"] == 1.0 and flat["bioasq_list_qa/json_parse_rate"] == 0.0
    assert "qasper_abstractive_qa/lm_judge_answer" not in flat and flat["mean"] == pytest.approx(2 / 3)


def test_eval_gin_requires_a_checkpoint_and_binds_the_run():
    import gin

    from sciriff_jax.run import main

    with pytest.raises(main.GinConfigError, match="CHECKPOINT_PATH"):
        main.parse_gin(["gin_configs/runs/eval.gin"], [])
    main.parse_gin(["gin_configs/runs/eval.gin"], ['CHECKPOINT_PATH="/ckpt/x"', "MAX_EXAMPLES=5"])
    assert gin.query_parameter("%CHECKPOINT_PATH") == "/ckpt/x"
    assert str(gin.query_parameter("evaluate_run.checkpoint_path")) == "%CHECKPOINT_PATH"
    assert gin.query_parameter("%MAX_EXAMPLES") == 5
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "sciriff_4096_eval"
    main.parse_gin(["gin_configs/runs/infer.gin"], ['CHECKPOINT_PATH="/ckpt/y"'])
    assert gin.query_parameter("%CHECKPOINT_PATH") == "/ckpt/y"
    assert str(gin.query_parameter("EvalConfig.mixture_or_task_name")) == "%MIXTURE_OR_TASK_NAME"
    gin.clear_config()


def test_missing_checkpoint_path_is_reported_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="CHECKPOINT_PATH"):
        evaluate.load_checkpoint(str(tmp_path / "nope"), None, "float32", evaluate.EvalConfig(), None)


def test_one_shot_prompt_puts_another_solved_example_before_the_question():
    from sciriff_jax.chat import render

    examples = [{"input": f"question {i}", "output": f"answer {i}"} for i in range(5)]
    zero = Protocol("train").prompts(examples, ChatFormat(None, "tulu"), 0, "scierc_ner")
    assert zero == [render.render_prompt(e["input"], "tulu") for e in examples]
    one = Protocol("train").prompts(examples, ChatFormat(None, "tulu"), 1, "scierc_ner")
    for i, prompt in enumerate(one):
        shot, _, rest = prompt.partition(TRAIN_FEWSHOT_DELIMITER)
        assert rest == zero[i] and f"question {i}\n" not in shot
        j = int(shot.split("question ")[1][0])
        assert shot == zero[j] + f"answer {j}"
    assert one == Protocol("train").prompts(examples, ChatFormat(None, "tulu"), 1, "scierc_ner")  # seeded: the same shots every run


def test_real_eval_tasks_load_and_score_through_the_data_layer(shared_sciriff, monkeypatch):
    monkeypatch.setenv("SCIRIFF_JAX_DATA_DIR", str(shared_sciriff / "hub_layout"))
    loaded = evaluate.load_examples(["sciriff_4096_scierc_ner", "sciriff_4096_evidence_inference"], "validation", 3)
    assert {name: scorer for name, (_, scorer) in loaded.items()} == {
        "sciriff_4096_scierc_ner": "scierc_ner", "sciriff_4096_evidence_inference": "evidence_inference"}
    records = {name: [dict(ex, prediction=ex["output"]) for ex in examples] for name, (examples, _) in loaded.items()}
    summary = evaluate.score_records(records, {name: scorer for name, (_, scorer) in loaded.items()})
    assert summary["table"] == {"sciriff_4096_scierc_ner/f1": 1.0, "sciriff_4096_evidence_inference/f1_overlap": 1.0}
