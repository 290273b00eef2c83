"""The one place where library functions and config classes become gin configurables (gin stays at the edges).

Run files bind the config objects' fields (`TrainConfig.batch_size = %BATCH_SIZE`) and hand the objects to the
run functions (`finetune.train = @TrainConfig()`); the library modules themselves stay plain Python.
"""
import gin

from sciriff_jax.data.batches import DataConfig
from sciriff_jax.data.preferences import PreferenceDataConfig
from sciriff_jax.eval import evaluate
from sciriff_jax.eval.evaluate import EvalConfig
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.lora import LoraConfig
from sciriff_jax.parallel.sharding import MeshConfig
from sciriff_jax.train import dpo as dpo_lib
from sciriff_jax.train import finetune as finetune_lib
from sciriff_jax.train import grpo as grpo_lib
from sciriff_jax.train.dpo_loss import DPOConfig
from sciriff_jax.train.finetune import TrainConfig, TrainEvalConfig
from sciriff_jax.train.optim import OptimizerConfig

for _cls in (LlamaConfig, DataConfig, OptimizerConfig, MeshConfig, TrainConfig, TrainEvalConfig, EvalConfig,
             PreferenceDataConfig, DPOConfig, grpo_lib.GRPOConfig, LoraConfig):
    gin.external_configurable(_cls, name=_cls.__name__)

# main.run calls finetune(operative_config=...) and evaluate_run() / infer_run(); gin supplies the config objects.
finetune = gin.external_configurable(finetune_lib.finetune, name="finetune")
evaluate_run = gin.external_configurable(evaluate.evaluate_run, name="evaluate_run")
infer_run = gin.external_configurable(evaluate.infer_run, name="infer_run")
dpo = gin.external_configurable(dpo_lib.dpo, name="dpo")  # the train mode with run.trainer = "dpo" (runs/dpo.gin)
grpo = gin.external_configurable(grpo_lib.grpo, name="grpo")  # the train mode with run.trainer = "grpo" (runs/grpo.gin)
