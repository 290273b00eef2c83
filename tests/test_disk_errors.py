"""A full disk, a read-only folder or a permission error ends in one line naming the path and the OS error, at
every write (checkpoint, metrics, predictions, summaries), and loses nothing already written."""
import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from sciriff_jax.eval import evaluate
from sciriff_jax.eval.predictions import PredictionStore
from sciriff_jax.io import checkpoint, checksums, paths, writes
from sciriff_jax.run import errors
from sciriff_jax.train import run_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--gin_file=gin_configs/runs/demo.gin", "--gin.TRAIN_STEPS=4", "--gin.CHECKPOINT_PERIOD=2",
         "--gin.EVAL_AT_START=False", "--gin.DECODE_EVAL_MIXTURE_OR_TASK_NAME=None", "--mode=train",
         '--gin.TASK_FEATURE_LENGTHS={"targets": 64}', "--gin.BATCH_SIZE=8"]
# The disk fills while Orbax's background thread writes step 4 (a JSON item of the async save).
DISK_FULL_AT_STEP_4 = textwrap.dedent("""
    import errno, sys
    import orbax.checkpoint as ocp

    save = ocp.handlers.JsonCheckpointHandler._save_fn

    async def full_disk(self, x, directory):
        if "/4." in str(directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))
        return await save(self, x, directory)

    ocp.handlers.JsonCheckpointHandler._save_fn = full_disk
    from sciriff_jax.run import main
    sys.exit(main.main(sys.argv[1:]))
""")


def _run(args, timeout=300):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _disk_full(path):
    return OSError(errno.ENOSPC, "No space left on device", *([str(path)] if path else []))


def test_disk_full_during_an_async_checkpoint_is_one_line_and_the_previous_step_resumes(tmp_path):
    run = tmp_path / "run"
    done = _run(["-c", DISK_FULL_AT_STEP_4, *QUICK, f'--gin.MODEL_DIR="{run}"'])
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (line,) = _errors(done.stderr)
    assert "checkpoints/4" in line and "ENOSPC: No space left on device" in line
    assert checkpoint.step_dirs(run) == [run / "checkpoints" / "2"]  # step 4 never committed nor sealed
    assert checksums.verify(run / "checkpoints" / "2") is None
    again = _run(["-m", "sciriff_jax.main", *QUICK, f'--gin.MODEL_DIR="{run}"'])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {run}/checkpoints/2" in again.stdout
    assert checksums.verify(run / "checkpoints" / "4") is None


def test_an_os_error_from_tensorstore_is_raised_as_that_os_error_naming_the_file():
    err = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0.0" in OCDBT database at local file "/r/c/4.tmp/": '
                     'Failed writing: "/r/c/4.tmp/d/ab": Failed to write 63 bytes to file 7: No space left on '
                     "device [os_error_code='28']")
    found = checkpoint.os_error_of(RuntimeError("wrapped"), "/r/c/4")
    assert found is None
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = err
    found = checkpoint.os_error_of(wrapped, "/r/c/4")
    assert (found.errno, found.filename) == (errno.ENOSPC, "/r/c/4.tmp/d/ab")
    assert errors.message(found) == "/r/c/4.tmp/d/ab: ENOSPC: No space left on device"
    bare = checkpoint.os_error_of(OSError(errno.EROFS, "Read-only file system"), "/r/c/4")
    assert errors.message(bare) == "/r/c/4: EROFS: Read-only file system"


def test_a_failed_checksum_record_leaves_the_step_unsealed(tmp_path, monkeypatch):
    step = tmp_path / "4"
    step.mkdir()
    (step / "weights").write_bytes(b"x" * 100)
    real = type(paths.resolve(step)).write_text

    def full(self, text, **kw):
        real(self, text[:10], **kw)  # half a part, then the disk is full
        raise _disk_full(None)

    monkeypatch.setattr(type(paths.resolve(step)), "write_text", full)
    with pytest.raises(OSError) as raised:
        checksums.record(step)
    assert errors.message(raised.value).endswith("sciriff_checksums-00000-of-00001.json: ENOSPC: No space left on device")
    assert sorted(p.name for p in step.iterdir()) == ["weights"]  # no part, no temporary file
    assert "no checksums recorded" in checksums.verify(step)


