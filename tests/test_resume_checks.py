"""A resume checks the model it continues: a changed field that is not RUNTIME stops the rerun (exit 2, the field,
both values and the fix); a changed RUNTIME field is said in the log. Real `python -m sciriff_jax.main` runs."""
import os

import pytest

from tests.tiny_run import finished_tiny_run, train_tiny


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return finished_tiny_run(tmp_path_factory)


def test_a_resume_with_another_rope_theta_stops_naming_the_field_both_values_and_the_fix(finished_run):
    again = train_tiny(finished_run, "--gin.TRAIN_STEPS=4", "--gin.LlamaConfig.rope_theta=500000.0")
    assert again.returncode == 2, again.stdout[-3000:] + again.stderr[-3000:]
    assert "rope_theta 10000.0 in the checkpoint vs 500000.0 in this run" in again.stderr
    assert "Use a new MODEL_DIR, or the gin settings that wrote it" in again.stderr
    assert "Traceback" not in again.stderr and again.stderr.startswith("error: MODEL_DIR=")
    assert sorted(os.listdir(finished_run / "checkpoints")) == ["2"]  # nothing trained on the changed model


def test_a_resume_with_another_rms_norm_eps_stops_too(finished_run):
    again = train_tiny(finished_run, "--gin.LlamaConfig.rms_norm_eps=1e-6")
    assert again.returncode == 2 and "rms_norm_eps 1e-05 in the checkpoint vs 1e-06 in this run" in again.stderr


def test_a_resume_with_another_runtime_field_goes_on_and_says_so(finished_run):
    again = train_tiny(finished_run, "--gin.TRAIN_STEPS=3", '--gin.REMAT_POLICY="full"')
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming with remat_policy full (checkpoint: none)" in again.stdout
    assert f"resumed from {finished_run}/checkpoints/2" in again.stdout
