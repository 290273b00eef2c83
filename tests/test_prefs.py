"""`sciriff-jax data prefs`: sampled answers scored by the task's own metric -> chosen / rejected pairs, ties and
unparseable answers counted, a folder the preference tasks read."""
import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sciriff_jax.eval.prefs import PrefsConfig, Sample, build, pair_of  # noqa: E402


def test_best_is_chosen_worst_rejected_and_unparseable_ranks_last():
    outcome, chosen, rejected = pair_of([Sample("a", 0.2, True), Sample("b", 0.9, True), Sample("c", 1.0, False)])
    assert (outcome, chosen.text, rejected.text) == ("pair", "b", "c")
    assert pair_of([Sample("a", 0.5, True), Sample("b", 0.5, True)])[0] == "tie"
    assert pair_of([Sample("a", 0.0, False), Sample("b", 0.0, False)])[0] == "unparseable"
    assert pair_of([Sample("a", 0.0, True), Sample("b", 0.0, False)])[0] == "pair"  # parses vs does not
    assert pair_of([Sample("x", 0.1, True), Sample("x", 0.1, True), Sample("y", 0.1, True)])[0] == "tie"


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """A finetune run's MODEL_DIR: a one-layer model trained 6 steps on the built-in sample (its own vocabulary),
    enough that its samples share some words with the references and differ in score."""
    from sciriff_jax.data.batches import DataConfig
    from sciriff_jax.model.config import LlamaConfig
    from sciriff_jax.parallel.sharding import MeshConfig
    from sciriff_jax.train.finetune import TrainConfig, finetune
    from sciriff_jax.train.optim import OptimizerConfig

    model_dir = tmp_path_factory.mktemp("sft") / "run"
    finetune(TrainConfig(model_dir=str(model_dir), train_steps=6, batch_size=8, checkpoint_period=6, log_every=3,
                         tensorboard=False, async_checkpoints=False),
             DataConfig(mixture_or_task_name="sciriff_sample", task_feature_lengths={"targets": 256}),
             LlamaConfig(vocab_size=1536, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2,
                         num_kv_heads=1, max_position=2048, dtype="float32"),
             OptimizerConfig(learning_rate=3e-3, warmup_ratio=0.0, schedule="constant"), MeshConfig(layout="fsdp"))
    return model_dir


def test_prefs_writes_pairs_the_preference_task_reads_and_counts_every_instance(sample_run, tmp_path):
    from sciriff_jax.io import loader
    from seqio_tasks import preferences

    settings = PrefsConfig(samples=4, max_new_tokens=48, max_examples=4, split="validation", batch_size=16)
    summary = build(str(sample_run), "sciriff_sample_summarization", str(tmp_path / "prefs"), settings)
    counts = summary["tasks"]["sciriff_sample_summarization"]
    assert counts["instances"] == 4
    assert counts["pairs"] + counts["tie"] + counts["unparseable"] + counts["identical"] == 4
    assert counts["pairs"] > 0
    rows = [json.loads(line) for line in
            (tmp_path / "prefs" / "sciriff_sample_summarization" / "validation-00000-of-00001.jsonl").open()]
    assert len(rows) == counts["pairs"] and all(r["chosen_score"] > r["rejected_score"] for r in rows)
    assert json.loads((tmp_path / "prefs" / "prefs_summary.json").read_text())["totals"]["pairs"] == counts["pairs"]
    name = preferences.register(tmp_path / "prefs", loader.resolve_chat_format(sample_run))
    assert preferences.count_pairs(name, split="validation", length=2048) == (counts["pairs"], 0)


def test_a_json_task_whose_samples_never_parse_makes_no_pairs_and_says_so(sample_run, tmp_path):
    settings = PrefsConfig(samples=2, max_new_tokens=4, max_examples=3, split="validation", batch_size=8)
    with pytest.raises(ValueError, match="no preference pairs"):
        build(str(sample_run), "sciriff_sample_ner", str(tmp_path / "prefs"), settings)
    summary = json.loads((tmp_path / "prefs" / "prefs_summary.json").read_text())
    assert summary["tasks"]["sciriff_sample_ner"]["unparseable"] == 3
    assert summary["tasks"]["sciriff_sample_ner"]["unparseable_samples"] == 6


def test_dpo_trains_from_a_finetune_runs_model_dir_on_pairs_built_from_its_samples(sample_run, tmp_path):
    import math

    from sciriff_jax.data.preferences import PreferenceDataConfig
    from sciriff_jax.parallel.sharding import MeshConfig
    from sciriff_jax.train.dpo import dpo
    from sciriff_jax.train.finetune import TrainConfig
    from sciriff_jax.train.optim import OptimizerConfig

    settings = PrefsConfig(samples=4, max_new_tokens=48, max_examples=8, split="train", batch_size=32)
    build(str(sample_run), "sciriff_sample_summarization", str(tmp_path / "prefs"), settings)
    summary = dpo(TrainConfig(model_dir=str(tmp_path / "dpo"), train_steps=2, batch_size=4,
                              initial_checkpoint_path=str(sample_run), log_every=1, tensorboard=False,
                              async_checkpoints=False),
                  PreferenceDataConfig(path=str(tmp_path / "prefs"), length=384),
                  optimizer=OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0, schedule="constant"),
                  mesh=MeshConfig(layout="fsdp"))
    assert abs(summary["first_loss"] - math.log(2)) < 1e-5 and summary["steps"] == 2
    assert summary["preference"]["pairs"] > 0