def _append_fills_the_disk(monkeypatch, path):
    """The next append to any file writes 5 characters, then the disk is full."""
    real_open = type(path).open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[:5])
            self.f.flush()
            raise _disk_full(None)

    monkeypatch.setattr(type(path), "open", lambda self, mode="r", **kw: Full(real_open(self, mode, **kw)))


def test_disk_full_in_metrics_jsonl_names_it_and_keeps_the_earlier_records(tmp_path, monkeypatch):
    logger = run_log.RunLogger(tmp_path, total_steps=4, tokens_per_step=8, log_every=1, tensorboard=False)
    logger.log_train(1, {"loss": 2.0})
    before = (tmp_path / "metrics.jsonl").read_text()
    _append_fills_the_disk(monkeypatch, paths.resolve(tmp_path))
    with pytest.raises(OSError) as raised:
        logger.log_train(2, {"loss": 1.5})
    assert errors.message(raised.value) == f"{tmp_path}/metrics.jsonl: ENOSPC: No space left on device"
    assert (tmp_path / "metrics.jsonl").read_text() == before  # the cut-short line is taken back


def test_disk_full_in_predictions_names_the_file_and_keeps_the_rows_written(tmp_path, monkeypatch):
    store = PredictionStore(tmp_path, {"max_new_tokens": 8})
    store.add("task", {"_instance_id": "a", "prediction": "x"})
    _append_fills_the_disk(monkeypatch, paths.resolve(tmp_path))
    with pytest.raises(OSError) as raised:
        store.add("task", {"_instance_id": "b", "prediction": "y"})
    assert errors.message(raised.value) == (f"{tmp_path}/predictions/task.partial.jsonl: ENOSPC: "
                                            "No space left on device")
    monkeypatch.undo()  # the disk has room again
    assert list(store.finished("task")) == ["a"]


def test_dev_full_as_the_predictions_file_is_one_os_error_naming_it(tmp_path):
    store = PredictionStore(tmp_path, {"max_new_tokens": 8})
    os.symlink("/dev/full", tmp_path / "predictions" / "task.partial.jsonl")
    with pytest.raises(OSError) as raised:
        store.add("task", {"_instance_id": "a", "prediction": "x"})
    assert errors.message(raised.value) == (f"{tmp_path}/predictions/task.partial.jsonl: ENOSPC: "
                                            "No space left on device")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_summary_write_leaves_the_earlier_summary(tmp_path, monkeypatch, code):
    summary = {"tasks": {}, "table": {}, "mean": 0.5, "json_parse_rate": 1.0}
    evaluate.write_summary(summary, tmp_path)
    before = (tmp_path / "summary.json").read_text()
    real = type(paths.resolve(tmp_path)).write_text

    def failing(self, text, **kw):
        real(self, text[:3], **kw)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(type(paths.resolve(tmp_path)), "write_text", failing)
    with pytest.raises(OSError) as raised:
        evaluate.write_summary({**summary, "mean": 0.9}, tmp_path)
    assert errors.message(raised.value) == (f"{tmp_path}/summary.json: {errno.errorcode[code]}: "
                                            f"{os.strerror(code)}")
    assert (tmp_path / "summary.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "summary.md"]


def test_a_failed_train_summary_write_leaves_the_earlier_record(tmp_path, monkeypatch):
    from sciriff_jax.train import finetune

    path = paths.resolve(tmp_path) / "train_summary.json"
    path.write_text(json.dumps({"steps": 4}))
    monkeypatch.setattr(type(path), "write_text", lambda self, text, **kw: (_ for _ in ()).throw(_disk_full(None)))
    with pytest.raises(OSError) as raised:
        finetune.record_summary(path, {"steps": 2})
    assert errors.message(raised.value) == f"{path}: ENOSPC: No space left on device"
    assert json.loads(path.read_text()) == {"steps": 4}
