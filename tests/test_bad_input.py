"""Bad input met as a user meets it (issue 21): null release fields, MAX_NEW_TOKENS past the context, a bad
`score --output`, a NaN loss in metrics.jsonl, an over-long integer in a prediction, a batch finishing at once.
Each stops with a message naming what and where, or is recorded as documented; nothing already there is lost."""
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sciriff_jax.scoring import score

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- release files with null or non-string fields ---------------------------------------------------------------


def _row(i, **fields):
    row = {"input": f"Question #{i}", "output": '["BRCA1"]', "_instance_id": f"bioasq_list_qa:validation:{i}",
           "metadata": {"task_family": "qa.list"}}
    return {**row, **fields}


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIRIFF_JAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_data_stats_stops_at_a_null_instance_id_naming_file_line_and_field(tmp_path, private_cache):
    release = tmp_path / "release"
    path = _write_jsonl(release / "4096" / "validation-00000-of-00001.jsonl", [_row(0), _row(1, _instance_id=None)])
    before = path.read_bytes()
    env = {**os.environ, "SCIRIFF_JAX_DATA_DIR": str(release), "SCIRIFF_JAX_CACHE": str(private_cache)}
    done = subprocess.run([sys.executable, "-m", "sciriff_jax.run.cli", "data", "stats", "sciriff_4096_bioasq_list_qa",
                           "--split", "validation"], capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{path}:2: '_instance_id' is null, not a string" in done.stderr.strip().splitlines()[-1]
    assert path.read_bytes() == before


def test_a_null_input_in_a_parquet_shard_stops_naming_file_row_and_field(tmp_path, private_cache):
    from seqio_tasks import sources

    (tmp_path / "4096").mkdir()
    path = tmp_path / "4096" / "validation-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([_row(0), _row(1, input=None)]), path)
    with pytest.raises(ValueError, match=r"validation-00000-of-00001.parquet: row 2: 'input' is null, not a string"):
        sources.get_builder(4096, str(tmp_path))


@pytest.mark.parametrize("field,value,shown", [("input", 3, "int 3"), ("_instance_id", 7, "int 7"),
                                                ("output", ["a"], 'list ["a"]'), ("input", None, "null")])
def test_a_release_field_that_is_not_text_is_refused_naming_file_line_and_field(tmp_path, field, value, shown):
    from seqio_tasks import sources

    path = _write_jsonl(tmp_path / "x.jsonl", [_row(0), _row(1, **{field: value})])
    with pytest.raises(ValueError, match=re.escape(f"x.jsonl:2: '{field}' is {shown}, not a string")):
        sources.read_jsonl(path)


def test_a_null_output_is_skipped_and_counted_never_trained_as_none(tmp_path, private_cache, capsys):
    from seqio_tasks import sources

    _write_jsonl(tmp_path / "4096" / "validation-00000-of-00001.jsonl", [_row(0), _row(1, output=None), _row(2)])
    src = sources.SciriffTaskSource(4096, "bioasq_list_qa", source_dir=str(tmp_path))
    got = list(src.get_dataset("validation", shuffle=False).as_numpy_iterator())
    assert [g["_instance_id"].decode() for g in got] == ["bioasq_list_qa:validation:0", "bioasq_list_qa:validation:2"]
    assert sources.empty_outputs(4096, "validation", str(tmp_path)) == {"bioasq_list_qa": 1}
    assert "bioasq_list_qa: skipped 1 instance(s) with an empty or null output" in capsys.readouterr().out


# --- MAX_NEW_TOKENS against the model's context -----------------------------------------------------------------


@pytest.fixture(scope="module")
def short_context_checkpoint(tmp_path_factory):
    """An Orbax checkpoint of a tiny model whose context (max_position) is 64 tokens."""
    import jax

    from sciriff_jax.io import checkpoint
    from sciriff_jax.model import llama
    from sciriff_jax.model.config import LlamaConfig

    config = LlamaConfig(vocab_size=1536, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, max_position=64, dtype="float32", param_dtype="float32")
    path = tmp_path_factory.mktemp("short") / "ckpt"
    checkpoint.save_params(path, llama.init_params(config, jax.random.PRNGKey(0)), config)
    return config, path


@pytest.mark.parametrize("run", ["evaluate_run", "infer_run"])
@pytest.mark.parametrize("max_new_tokens", [64, 100])
def test_max_new_tokens_not_below_the_context_is_refused_with_the_numbers_before_decoding(
        short_context_checkpoint, tmp_path, run, max_new_tokens):
    from sciriff_jax.eval import evaluate

    _, path = short_context_checkpoint
    eval_config = evaluate.EvalConfig("sciriff_sample_list_qa", max_examples=1, max_new_tokens=max_new_tokens)
    with pytest.raises(ValueError, match=rf"max_new_tokens={max_new_tokens} \(--gin.MAX_NEW_TOKENS\) is not below the "
                                         r"context of .*ckpt, max_position=64 tokens.* at most 63"):
        getattr(evaluate, run)(checkpoint_path=str(path), eval_config=eval_config, output_dir=str(tmp_path / "out"),
                               dtype="float32")
    assert not (tmp_path / "out").exists()


def test_an_eval_command_with_max_new_tokens_past_the_context_ends_with_one_line(short_context_checkpoint, tmp_path):
    _, path = short_context_checkpoint
    done = subprocess.run([sys.executable, "-m", "sciriff_jax.main", "--gin_file=runs/eval.gin",
                           f'--gin.CHECKPOINT_PATH="{path}"', '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample_list_qa"',
                           "--gin.MAX_NEW_TOKENS=64", f'--gin.OUTPUT_DIR="{tmp_path / "out"}"'],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: max_new_tokens=64 (--gin.MAX_NEW_TOKENS) is not below the context of") and "Traceback" not in done.stderr
    assert "max_position=64 tokens" in done.stderr and not (tmp_path / "out").exists()


def test_the_training_decode_eval_refuses_max_new_tokens_past_the_context_when_it_is_set_up(short_context_checkpoint):
    from sciriff_jax.eval import evaluate

    config, _ = short_context_checkpoint
    with pytest.raises(ValueError, match=r"max_new_tokens=64 \(infer_eval/EvalConfig.max_new_tokens\).*max_position=64"):
        evaluate.make_eval_hook(evaluate.EvalConfig("sciriff_sample_list_qa", max_new_tokens=64), config=config,
                                chat_format=None)


def test_prompts_are_still_cut_to_the_room_the_answer_leaves():
    from sciriff_jax.chat.format import ChatFormat
    from seqio_tasks import vocab as vocab_lib

    fmt = ChatFormat(vocab_lib.get_vocabulary(), "tulu")
    text = " ".join(["word"] * 40)
    (cut,) = fmt.encode_prompts([text], add_bos=False, max_position=64, max_new_tokens=60)
    assert cut == fmt.encode(text)[-4:]
    with pytest.raises(ValueError, match="max_new_tokens=64 leaves no room for a prompt .* 64 tokens"):
        fmt.encode_prompts([text], add_bos=False, max_position=64, max_new_tokens=64)


# --- `sciriff-jax score --output` -------------------------------------------------------------------------------


def _predictions(tmp_path, prediction='["a"]'):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"_instance_id": "bioasq_list_qa:validation:0", "output": '["a"]',
                                "prediction": prediction}) + "\n")
    return path


