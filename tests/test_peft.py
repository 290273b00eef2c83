"""PEFT interop (io/lora_files.py): our adapters written as a PEFT directory load with peft.PeftModel.from_pretrained
on the transformers model and give our logits; an adapter made by peft imports into our format with peft's logits."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from sciriff_jax.io import lora_files  # noqa: E402
from sciriff_jax.io.hf import load_hf_params  # noqa: E402
from sciriff_jax.model import Llama  # noqa: E402
from sciriff_jax.model import lora as lora_lib  # noqa: E402
from sciriff_jax.model.llama import param_shapes  # noqa: E402

TOKENS = np.array([[5, 9, 13, 2, 77, 31, 8, 1], [3, 3, 60, 99, 14, 0, 41, 7]])


def hf_model(arch="llama", seed=0):
    torch.manual_seed(seed)
    kw = dict(vocab_size=101, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, initializer_range=0.2)
    if arch == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw)).eval()
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)).eval()


def torch_logits(model):
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.float().numpy()


def our_logits(base, adapters, config, lora):
    model = Llama(config, lora=lora)
    return np.asarray(jax.jit(lambda b, a, t: model.apply(lora_lib.with_adapters(b, a), t))(base, adapters, TOKENS))


def assert_close_to_scale(got, want):
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= 1e-4 * scale, np.abs(got - want).max()


def trained_like(adapters, seed=3):
    leaves, treedef = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("arch,lora", [
    ("llama", lora_lib.LoraConfig(rank=4, alpha=8.0)),
    ("qwen2", lora_lib.LoraConfig(rank=3, alpha=5.0, targets=("q_proj", "v_proj", "o_proj", "down_proj"),
                                  rslora=True)),
])
def test_our_adapter_loads_in_peft_with_our_logits(tmp_path, arch, lora):
    model = hf_model(arch)
    model.save_pretrained(tmp_path / "hf")
    base, config = load_hf_params(tmp_path / "hf")
    adapters = trained_like(lora_lib.init_adapters(param_shapes(config), lora, jax.random.PRNGKey(1)))
    lora_files.write_peft(adapters, config, lora, tmp_path / "adapter", base_name=str(tmp_path / "hf"))
    with_adapter = peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    want = torch_logits(with_adapter)
    assert np.abs(want - torch_logits(hf_model(arch))).max() > 1e-2  # the adapter changes peft's model
    assert_close_to_scale(our_logits(base, adapters, config, lora), want)


def test_peft_made_adapter_imports_with_peft_logits(tmp_path):
    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    made = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj",
                                                      "up_proj", "o_proj"], init_lora_weights=False))
    made.eval()
    want = torch_logits(made)
    made.save_pretrained(tmp_path / "adapter")
    base, config = load_hf_params(tmp_path / "hf")
    adapters, lora = lora_files.read_peft(tmp_path / "adapter", config)
    assert (lora.rank, lora.alpha, set(lora.targets)) == (4, 16.0, {"q_proj", "k_proj", "up_proj", "o_proj"})
    assert_close_to_scale(our_logits(base, adapters, config, lora), want)
    merged = Llama(config).apply({"params": lora_lib.merge(base, adapters, lora)}, TOKENS)
    assert_close_to_scale(np.asarray(merged), want)


def test_lora_run_exports_a_peft_adapter_that_peft_loads_with_the_runs_logits(tmp_path):
    from sciriff_jax.data.batches import DataConfig
    from sciriff_jax.io import loader
    from sciriff_jax.run import cli
    from sciriff_jax.train import finetune as ft
    from sciriff_jax.train.optim import OptimizerConfig

    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    run_dir = tmp_path / "run"
    train = ft.TrainConfig(model_dir=str(run_dir), train_steps=2, batch_size=8, checkpoint_period=2, log_every=1,
                           tensorboard=False, async_checkpoints=False, initial_checkpoint_path=str(tmp_path / "hf"))
    ft.finetune(train, DataConfig("sciriff_sample", {"targets": 16}, source="synthetic"), None,
                OptimizerConfig(learning_rate=3e-2, warmup_ratio=0.0), lora=lora_lib.LoraConfig(rank=4, alpha=8.0))
    assert cli.main(["export", "--peft", str(run_dir), str(tmp_path / "adapter")]) == 0
    want = torch_logits(peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval())
    assert np.abs(want - torch_logits(hf_model())).max() > 1e-3  # two steps moved the adapters
    merged = loader.load(run_dir, dtype="float32", with_tokenizer=False)  # eval's view of a LoRA MODEL_DIR
    assert_close_to_scale(np.asarray(merged.logits(TOKENS)), want)


def test_peft_adapter_imports_as_a_lora_checkpoint_that_eval_loads_merged(tmp_path):
    from sciriff_jax.io import loader

    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    made = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj", "down_proj"],
                                                      init_lora_weights=False)).eval()
    want = torch_logits(made)
    made.save_pretrained(tmp_path / "adapter")
    from sciriff_jax.run import cli

    assert cli.main(["convert", str(tmp_path / "adapter"), str(tmp_path / "ours"), "--peft_base",
                     str(tmp_path / "hf")]) == 0
    record = lora_files.read_record(tmp_path / "ours")
    assert record["lora"]["rank"] == 2 and record["base"]["path"] == str(tmp_path / "hf")
    merged = loader.load(tmp_path / "ours", dtype="float32", with_tokenizer=False)
    assert_close_to_scale(np.asarray(merged.logits(TOKENS)), want)
