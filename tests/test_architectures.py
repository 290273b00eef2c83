"""The Llama family against transformers on tiny random models: Llama (3.x rope), Mistral, Qwen2 (q/k/v biases),
Qwen3 (per-head q/k norm), OLMo 2 (q/k norm over the projection, post-sublayer norms); tied and untied heads;
config.json in the transformers 5 (rope_parameters) and 4 (rope_theta / rope_scaling) spellings. Import matches
transformers' fp32 logits to 1e-4 of the logit scale; export reloads in transformers with identical logits."""
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sciriff_jax.io.hf import load_hf_params, write_hf  # noqa: E402
from sciriff_jax.model import Llama  # noqa: E402
from sciriff_jax.model.config import LlamaConfig  # noqa: E402

TOKENS = np.array([[5, 9, 13, 2, 77, 31, 8, 1, 60, 4], [3, 3, 60, 99, 14, 0, 41, 7, 7, 100]])
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
ARCHES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"rope_parameters": LLAMA3_ROPE}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 16}),
    "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM, {}),
}


def tiny(arch: str, tie: bool, seed: int = 0, vocab_size: int = 101):
    config_cls, model_cls, extra = ARCHES[arch]
    torch.manual_seed(seed)
    config = config_cls(vocab_size=vocab_size, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie,
                        max_position_embeddings=64, rms_norm_eps=1e-6, initializer_range=0.2, **extra)
    model = model_cls(config).eval()
    with torch.no_grad():  # random biases and norm scales, so a mapping mistake cannot hide behind zeros / ones
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def torch_logits(model):
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.float().numpy()


def our_logits(params, config):
    return np.asarray(jax.jit(lambda p, t: Llama(config).apply({"params": p}, t))(params, TOKENS))


def as_transformers4(path):
    """config.json as transformers 4 wrote it: rope_theta / rope_scaling, no rope_parameters."""
    config = json.loads((path / "config.json").read_text())
    rope = config.pop("rope_parameters", None) or {}
    config["rope_theta"] = rope.get("rope_theta", 10000.0)
    if rope.get("rope_type", "default") != "default":
        config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("arch", sorted(ARCHES))
@pytest.mark.parametrize("tie,style", [(False, 5), (True, 4)])
def test_import_matches_transformers_and_export_reloads_exactly(tmp_path, arch, tie, style):
    model = tiny(arch, tie)
    model.save_pretrained(tmp_path / "hf")
    if style == 4:
        as_transformers4(tmp_path / "hf")
    params, config = load_hf_params(tmp_path / "hf")
    assert (config.model_type, config.tie_embeddings) == (arch, tie)
    want = torch_logits(model)
    got = our_logits(params, config)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max())), np.abs(got - want).max()
    write_hf(params, config, tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(reloaded) is type(model)
    np.testing.assert_array_equal(torch_logits(reloaded), want)


def test_each_architecture_reads_its_switches_from_config_json():
    base = dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
    read = {t: LlamaConfig.from_hf_config({**base, "model_type": t}) for t in ("qwen2", "qwen3", "olmo2", "llama")}
    assert read["qwen2"].attention_bias and read["qwen3"].qk_norm == "head" and read["olmo2"].qk_norm == "projection"
    assert read["olmo2"].post_norms and not (read["llama"].attention_bias or read["llama"].qk_norm)
    with pytest.raises(ValueError, match="model_type='gemma' is not supported; supported: llama"):
        LlamaConfig.from_hf_config({**base, "model_type": "gemma"})
    capped = LlamaConfig.from_hf_config({**base, "model_type": "mistral", "sliding_window": 16,
                                         "max_position_embeddings": 64})
    assert capped.max_position == 16  # sliding-window attention is full attention within the window


@pytest.mark.parametrize("arch", ["qwen2", "olmo2"])
def test_sharding_rules_remat_and_attention_backends_cover_the_new_weights(arch, tmp_path):
    from sciriff_jax.parallel.sharding import MeshConfig, Sharding

    model = tiny(arch, False, vocab_size=104)  # the vocabulary splits over the tensor axis
    model.save_pretrained(tmp_path)
    params, config = load_hf_params(tmp_path)
    want = torch_logits(model)
    sharding = Sharding.create(config, MeshConfig("fsdp_tp", {"fsdp": 2, "tensor": 2}), devices=jax.devices()[:4])
    placed = jax.device_put(params, sharding.params)
    attn = placed["layers"]["attn"]
    assert all(attn[k].sharding.spec[1] == "tensor" for k in attn if k.endswith(("bias", "norm")) and
               attn[k].ndim == 3)  # [layers, heads, head_dim]: heads over the tensor axis
    for backend, remat in (("reference", "full"), ("blockwise", "dots")):
        c = config.replace(attention_backend=backend, remat_policy=remat)
        with sharding.context():
            got = np.asarray(jax.jit(lambda p, t: Llama(c, mesh=sharding.mesh).apply({"params": p}, t))(placed, TOKENS))
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


# Published parameter counts (model cards / safetensors totals), embedding and untied head included.
GIN_SIZES = {"llama3_1_8b": 8.03e9, "qwen2_5_7b": 7.62e9, "qwen3_8b": 8.19e9, "olmo2_7b": 7.30e9,
             "mistral_7b": 7.25e9}


@pytest.mark.parametrize("name", sorted(GIN_SIZES))
def test_model_gin_files_have_the_real_sizes(name):
    import pathlib

    import gin

    from sciriff_jax.run import gin_setup  # noqa: F401 - registers LlamaConfig with gin

    path = pathlib.Path(__file__).parent.parent / "gin_configs" / "models" / f"{name}.gin"
    gin.clear_config()
    try:
        gin.parse_config_file(str(path))
        config = gin.get_configurable(LlamaConfig)()
    finally:
        gin.clear_config()
    assert abs(config.num_params() / GIN_SIZES[name] - 1) < 0.01, config.num_params()
