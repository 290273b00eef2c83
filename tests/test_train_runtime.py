"""A run's numerics and memory: dtypes explicit and recorded, RUNTIME fields overridden by their macro alone over an
HF directory, the checkpoint's own context kept, the memory estimate that stops a step that will not fit."""
import dataclasses
import json
import sys

import jax
import numpy as np
import pytest

from tests.subprocess_runs import run_ok
from sciriff_jax.io import loader
from sciriff_jax.io.hf import write_hf
from sciriff_jax.model.config import LlamaConfig, platform_dtype
from sciriff_jax.model.llama import init_params
from sciriff_jax.parallel.sharding import MeshConfig
from sciriff_jax.train import finetune as ft
from sciriff_jax.train import setup
from sciriff_jax.train.optim import OptimizerConfig

HF_CFG = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                     dtype="float32", max_position=8192)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "model"
    write_hf(init_params(HF_CFG, jax.random.PRNGKey(0)), HF_CFG, path)
    return path


def test_auto_dtype_is_float32_on_a_cpu_and_bfloat16_on_accelerators():
    assert platform_dtype("cpu") == "float32" and platform_dtype("gpu") == platform_dtype("tpu") == "bfloat16"
    assert LlamaConfig(**{**HF_CFG.to_dict(), "dtype": "auto"}).dtype == platform_dtype()
    with pytest.raises(ValueError, match="param_dtype"):
        HF_CFG.replace(param_dtype="auto")


def test_a_run_from_a_checkpoint_keeps_its_context_over_the_model_files(hf_dir):
    model_file = HF_CFG.replace(max_position=4096, dtype="bfloat16")  # as models/llama2_7b.gin states it
    train = ft.TrainConfig("unused", initial_checkpoint_path=str(hf_dir))
    assert ft.resolve_model_config(model_file, train).max_position == 8192
    assert ft.resolve_model_config(None, train).max_position == 8192
    told = dataclasses.replace(train, model_overrides={"max_position": 16384, "dtype": "auto"})
    cfg = ft.resolve_model_config(model_file, told, platform="tpu")
    assert cfg.max_position == 16384 and cfg.dtype == "bfloat16"


def _finetune_cli(model_dir, *flags):
    """`python -m sciriff_jax.main` finetune of an HF directory, no model file: its shape from config.json."""
    cmd = [sys.executable, "-m", "sciriff_jax.main", "--gin_file=gin_configs/runs/finetune.gin",
           f'--gin.MODEL_DIR="{model_dir}"', '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample"',
           "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=2", '--gin.TASK_FEATURE_LENGTHS={"targets": 16}',
           "--gin.LOG_EVERY=1", '--gin_bindings=train/DataConfig.source="synthetic"',
           "--gin_bindings=TrainConfig.tensorboard=False", *flags]
    done = run_ok(cmd, timeout=300)
    return done.stdout + done.stderr, json.loads((model_dir / "train_summary.json").read_text())


def test_runtime_fields_are_set_over_an_hf_directory_by_their_macros_alone(hf_dir, tmp_path):
    log, summary = _finetune_cli(tmp_path / "default", f'--gin.INITIAL_CHECKPOINT_PATH="{hf_dir}"')
    assert "(float32; compute in float32)" in log  # the CPU default, said in the log
    assert (summary["compute_dtype"], summary["param_dtype"], summary["max_position"]) == ("float32", "float32", 8192)
    log, summary = _finetune_cli(tmp_path / "told", f'--gin.INITIAL_CHECKPOINT_PATH="{hf_dir}"',
                                 '--gin.DTYPE="bfloat16"', '--gin.REMAT_POLICY="full"', "--gin.MAX_POSITION=2048",
                                 '--gin.ATTENTION_BACKEND="blockwise"')
    assert "(float32; compute in bfloat16)" in log
    assert (summary["compute_dtype"], summary["max_position"]) == ("bfloat16", 2048)
    recorded = loader.load_config(tmp_path / "told")  # what the run trained, as its checkpoint records it
    assert (recorded.remat_policy, recorded.attention_backend, recorded.hidden_size) == ("full", "blockwise", 16)


def _tiny_setup(microbatches=1):
    cfg = HF_CFG.replace(max_position=64)
    return setup.build(cfg, mesh=MeshConfig(), optimizer=OptimizerConfig(), train_steps=2, microbatches=microbatches)


def test_the_memory_estimate_stops_a_step_that_will_not_fit_and_names_the_fixes():
    run_setup = _tiny_setup()
    compiled = run_setup.compile_step(8, 32)  # 8 rows: one per test CPU device
    estimate = setup.estimate_memory(compiled, run_setup.sharding.mesh.devices.flat)
    assert estimate.where == "host RAM" and estimate.available > 0
    params_bytes = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(run_setup.param_shapes))
    assert estimate.arguments >= 3 * params_bytes  # params + two Adam moments (+ the batch)
    assert estimate.temporaries > 0
    setup.check_memory(estimate, microbatches=1, batch_size=8, length=32, remat_policy="none")  # fits: no error
    small = dataclasses.replace(estimate, available=estimate.needed // 2)  # the same step on a smaller machine
    with pytest.raises(setup.RunConfigError) as err:
        setup.check_memory(small, microbatches=1, batch_size=8, length=32, remat_policy="none")
    msg = str(err.value)
    for part in ("MICROBATCHES (now 1: 8 rows of 32 tokens", "REMAT_POLICY", "TASK_FEATURE_LENGTHS (now 32)",
                 "host RAM", "CHECK_MEMORY=False"):
        assert part in msg


def test_microbatches_shrink_the_estimated_temporaries():
    one = _tiny_setup(1).compile_step(32, 64)
    four = _tiny_setup(4).compile_step(32, 64)
    assert four.memory_analysis().temp_size_in_bytes < one.memory_analysis().temp_size_in_bytes


def test_the_compiled_step_runs_the_same_update_as_the_jitted_one():
    run_setup = _tiny_setup()
    params = init_params(run_setup.config, jax.random.PRNGKey(0))
    opt = run_setup.tx.init(params)
    rng = np.random.default_rng(0)
    batch = {k: np.asarray(rng.integers(1, 60, (8, 32)), np.int32) for k in
             ("decoder_input_tokens", "decoder_target_tokens")}
    batch.update(decoder_loss_weights=np.ones((8, 32), np.int32), decoder_segment_ids=np.ones((8, 32), np.int32),
                 decoder_positions=np.broadcast_to(np.arange(32, dtype=np.int32), (8, 32)).copy())
    batch = jax.device_put(batch, run_setup.sharding.batch)
    compiled = run_setup.with_compiled_step(run_setup.compile_step(8, 32))
    plain = setup.build(run_setup.config, mesh=MeshConfig(), optimizer=OptimizerConfig(), train_steps=2)
    copy = jax.tree.map(np.array, (params, opt))
    _, _, m1 = compiled.step(params, opt, batch)
    _, _, m2 = plain.step(*jax.tree.map(jax.numpy.asarray, copy), batch)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
