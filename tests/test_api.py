"""load_model: Hugging Face directories and Orbax checkpoints give the same logits and generations."""
import jax
import numpy as np
import pytest

import sciriff_jax
from sciriff_jax.io.checkpoint import save_params
from sciriff_jax.io.hf import write_hf
from sciriff_jax.model import Llama, LlamaConfig, init_params

CONFIG = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     dtype="float32", tie_embeddings=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    params = init_params(CONFIG, jax.random.PRNGKey(0))
    save_params(root / "ckpt", params, CONFIG)
    write_hf(params, CONFIG, root / "hf")
    return root, params


def test_hf_dir_and_orbax_checkpoint_load_to_the_same_model(saved):
    root, params = saved
    tokens = np.array([[1, 5, 9, 3], [7, 7, 2, 0]])
    want = np.asarray(Llama(CONFIG).apply({"params": params}, tokens))
    for path in (root / "hf", root / "ckpt"):
        model = sciriff_jax.load_model(str(path))
        got = model.logits(tokens)
        assert got.dtype == np.float32 and got.shape == (2, 4, 40)
        np.testing.assert_allclose(got, want, atol=1e-5)
    prompts = [[1, 5, 9], [4]]
    assert (sciriff_jax.load_model(root / "hf").generate(prompts, max_new_tokens=3, eos_id=-1)
            == sciriff_jax.load_model(root / "ckpt").generate(prompts, max_new_tokens=3, eos_id=-1))


def test_bfloat16_loading_keeps_logits_close(saved):
    root, _ = saved
    tokens = np.array([[1, 5, 9, 3]])
    full = sciriff_jax.load_model(root / "ckpt").logits(tokens)
    half = sciriff_jax.load_model(root / "ckpt", dtype="bfloat16")
    assert half.config.dtype == "bfloat16" and {x.dtype.name for x in jax.tree.leaves(half.params)} == {"bfloat16"}
    np.testing.assert_allclose(half.logits(tokens), full, atol=5e-2 * max(1.0, np.abs(full).max()))


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sciriff_jax.load_model(tmp_path / "nope")
