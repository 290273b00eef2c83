"""A resume checks the model it continues: a changed field that is not RUNTIME stops the rerun (exit 2, the field,
both values and the fix); a changed RUNTIME field is said in the log. Real `python -m sciriff_jax.main` runs."""
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def _command(model_dir, *extra):
    return [sys.executable, "-m", "sciriff_jax.main",
            "--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/finetune.gin",
            f'--gin.MODEL_DIR="{model_dir}"', '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample"',
            "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2", '--gin.TASK_FEATURE_LENGTHS={"targets": 16}',
            "--gin.CHECKPOINT_PERIOD=2", "--gin.LOG_EVERY=1", "--gin.VOCAB_SIZE=64",
            "--gin_bindings=LlamaConfig.num_layers=1", "--gin_bindings=LlamaConfig.hidden_size=16",
            "--gin_bindings=LlamaConfig.intermediate_size=32", '--gin_bindings=train/DataConfig.source="synthetic"',
            "--gin_bindings=TrainConfig.tensorboard=False", *extra]


def _run(model_dir, *extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(_command(model_dir, *extra), cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run") / "model"
    done = _run(model_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return model_dir


def test_a_resume_with_another_rope_theta_stops_naming_the_field_both_values_and_the_fix(finished_run):
    again = _run(finished_run, "--gin.TRAIN_STEPS=4", "--gin.LlamaConfig.rope_theta=500000.0")
    assert again.returncode == 2, again.stdout[-3000:] + again.stderr[-3000:]
    assert "rope_theta 10000.0 in the checkpoint vs 500000.0 in this run" in again.stderr
    assert "Use a new MODEL_DIR, or the gin settings that wrote it" in again.stderr
    assert "Traceback" not in again.stderr and again.stderr.startswith("error: MODEL_DIR=")
    assert sorted(os.listdir(finished_run / "checkpoints")) == ["2"]  # nothing trained on the changed model


def test_a_resume_with_another_rms_norm_eps_stops_too(finished_run):
    again = _run(finished_run, "--gin.LlamaConfig.rms_norm_eps=1e-6")
    assert again.returncode == 2 and "rms_norm_eps 1e-05 in the checkpoint vs 1e-06 in this run" in again.stderr


def test_a_resume_with_another_runtime_field_goes_on_and_says_so(finished_run):
    again = _run(finished_run, "--gin.TRAIN_STEPS=3", '--gin.REMAT_POLICY="full"')
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming with remat_policy full (checkpoint: none)" in again.stdout
    assert f"resumed from {finished_run}/checkpoints/2" in again.stdout
