"""The one place where library functions and classes become gin configurables (gin stays at the edges).

Each owner registers its run-level entry points here with `gin.external_configurable`, so the
library modules themselves stay plain Python.
"""
import gin

# --- model (sciriff_jax.model) ---------------------------------------------------------------
from sciriff_jax.model.config import LlamaConfig  # noqa: E402

gin.external_configurable(LlamaConfig, name="LlamaConfig")

# --- training (sciriff_jax.finetune / train / data / checkpoint) -----------------------------
from sciriff_jax import finetune as _finetune  # noqa: E402

# main.run calls gin_setup.finetune(operative_config=...); gin supplies every other argument.
finetune = gin.external_configurable(_finetune.finetune, name="finetune")

# --- evaluation (sciriff_jax.evaluate) -------------------------------------------------------
# (sciriff_jax.evaluate imports SeqIO / TF only when a run calls it.)
from sciriff_jax import evaluate as _evaluate  # noqa: E402

evaluate_run = gin.external_configurable(_evaluate.evaluate_run, name="evaluate_run")
infer_run = gin.external_configurable(_evaluate.infer_run, name="infer_run")
