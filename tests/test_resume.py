"""Crash safety: SIGKILL a real `python -m sciriff_jax.main` run midway, rerun the same command, and metrics.jsonl
holds one loss per step equal to an uninterrupted run's, step for step."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from tests.subprocess_runs import cpu_env, run_ok

TRAIN_STEPS, PERIOD, KILL_AT = 24, 4, 9


def _command(model_dir):
    return [sys.executable, "-m", "sciriff_jax.main",
            "--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/finetune.gin",
            f'--gin.MODEL_DIR="{model_dir}"', '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample"',
            f"--gin.TRAIN_STEPS={TRAIN_STEPS}", "--gin.BATCH_SIZE=4", '--gin.TASK_FEATURE_LENGTHS={"targets": 32}',
            f"--gin.CHECKPOINT_PERIOD={PERIOD}", "--gin.LOG_EVERY=1", "--gin.LEARNING_RATE=3e-3",
            "--gin.VOCAB_SIZE=256", "--gin_bindings=LlamaConfig.num_layers=1", "--gin_bindings=LlamaConfig.hidden_size=32",
            "--gin_bindings=LlamaConfig.intermediate_size=64", '--gin_bindings=train/DataConfig.source="synthetic"',
            "--gin_bindings=TrainConfig.tensorboard=False"]


def _env():
    return cpu_env(devices=2)


def _losses(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


@pytest.mark.slow  # three real runs in subprocesses: ~2 min on 2 shared cores
def test_sigkilled_run_resumes_with_identical_losses(tmp_path):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    done = run_ok(_command(full), _env(), timeout=300)
    reference = dict(_losses(full))
    assert sorted(reference) == list(range(1, TRAIN_STEPS + 1))

    proc = subprocess.Popen(_command(crashed), cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if f"step {KILL_AT}/{TRAIN_STEPS}" in line:
            proc.send_signal(signal.SIGKILL)  # no chance to save: only committed checkpoints survive
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])
    before = _losses(crashed)
    assert TRAIN_STEPS > before[-1][0] >= KILL_AT

    again = run_ok(_command(crashed), _env(), timeout=300)
    restart_step = int(again.stdout.split(f"resumed from {crashed}/checkpoints/")[1].split()[0])
    assert restart_step % PERIOD == 0 and 0 < restart_step <= before[-1][0], (restart_step, before[-1])
    assert f"took over the lock on {crashed} from run" in again.stdout and f"process {proc.pid} is gone" in again.stdout
    # one line per step: the killed run's lines past the restored step were dropped, and the steps run again
    # match the uninterrupted run (as did the ones before the crash)
    assert _losses(crashed) == sorted(reference.items())
    assert all(reference[s] == loss for s, loss in before)


@pytest.mark.slow  # two real runs in subprocesses
def test_sigterm_saves_the_current_step_and_the_rerun_continues_from_it(tmp_path):
    cmd = [a if not a.startswith("--gin.CHECKPOINT_PERIOD") else "--gin.CHECKPOINT_PERIOD=1000"
           for a in _command(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if f"step 5/{TRAIN_STEPS}" in line:
            proc.send_signal(signal.SIGTERM)  # what a scheduler sends before preempting the machine
    proc.wait(timeout=120)
    text = "".join(out)
    assert proc.returncode == 143, text[-3000:]
    saved = int(text.split("preemption: saved step ")[1].split()[0])
    assert 5 <= saved < TRAIN_STEPS and (tmp_path / "checkpoints" / str(saved)).is_dir()
    again = run_ok(cmd, _env(), timeout=300)
    assert f"resumed from {tmp_path}/checkpoints/{saved}" in again.stdout
    steps = [s for s, _ in _losses(tmp_path)]
    assert steps == list(range(1, saved + 1)) + list(range(saved + 1, TRAIN_STEPS + 1))
