"""Hugging Face checkpoints: import matches transformers' logits; export loads in transformers; round trip exact."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sciriff_jax.io.convert import export_hf, import_hf  # noqa: E402
from sciriff_jax.io.hf import load_hf_params, write_hf  # noqa: E402
from sciriff_jax.model import Llama  # noqa: E402

TOKENS = np.array([[5, 9, 13, 2, 77, 31, 8, 1], [3, 3, 60, 99, 14, 0, 41, 7]])


def hf_model(kv_heads=2, tie=False, rope_parameters=None, seed=0, vocab_size=101):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, tie_word_embeddings=tie, max_position_embeddings=64, rms_norm_eps=1e-6,
        initializer_range=0.2, rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    return transformers.LlamaForCausalLM(config).eval()


def torch_logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


def our_logits(params, config, tokens=TOKENS):
    return np.asarray(jax.jit(lambda p, t: Llama(config).apply({"params": p}, t))(params, tokens))


def assert_close_to_scale(got, want):
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= 1e-4 * scale, np.abs(got - want).max()


@pytest.mark.parametrize("kv_heads,tie,rope", [
    (2, False, None),
    (4, True, None),
    (1, False, {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    (2, True, {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
])
def test_imported_model_matches_transformers_logits(tmp_path, kv_heads, tie, rope):
    model = hf_model(kv_heads, tie, rope)
    # A small max_shard_size forces a sharded checkpoint with an index file.
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    params, config = load_hf_params(tmp_path)
    assert (config.num_kv_heads, config.tie_embeddings) == (kv_heads, tie)
    assert_close_to_scale(our_logits(params, config), torch_logits(model))


def test_export_loads_in_transformers_and_reimports_exactly(tmp_path):
    model = hf_model(kv_heads=2, tie=False, seed=1)
    model.save_pretrained(tmp_path / "hf")
    params, config = load_hf_params(tmp_path / "hf")
    write_hf(params, config, tmp_path / "out", max_shard_bytes=30_000)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    np.testing.assert_array_equal(torch_logits(reloaded), torch_logits(model))
    again, config2 = load_hf_params(tmp_path / "out")
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_import_records_the_tokenizer_and_template_and_export_writes_them_back(tmp_path):
    from sciriff_jax.io import loader
    from sciriff_jax.io.checkpoint import load_params
    from tests import hf_dirs

    model = hf_model(kv_heads=2, tie=True, seed=2, vocab_size=512)
    model.save_pretrained(tmp_path / "hf")
    hf_dirs.byte_bpe_tokenizer(tmp_path / "hf")
    config = import_hf(tmp_path / "hf", tmp_path / "ckpt", progress=False)
    params, loaded_config = load_params(tmp_path / "ckpt")  # checksums cover the recorded tokenizer too
    assert loaded_config == config
    assert_close_to_scale(our_logits(params, config), torch_logits(model))
    fmt = loader.resolve_chat_format(tmp_path / "ckpt")  # eval of the converted checkpoint: its own tokenizer
    assert fmt.template == "model" and str(fmt.vocabulary.directory).endswith("ckpt/tokenizer")
    export_hf(tmp_path / "ckpt", tmp_path / "back")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    original = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    chat = [{"role": "user", "content": "List the genes."}]
    assert tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        original.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert tokenizer("BRCA1 genes")["input_ids"] == original("BRCA1 genes")["input_ids"]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    np.testing.assert_array_equal(torch_logits(reloaded), torch_logits(model))


def test_a_directory_without_a_tokenizer_or_with_another_vocabulary_stops_naming_the_fix(tmp_path, capsys):
    from sciriff_jax.io import loader
    from sciriff_jax.run import cli
    from tests import hf_dirs

    hf = _saved(tmp_path)
    assert cli.main(["convert", str(hf), str(tmp_path / "ckpt")]) == 2
    assert "has no tokenizer (tokenizer.json or tokenizer.model): copy the model's tokenizer files" in \
        capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()
    hf_dirs.byte_bpe_tokenizer(hf)
    other = hf_dirs.sentencepiece_tokenizer(tmp_path / "other")
    with pytest.raises(ValueError, match="is not the vocabulary the Hugging Face directory .* was trained with"):
        loader.resolve_chat_format(hf, vocabulary_path=str(other))
    with pytest.raises(ValueError, match=r"has \d+ tokens but the model .* has 101 embedding rows"):
        loader.load(hf)  # 101 embedding rows, a 400-token tokenizer


def test_missing_tensors_are_reported_by_name(tmp_path):
    from safetensors.numpy import load_file, save_file

    hf_model().save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight"):
        load_hf_params(tmp_path)


def _saved(tmp_path, **kw):
    hf_model(**kw).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _resave(path, change):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("name,shape", [("model.embed_tokens.weight", (100, 32)),
                                        ("model.layers.1.self_attn.k_proj.weight", (8, 32)),
                                        ("model.layers.0.mlp.down_proj.weight", (32, 41))])
def test_a_wrong_shaped_tensor_names_tensor_and_file_and_nothing_is_written(tmp_path, capsys, name, shape):
    from sciriff_jax.run import cli

    hf = _saved(tmp_path)
    _resave(hf, lambda t: t.__setitem__(name, np.zeros(shape, np.float32)))
    assert cli.main(["convert", str(hf), str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert f"{hf / 'model.safetensors'}: tensor {name!r} has shape {shape}" in err
    assert not (tmp_path / "ckpt").exists()


def test_a_layer_the_config_does_not_have_is_named(tmp_path):
    hf = _saved(tmp_path)
    _resave(hf, lambda t: t.__setitem__("model.layers.2.mlp.up_proj.weight", np.zeros((40, 32), np.float32)))
    with pytest.raises(ValueError, match=r"'model.layers.2.mlp.up_proj.weight' \(layer 2 but config.json has "
                                         r"num_hidden_layers=2\)"):
        load_hf_params(hf)


def test_truncated_config_and_safetensors_errors_name_the_path(tmp_path):
    hf = _saved(tmp_path)
    weights = hf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{weights}: "):
        load_hf_params(hf)
    weights.write_bytes(weights.read_bytes()[:5])  # not even a whole header
    with pytest.raises(ValueError, match=f"{weights}: not a readable safetensors file"):
        load_hf_params(hf)
    config = hf / "config.json"
    config.write_text(config.read_text()[:40])
    with pytest.raises(ValueError, match=f"{config}: not a readable JSON file"):
        load_hf_params(hf)


@pytest.mark.parametrize("model_type,architectures,message", [
    (None, ["Qwen2ForCausalLM"], "model_type=None"),
    ("gemma", ["GemmaForCausalLM"], "model_type=.gemma."),
    ("llama", ["Qwen2ForCausalLM"], "does not match model_type='llama'"),
])
def test_model_type_and_architectures_must_name_a_supported_architecture(tmp_path, model_type, architectures,
                                                                         message):
    import json

    hf = _saved(tmp_path)
    config = json.loads((hf / "config.json").read_text())
    config.pop("model_type")
    config.update({"architectures": architectures}, **({"model_type": model_type} if model_type else {}))
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_hf_params(hf)
