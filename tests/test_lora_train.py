"""LoRA finetuning (train/lora_train.py via `finetune(lora=...)`): only the adapters train and are checkpointed,
with the base they belong to; a resume is exact; a resume over another base stops; the one gin switch."""
import jax
import numpy as np
import pytest

from sciriff_jax.data.batches import DataConfig
from sciriff_jax.io import checkpoint, lora_files
from sciriff_jax.model import lora as lora_lib
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import init_params, param_shapes
from sciriff_jax.train import finetune as ft
from sciriff_jax.train.optim import OptimizerConfig

CFG = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                  dtype="float32")
DATA = DataConfig("sciriff_sample", {"targets": 16}, source="synthetic")
LORA = lora_lib.LoraConfig(rank=2, alpha=4.0, dropout=0.1)


def run(model_dir, base_dir, lora=LORA, **train):
    settings = dict(batch_size=8, log_every=1, tensorboard=False, checkpoint_period=2, async_checkpoints=False,
                    initial_checkpoint_path=str(base_dir))
    return ft.finetune(ft.TrainConfig(model_dir=str(model_dir), **{**settings, **train}), DATA, None,
                       OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, schedule="constant"), lora=lora)  # one LR whatever TRAIN_STEPS


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base") / "ckpt"
    checkpoint.save_params(d, init_params(CFG, jax.random.PRNGKey(7)), CFG)
    return d


def test_lora_run_trains_and_checkpoints_only_the_adapters_naming_their_base(tmp_path, base_dir):
    summary = run(tmp_path / "run", base_dir, train_steps=2)
    assert summary["last_loss"] < summary["first_loss"]
    step = tmp_path / "run" / "checkpoints" / "2"
    adapters, _ = checkpoint.load_params(step)
    want = lora_lib.adapter_shapes(param_shapes(CFG), LORA)
    assert jax.tree.map(lambda x: x.shape, adapters) == jax.tree.map(lambda x: x.shape, want)
    assert summary["num_params"] == lora_lib.num_adapter_params(want)
    rec = lora_files.read_record(step)
    assert rec["lora"] == LORA.to_dict() and rec["base"]["fingerprint"] == lora_files.fingerprint(base_dir)
    assert float(np.abs(np.asarray(adapters["layers"]["attn"]["q_proj_b"])).max()) > 0  # B moved from zero


def test_lora_resume_is_exact(tmp_path, base_dir):
    straight = run(tmp_path / "straight", base_dir, train_steps=4)
    run(tmp_path / "resumed", base_dir, train_steps=2)
    resumed = run(tmp_path / "resumed", base_dir, train_steps=4)
    assert resumed["start_step"] == 2
    assert resumed["losses"] == {k: v for k, v in straight["losses"].items() if k > 2}
    a, _ = checkpoint.load_params(tmp_path / "straight" / "checkpoints" / "4")
    b, _ = checkpoint.load_params(tmp_path / "resumed" / "checkpoints" / "4")
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_lora_resume_over_another_base_stops_naming_it(tmp_path, base_dir):
    run(tmp_path / "run", base_dir, train_steps=2)
    other = tmp_path / "other_base"
    checkpoint.save_params(other, init_params(CFG, jax.random.PRNGKey(8)), CFG)
    with pytest.raises(ft.RunConfigError, match="holds adapters for base"):
        run(tmp_path / "run", other, train_steps=4)
    run(tmp_path / "full", base_dir, lora=None, train_steps=2)
    with pytest.raises(ft.RunConfigError, match="LORA_RANK=None"):
        run(tmp_path / "full", base_dir, train_steps=4)


def test_finetune_gin_switches_to_lora_with_one_macro(tmp_path):
    from tiny_run import train_tiny  # noqa: PLC0415  (tests/ helper: a real `python -m sciriff_jax.main` run)

    done = train_tiny(tmp_path / "run", "--gin.LORA_RANK=4", '--gin.LORA_QUANTIZE="int8"')
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "LoRA rank 4 alpha 32.0" in done.stdout and "frozen base in int8" in done.stdout
    rec = lora_files.read_record(tmp_path / "run" / "checkpoints" / "2")
    assert rec["lora"]["rank"] == 4 and rec["lora"]["quantize"] == "int8" and rec["base"]["random_init_seed"] == 0
