"""sciriff-jax: JAX-native training and evaluation for SciRIFF scientific instruction following."""

__version__ = "0.1.0"


def load_model(path, dtype="float32"):
    """Load a Hugging Face model directory or an Orbax checkpoint directory (see `sciriff_jax.io.loader.load_model`)."""
    from sciriff_jax.io.loader import load_model as _load  # the facade stays light: JAX and the model load here

    return _load(path, dtype=dtype)
