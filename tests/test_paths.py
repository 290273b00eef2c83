"""Run paths: URLs (gs://, s3://) stay URLs, local paths become absolute, and run outputs go through epath.

The URL tests run on fsspec's in-memory filesystem answering to s3:// (no network): epath's fsspec backend, the
branch it takes for every non-local path when TensorFlow's gfile is not used. Orbax's array writes go through
TensorStore, which has no such offline filesystem, so Orbax checkpoints on a URL are not exercised here.
"""
import json

import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath as epath_gpath
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import _registry as fsspec_registry
from fsspec.utils import stringify_path

from sciriff_jax.io import checkpoint
from sciriff_jax.eval import evaluate
from sciriff_jax.io import convert
from sciriff_jax.train import run_log as logging_utils
from sciriff_jax.io import paths


class _InMemoryS3(MemoryFileSystem):
    """fsspec's in-memory filesystem under the s3:// protocol, with its own store."""

    protocol = "s3"
    root_marker = ""
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        return stringify_path(path).removeprefix("s3://").strip("/")


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    """An empty s3://bucket/run in memory; the working directory is an empty tmp_path, to catch local writes."""
    monkeypatch.setenv("EPATH_USE_TF", "false")  # epath's fsspec backend, not TF's gfile (no s3 in TF 2.21)
    epath_gpath._is_tf_installed.cache_clear()  # epath caches the choice: an earlier test may have made it with TF
    monkeypatch.setitem(fsspec_registry, "s3", _InMemoryS3)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.chdir(tmp_path)
    yield "s3://bucket/run"
    _InMemoryS3.store.clear()
    _InMemoryS3.pseudo_dirs[:] = [""]
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.undo()
    epath_gpath._is_tf_installed.cache_clear()
    assert list(tmp_path.iterdir()) == [], "a URL was written as a local path"


def test_resolve_leaves_urls_exactly_as_given():
    for url in ("gs://bucket/dir", "s3://bucket/a/b"):
        assert isinstance(paths.resolve(url), epath.Path)
        assert str(paths.resolve(url)) == url
        assert str(paths.resolve(url) / "checkpoints" / "3") == url + "/checkpoints/3"
        assert paths.is_url(url) and paths.is_url(paths.resolve(url))


def test_resolve_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert str(paths.resolve("run/x")) == str(tmp_path / "run" / "x")
    assert str(paths.resolve("~/x")) == str(tmp_path / "home" / "x")
    assert not paths.is_url("run/x") and not paths.is_url(tmp_path)


def test_resolve_rejects_a_scheme_epath_would_read_as_a_local_path():
    with pytest.raises(ValueError, match="no filesystem for 'memory://'"):
        paths.resolve("memory://x")


def test_metrics_and_operative_config_are_written_to_a_url(bucket, capsys):
    logger = logging_utils.RunLogger(bucket, total_steps=2, tokens_per_step=8, log_every=1, tensorboard=True)
    logger.log_train(1, {"loss": 2.0, "learning_rate": 1e-3})
    logger.log_eval(1, {"loss": 1.5})
    logger.close()
    assert [r["step"] for r in logging_utils.read_metrics(bucket)] == [1, 1]
    assert logging_utils.read_metrics(bucket)[1]["eval/loss"] == 1.5
    assert "TensorBoard events are written for a local MODEL_DIR only" in capsys.readouterr().out
    assert not epath.Path(bucket, "tensorboard").exists()
    logging_utils.save_operative_config(bucket, "finetune.batch_size = 8\n")
    assert epath.Path(bucket, "operative_config.gin").read_text() == "finetune.batch_size = 8\n"


def test_latest_committed_step_is_found_under_a_url(bucket):
    for step in ("3", "10", "20.orbax-checkpoint-tmp-1"):
        epath.Path(bucket, "checkpoints", step, "params").mkdir(parents=True)
    assert str(checkpoint.resolve_checkpoint_dir(bucket)) == bucket + "/checkpoints/10"
    assert str(evaluate.default_output_dir(bucket, "mix")) == bucket + "/eval/mix"
    with pytest.raises(FileNotFoundError, match="s3://bucket/missing"):
        checkpoint.resolve_checkpoint_dir("s3://bucket/missing")
    with pytest.raises(FileNotFoundError, match="s3://bucket/missing"):
        evaluate.load_checkpoint("s3://bucket/missing", None, "float32", evaluate.EvalConfig(), None)


def test_eval_predictions_and_summaries_are_written_to_a_url(bucket):
    import jax

    from sciriff_jax.model import llama
    from sciriff_jax.model.config import LlamaConfig
    from sciriff_jax.chat.format import ChatFormat
    from seqio_tasks import vocab as vocab_lib

    config = LlamaConfig(vocab_size=1536, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, max_position=1024, dtype="float32", param_dtype="float32")
    hook = evaluate.make_eval_hook(evaluate.EvalConfig("sciriff_sample_ner", max_examples=1, max_new_tokens=2, batch_size=1),
                                   config=config, chat_format=ChatFormat(vocab_lib.get_vocabulary(), "tulu"),
                                   output_dir=bucket + "/eval")
    hook(llama.init_params(config, jax.random.PRNGKey(0)), 5)
    out = epath.Path(bucket, "eval", "step_5")
    rows = (out / "predictions" / "sciriff_sample_ner.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["task"] == "sciriff_sample_ner"
    assert "sciriff_sample_ner" in json.loads((out / "summary.json").read_text())["tasks"]
    assert "| sciriff_sample_ner |" in (out / "summary.md").read_text()


def test_hugging_face_directories_must_be_local():
    with pytest.raises(ValueError, match="must be local"):
        convert.export_hf("unused", "gs://bucket/hf")
    with pytest.raises(ValueError, match="must be local"):
        convert.import_hf("gs://bucket/hf", "unused")
