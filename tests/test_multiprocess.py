"""Multi-host: 2 processes on localhost (4 fake CPU devices each, real jax.distributed with gloo collectives)
train with the same losses as 1 process with 8 devices."""
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

TRAIN_STEPS = 4


def _command(model_dir):
    return [sys.executable, "-m", "sciriff_jax.main",
            "--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/finetune.gin",
            f'--gin.MODEL_DIR="{model_dir}"', '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample"',
            f"--gin.TRAIN_STEPS={TRAIN_STEPS}", "--gin.BATCH_SIZE=8", '--gin.TASK_FEATURE_LENGTHS={"targets": 32}',
            "--gin.CHECKPOINT_PERIOD=2", "--gin.LOG_EVERY=1", "--gin.LEARNING_RATE=3e-3", "--gin.MICROBATCHES=1",
            '--gin.MESH_LAYOUT="fsdp"', "--gin.VOCAB_SIZE=256", "--gin_bindings=LlamaConfig.num_layers=1",
            "--gin_bindings=LlamaConfig.hidden_size=32", "--gin_bindings=LlamaConfig.intermediate_size=64",
            '--gin_bindings=train/DataConfig.source="synthetic"', "--gin_bindings=TrainConfig.tensorboard=False"]


def _env(devices, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID")}
    return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
            "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _losses(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # three processes compile and train: ~1-2 min on 2 shared cores
def test_two_processes_with_4_devices_each_match_one_process_with_8(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen(_command(tmp_path / "multi"), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=_env(4, COORDINATOR_ADDRESS=f"localhost:{port}", NUM_PROCESSES="2", PROCESS_ID=str(i)))
             for i in range(2)]
    single = subprocess.run(_command(tmp_path / "single"), cwd=REPO_ROOT, env=_env(8), capture_output=True,
                            text=True, timeout=400)
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    assert "process 1/2, 4 local / 8 global devices" in outs[1]
    multi, one = _losses(tmp_path / "multi"), _losses(tmp_path / "single")
    assert sorted(multi) == sorted(one) == list(range(1, TRAIN_STEPS + 1))
    for step in one:
        assert multi[step] == pytest.approx(one[step], rel=1e-5), (step, multi, one)
    assert len(set(one.values())) > 1  # training moved the loss
    assert (tmp_path / "multi" / "checkpoints" / str(TRAIN_STEPS)).is_dir()
    # one run lock, taken by process 0 alone; each process sealed its share of every checkpoint's files
    from sciriff_jax.io import checkpoint, run_lock

    assert run_lock.read_holder(tmp_path / "multi")["pid"] == procs[0].pid
    assert len(os.listdir(tmp_path / "multi" / "run.lock")) == 1
    step_dir = tmp_path / "multi" / "checkpoints" / str(TRAIN_STEPS)
    assert sorted(p.name for p in step_dir.glob("sciriff_checksums-*")) == [
        "sciriff_checksums-00000-of-00002.json", "sciriff_checksums-00001-of-00002.json"]
    assert checkpoint.checksums.verify(step_dir) is None


def test_cluster_env_reads_coordinator_variables_and_slurm():
    from sciriff_jax.parallel.distributed import cluster_env

    assert cluster_env({}) is None
    assert cluster_env({"COORDINATOR_ADDRESS": "10.0.0.1:1234", "NUM_PROCESSES": "4", "PROCESS_ID": "3"}) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    assert cluster_env({"SLURM_NTASKS": "8", "SLURM_PROCID": "5"}) == {"slurm": True, "num_processes": 8,
                                                                       "process_id": 5}
    assert cluster_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    with pytest.raises(ValueError, match="PROCESS_ID"):
        cluster_env({"COORDINATOR_ADDRESS": "h:1", "NUM_PROCESSES": "2"})
