"""A rerun never shrinks a record: train_summary.json of a finished run, the predictions (and scores) of an eval
asking for fewer examples, the predictions `infer` left for `eval`, the records of metrics.jsonl."""
import json
import os
import shutil

import pytest

from sciriff_jax.chat.format import ChatFormat
from sciriff_jax.eval import evaluate
from tests.tiny_run import finished_tiny_run, train_tiny


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return finished_tiny_run(tmp_path_factory)


def test_rerunning_a_finished_run_leaves_its_train_summary_as_it_was(finished_run):
    before = (finished_run / "train_summary.json").read_text()
    assert json.loads(before)["steps"] == 2
    again = train_tiny(finished_run)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "nothing left to train" in again.stdout
    assert (finished_run / "train_summary.json").read_text() == before


def test_a_rerun_that_trains_further_appends_the_earlier_summary(finished_run):
    first = json.loads((finished_run / "train_summary.json").read_text())
    again = train_tiny(finished_run, "--gin.TRAIN_STEPS=3")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = json.loads((finished_run / "train_summary.json").read_text())
    assert summary["start_step"] == 2 and summary["final_step"] == 3
    assert summary["earlier_runs"] == [first]


def test_a_garbled_line_in_metrics_jsonl_stops_the_resume_naming_file_and_line(finished_run, tmp_path):
    run = tmp_path / "model"
    shutil.copytree(finished_run, run)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{garbled", *lines[1:]]) + "\n")
    again = train_tiny(run, "--gin.TRAIN_STEPS=9")
    assert again.returncode != 0
    assert f"{metrics}:2: not a JSON record ('{{garbled'); " in again.stderr and "fix or delete that line" in again.stderr
    assert metrics.read_text().splitlines()[1] == "{garbled"  # nothing dropped, nothing trained
    assert "9" not in os.listdir(run / "checkpoints")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import jax

    from sciriff_jax.io import checkpoint, tokenizer_files
    from sciriff_jax.model import llama
    from sciriff_jax.model.config import LlamaConfig
    from seqio_tasks import vocab as vocab_lib

    path = tmp_path_factory.mktemp("ckpt") / "model"
    config = LlamaConfig(vocab_size=1536, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                         num_kv_heads=1, max_position=1024, dtype="float32", param_dtype="float32")
    checkpoint.save_params(path, llama.init_params(config, jax.random.PRNGKey(0)), config)
    tokenizer_files.write_format(path / "tokenizer", ChatFormat(vocab_lib.get_vocabulary(), "tulu"))
    return str(path)


def _eval_config(max_examples):
    return evaluate.EvalConfig("sciriff_sample_ner", max_examples=max_examples, max_new_tokens=4, batch_size=2)


def test_an_eval_rerun_with_fewer_examples_keeps_and_scores_the_earlier_predictions(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    evaluate.evaluate_run(checkpoint_path=tiny_checkpoint, eval_config=_eval_config(3), output_dir=str(out),
                          dtype="float32")
    predictions = out / "predictions" / "sciriff_sample_ner.jsonl"
    before = predictions.read_text()
    capsys.readouterr()
    summary = evaluate.evaluate_run(checkpoint_path=tiny_checkpoint, eval_config=_eval_config(1), output_dir=str(out),
                                    dtype="float32")
    said = capsys.readouterr().out
    assert "holds 2 prediction(s) of an earlier run beyond the 1 asked for (MAX_EXAMPLES=1): kept" in said
    assert predictions.read_text() == before and len(before.splitlines()) == 3
    assert summary["tasks"]["sciriff_sample_ner"]["n"] == 3
    assert json.loads((out / "summary.json").read_text())["tasks"]["sciriff_sample_ner"]["n"] == 3


def test_eval_into_the_folder_infer_wrote_scores_those_predictions(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    inferred = evaluate.infer_run(checkpoint_path=tiny_checkpoint, eval_config=_eval_config(2), output_dir=str(out),
                                  dtype="float32")
    assert inferred["predictions"] == {"sciriff_sample_ner": 2} and not (out / "summary.json").exists()
    before = (out / "predictions" / "sciriff_sample_ner.jsonl").read_text()
    capsys.readouterr()
    summary = evaluate.evaluate_run(checkpoint_path=tiny_checkpoint, eval_config=_eval_config(2), output_dir=str(out),
                                    dtype="float32")
    assert "resuming: 2 prediction(s) already in" in capsys.readouterr().out
    assert (out / "predictions" / "sciriff_sample_ner.jsonl").read_text() == before
    assert summary["tasks"]["sciriff_sample_ner"]["n"] == 2 and (out / "summary.json").exists()
