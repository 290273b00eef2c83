"""The gin-configured run: finetune.gin defaults (SciTulu recipe), required macros, and `finetune()` wiring."""
import json

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT
from sciriff_jax.io import checkpoint
from sciriff_jax.data import batches as data
from sciriff_jax.train import finetune as ft
from sciriff_jax.run import main
from sciriff_jax.train import step as train
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import Llama, init_params
from sciriff_jax.data.batches import DataConfig
from sciriff_jax.train.optim import OptimizerConfig

CFG = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                  dtype="float32")
DATA = DataConfig("sciriff_sample", {"targets": 16}, source="synthetic")
TRAIN = dict(batch_size=8, log_every=1, tensorboard=False, checkpoint_period=10)


def run(model_dir, *, model=None, operative_config=None, **train):
    return ft.finetune(ft.TrainConfig(model_dir=model_dir, **TRAIN, **train), DATA, model,
                       OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0), operative_config=operative_config)


def test_finetune_gin_defaults_are_the_scitulu_recipe():
    main.parse_gin([str(REPO_ROOT / "gin_configs/models/tiny.gin"), str(REPO_ROOT / "gin_configs/runs/finetune.gin")],
                     ['MODEL_DIR="/tmp/x"', 'MIXTURE_OR_TASK_NAME="sciriff_sample"'])
    try:
        q = lambda name: gin.query_parameter(f"TrainConfig.{name}")  # noqa: E731
        macro = lambda name: gin.query_parameter(name + "/macro.value")  # noqa: E731
        assert macro("LEARNING_RATE") == 2e-5 and macro("WARMUP_RATIO") == 0.03 and macro("SCHEDULE") == "linear"
        assert macro("WEIGHT_DECAY") == 0.0 and macro("BATCH_SIZE") == 128 and macro("NUM_EPOCHS") == 2.0
        assert macro("TASK_FEATURE_LENGTHS") == {"targets": 4096} and macro("TRAIN_STEPS") is None
        for name in ("model_dir", "train_steps", "batch_size", "initial_checkpoint_path"):
            assert q(name) is not None or name in ("train_steps", "initial_checkpoint_path")
        for selector in ("train/DataConfig.mixture_or_task_name", "train/DataConfig.use_cached_tasks",
                         "OptimizerConfig.learning_rate"):
            assert gin.query_parameter(selector) is not None
    finally:
        gin.clear_config()


def test_model_dir_and_mixture_are_required():
    with pytest.raises(main.GinConfigError, match="MIXTURE_OR_TASK_NAME, MODEL_DIR"):
        main.parse_gin([str(REPO_ROOT / "gin_configs/models/tiny.gin"),
                          str(REPO_ROOT / "gin_configs/runs/finetune.gin")], [])
    gin.clear_config()


def test_finetune_starts_from_the_initial_checkpoint_and_a_rerun_resumes(tmp_path):
    params = init_params(CFG, jax.random.PRNGKey(42))
    checkpoint.save_params(tmp_path / "init", params, CFG)
    out = run(str(tmp_path / "run"), train_steps=3, initial_checkpoint_path=str(tmp_path / "init"),
              operative_config="finetune.x = 1\n")
    # the first logged loss is the imported model's loss on the first batch
    batch = next(data.synthetic_local_batches(vocab_size=64, length=16, rows=(0, 8), seed=0))
    l, w = train.make_loss_fn(Llama(CFG))(params, {k: jnp.asarray(v) for k, v in batch.items()})
    assert out["first_loss"] == pytest.approx(float(l / w), rel=1e-5)
    assert out["steps"] == 3 and out["final_step"] == 3
    assert (tmp_path / "run" / "operative_config.gin").read_text() == "finetune.x = 1\n"
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["last_loss"] == out["last_loss"]
    restored, cfg = checkpoint.load_params(tmp_path / "run")  # training output loads like an imported model
    assert cfg == CFG
    assert not np.allclose(restored["embedding"], params["embedding"])
    # the same command again finds the finished run's checkpoint and has nothing left to do
    again = run(str(tmp_path / "run"), train_steps=3, initial_checkpoint_path=str(tmp_path / "init"))
    assert again["start_step"] == 3 and again["steps"] == 0


def test_a_hugging_face_directory_is_an_initial_checkpoint_through_the_same_loader(tmp_path):
    from sciriff_jax.io.hf import write_hf

    params = init_params(CFG, jax.random.PRNGKey(42))
    checkpoint.save_params(tmp_path / "orbax", params, CFG)
    write_hf(params, CFG, tmp_path / "hf")
    from_orbax = run(str(tmp_path / "run_orbax"), train_steps=1, initial_checkpoint_path=str(tmp_path / "orbax"))
    from_hf = run(str(tmp_path / "run_hf"), train_steps=1, initial_checkpoint_path=str(tmp_path / "hf"))
    assert from_hf["first_loss"] == pytest.approx(from_orbax["first_loss"], rel=1e-6)


def test_model_config_that_does_not_match_the_checkpoint_is_an_error(tmp_path):
    checkpoint.save_params(tmp_path / "init", {"w": jnp.zeros(2)}, CFG)
    with pytest.raises(ValueError, match="hidden_size"):
        ft.resolve_model_config(CFG.replace(hidden_size=32, intermediate_size=32),
                                ft.TrainConfig("unused", initial_checkpoint_path=str(tmp_path / "init")))
    cfg = ft.resolve_model_config(CFG.replace(dtype="bfloat16"), ft.TrainConfig(
        "unused", initial_checkpoint_path=str(tmp_path / "init"), model_overrides={"remat_policy": "full"}))
    assert cfg.dtype == "bfloat16" and cfg.remat_policy == "full" and cfg.hidden_size == 16
