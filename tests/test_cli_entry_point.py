"""The installed `sciriff-jax` command, as a user runs it (pyproject's [project.scripts] entry point)."""
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(sys.executable), "sciriff-jax")


@pytest.mark.skipif(not os.path.exists(SCRIPT), reason="sciriff-jax is not installed in this environment (pip install -e .)")
def test_the_installed_command_runs_and_lists_its_subcommands():
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for sub in ("train", "eval", "infer", "demo", "score", "data", "convert", "export", "aot"):
        assert f"  {sub} " in done.stdout