def _unwritable(tmp_path):
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o500)
        return folder / "m.json"
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("running as root without /sys: no unwritable place to try")
    return "/sys/kernel/sciriff-m.json"  # root may write almost anywhere, not into sysfs


@pytest.mark.parametrize("case", ["a directory", "a missing folder", "a file as folder", "unwritable"])
def test_a_bad_score_output_stops_before_scoring_with_one_line(tmp_path, capsys, monkeypatch, case):
    monkeypatch.delenv("SCIRIFF_JUDGE_URL", raising=False)
    path = _predictions(tmp_path)
    output, message = {"a directory": (tmp_path, "is a directory"),
                       "a missing folder": (tmp_path / "nope" / "m.json", "does not exist"),
                       "a file as folder": (path / "m.json", "is not a folder"),
                       "unwritable": (_unwritable(tmp_path), "cannot be written")}[case]
    scored = []
    monkeypatch.setattr(score, "score_file", lambda *a, **k: scored.append(1))
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(path), "--output", str(output)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and not scored
    assert err.count("\n") == 1 and err.startswith(f"error: --output {output}: ") and message in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "readonly") == ["p.jsonl"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) to stand for a full disk")
def test_a_full_disk_after_scoring_keeps_the_metrics_on_stdout_and_ends_with_one_line():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = _predictions(pathlib.Path(folder))
        done = subprocess.run([sys.executable, "-m", "sciriff_jax.run.cli", "score", "--task", "bioasq_list_qa",
                               "--predictions", str(path), "--output", "/dev/full"], capture_output=True, text=True,
                              timeout=120, cwd=REPO_ROOT, env={k: v for k, v in os.environ.items()
                                                               if k != "SCIRIFF_JUDGE_URL"})
    assert done.returncode == 2
    assert json.loads(done.stdout)["headline"]["f1"] == 1.0
    assert done.stderr.strip().splitlines()[-1].startswith("error: could not write the metrics to /dev/full: "
                                                           "No space left on device")
    assert "Traceback" not in done.stderr


# --- smaller ones -----------------------------------------------------------------------------------------------


def test_an_over_long_integer_in_a_prediction_is_a_parse_failure(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SCIRIFF_JUDGE_URL", raising=False)
    path = _predictions(tmp_path, prediction="[" + "9" * 5000 + "]")
    assert score.main(["--task", "bioasq_list_qa", "--predictions", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["parse"]["valid_json"] == 0 and printed["parse"]["extract_failure"] == 1
    assert printed["headline"]["f1"] == 0.0


def _strict(line):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def test_a_nan_loss_keeps_metrics_jsonl_strict_json_and_reads_back(tmp_path):
    from sciriff_jax.train import run_log

    logger = run_log.RunLogger(tmp_path, total_steps=2, tokens_per_step=8, log_every=1, tensorboard=False)
    logger.log_train(1, {"loss": float("nan"), "grad_norm": float("inf"), "learning_rate": 1e-3})
    logger.log_train(2, {"loss": 1.5, "grad_norm": 0.5, "learning_rate": 1e-3})
    lines = [_strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] is None and lines[0]["nonfinite"] == {"loss": "nan", "grad_norm": "inf"}
    assert "nonfinite" not in lines[1]
    first, second = run_log.read_metrics(tmp_path)
    assert math.isnan(first["loss"]) and first["grad_norm"] == math.inf and "nonfinite" not in first
    assert second["loss"] == 1.5


def test_a_batch_finishing_at_once_does_not_read_as_thousands_of_instances_per_second():
    from sciriff_jax.eval.progress import Progress

    now, lines = [100.0], []
    p = Progress(128, "mix", every_s=0.0, clock=lambda: now[0], out=lambda line, flush: lines.append(line))
    now[0] = 160.0  # compiling took a minute, then 64 rows finish within a millisecond
    for _ in range(64):
        p.update(10)
        now[0] += 0.00001
    assert "1.07 instances/s" in lines[-1]  # 64 over the minute since the start
    now[0] = 170.0  # a window of 10 s from the first finished instance: the pace since then
    p.update(10)
    assert "6.40 instances/s" in lines[-1]
