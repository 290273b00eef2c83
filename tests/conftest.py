"""Test-wide setup: 8 fake CPU devices (set before JAX initialises) and quiet TensorFlow."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_SCIRIFF = REPO_ROOT.parent / "shared" / "sciriff"


@pytest.fixture
def shared_sciriff():
    """The shared folder's real SciRIFF instances; skips where a clone has no ../shared."""
    if not SHARED_SCIRIFF.is_dir():
        pytest.skip(f"real SciRIFF sample not found at {SHARED_SCIRIFF} (only CI and developers have ../shared)")
    return SHARED_SCIRIFF


def pytest_collection_modifyitems(config, items):
    import jax

    platforms = {d.platform for d in jax.devices()}
    for item in items:
        if "gpu" in item.keywords and "gpu" not in platforms and "cuda" not in platforms:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))
        if "tpu" in item.keywords and "tpu" not in platforms:
            item.add_marker(pytest.mark.skip(reason="needs a TPU"))
