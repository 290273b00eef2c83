"""The one place where library functions and classes become gin configurables (gin stays at the edges).

Each owner registers its run-level entry points here with `gin.external_configurable`, so the
library modules themselves stay plain Python.
"""
import gin

# --- model (sciriff_jax.model) ---------------------------------------------------------------

# --- training (sciriff_jax.finetune / train / data / checkpoint) -----------------------------

# --- evaluation (sciriff_jax.evaluate) -------------------------------------------------------
