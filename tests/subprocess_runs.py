"""Running our commands as a user does, in a child process on the CPU: its environment and the checked run."""
import os
import subprocess

from conftest import REPO_ROOT


def cpu_env(devices: int = 1) -> dict:
    """os.environ for a CPU-only child with `devices` fake devices, TensorFlow quiet and Python unbuffered (a parent
    that reads its lines as they come sees them at once)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def run_ok(cmd, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `cmd` in the repository root (default environment: `cpu_env()`); the test fails with the end of its output
    unless it exits 0."""
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env or cpu_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done
