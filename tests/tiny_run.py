"""A real `python -m sciriff_jax.main` finetune of a one-layer model on synthetic rows (two steps, a checkpoint at
step 2), as a user runs it: the rerun and resume tests start from it."""
import subprocess
import sys

from conftest import REPO_ROOT
from tests.subprocess_runs import cpu_env


def train_tiny(model_dir, *extra) -> subprocess.CompletedProcess:
    """Run the tiny finetune into `model_dir` with `extra` flags appended; returns the finished process."""
    cmd = [sys.executable, "-m", "sciriff_jax.main",
           "--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/finetune.gin",
           f'--gin.MODEL_DIR="{model_dir}"', '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample"',
           "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2", '--gin.TASK_FEATURE_LENGTHS={"targets": 16}',
           "--gin.CHECKPOINT_PERIOD=2", "--gin.LOG_EVERY=1", "--gin.VOCAB_SIZE=64",
           "--gin_bindings=LlamaConfig.num_layers=1", "--gin_bindings=LlamaConfig.hidden_size=16",
           "--gin_bindings=LlamaConfig.intermediate_size=32", '--gin_bindings=train/DataConfig.source="synthetic"',
           "--gin_bindings=TrainConfig.tensorboard=False", *extra]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300)


def finished_tiny_run(tmp_path_factory):
    """A MODEL_DIR holding a finished tiny run (its own per test module, which may rerun into it)."""
    model_dir = tmp_path_factory.mktemp("run") / "model"
    done = train_tiny(model_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return model_dir
