"""scripts/slurm_train.sbatch: one process per node, coordinator on the first node, args unchanged.

SLURM is not installed here, so `srun` and `scontrol` are small stand-ins that behave like the real
ones for what the script uses (hostnames of a node list; N tasks with SLURM_PROCID set).
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SBATCH = REPO / "scripts" / "slurm_train.sbatch"

SRUN = """#!/usr/bin/env bash
# stand-in for srun: run the command once per task with SLURM_PROCID set, like srun does.
ntasks=1
while [[ "$1" == --* ]]; do
  case "$1" in --ntasks=*) ntasks="${1#--ntasks=}" ;; esac
  shift
done
for ((i = 0; i < ntasks; i++)); do SLURM_PROCID=$i "$@" & done
wait
"""
SCONTROL = """#!/usr/bin/env bash
# stand-in for `scontrol show hostnames gpu-[07-08]`
[[ "$1 $2" == "show hostnames" ]] || exit 1
echo gpu-07; echo gpu-08
"""
PYTHON = f"""#!{sys.executable}
import json, os, sys
keys = ("COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID", "XLA_FLAGS")
print(json.dumps({{"argv": sys.argv[1:], **{{k: os.environ.get(k) for k in keys}}}}))
"""


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"srun": SRUN, "scontrol": SCONTROL, "fake_python": PYTHON}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST="gpu-[07-08]", SLURM_NNODES="2", SLURM_SUBMIT_DIR=str(tmp_path),
               SCIRIFF_PYTHON=str(bin_dir / "fake_python"), XLA_FLAGS="--xla_dump_to=/tmp/x")
    return tmp_path, env


def test_one_process_per_node_with_the_first_node_as_coordinator(slurm):
    workdir, env = slurm
    args = ["--gin_file=gin_configs/experiments/scitulu_7b.gin", "--gin.MODEL_DIR='/shared/run x'"]
    subprocess.run(["bash", str(SBATCH), *args], env=env, check=True, timeout=30, capture_output=True)
    logs = sorted((workdir / "logs" / "slurm-4242").glob("process-*.log"))
    assert [p.name for p in logs] == ["process-0.log", "process-1.log"]
    seen = [json.loads(p.read_text()) for p in logs]
    for process_id, record in enumerate(seen):
        assert record["argv"] == ["-m", "sciriff_jax.main", *args]
        assert record["COORDINATOR_ADDRESS"] == f"gpu-07:{12345 + 4242 % 1000}"
        assert record["NUM_PROCESSES"] == "2"
        assert record["PROCESS_ID"] == str(process_id)
        assert record["XLA_FLAGS"].endswith("--xla_dump_to=/tmp/x")  # the caller's flags are kept


def test_coordinator_port_can_be_chosen(slurm):
    workdir, env = slurm
    env["COORDINATOR_PORT"] = "23456"
    subprocess.run(["bash", str(SBATCH), "--gin_file=x.gin"], env=env, check=True, timeout=30, capture_output=True)
    record = json.loads((workdir / "logs" / "slurm-4242" / "process-1.log").read_text())
    assert record["COORDINATOR_ADDRESS"] == "gpu-07:23456"


def test_outside_slurm_or_without_arguments_it_says_what_to_do(slurm):
    _, env = slurm
    result = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--gin_file" in result.stderr
    del env["SLURM_JOB_ID"]
    result = subprocess.run(["bash", str(SBATCH), "--gin_file=x.gin"], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0 and "sbatch" in result.stderr
