"""Eval's DTYPE: float16 (as the release decoded) computes in float16 end to end; "auto" is float32 on a CPU; the
summary records the dtypes that ran."""
import json

import jax
import numpy as np
import pytest

from sciriff_jax.eval import evaluate
from sciriff_jax.io import hf, loader
from sciriff_jax.model import llama
from sciriff_jax.model.config import LlamaConfig


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from seqio_tasks import vocab as vocab_lib

    vocabulary = vocab_lib.get_vocabulary()
    config = LlamaConfig(vocab_size=1536, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                         num_kv_heads=1, max_position=1024, dtype="float32")
    path = tmp_path_factory.mktemp("fp16") / "hf"
    hf.write_hf(llama.init_params(config, jax.random.PRNGKey(0)), config, path)
    (path / "tokenizer.model").write_bytes(open(vocabulary.sentencepiece_model_file, "rb").read())
    return path


def test_float16_params_compute_in_float16_and_stay_close_to_float32(hf_dir):
    half = loader.load(hf_dir, dtype="float16", with_tokenizer=False)
    assert (half.config.param_dtype, half.config.dtype) == ("float16", "float16")
    assert all(x.dtype == np.float16 for x in jax.tree.leaves(half.params))
    tokens = np.array([[1, 5, 9, 300, 7, 2]])
    full = loader.load(hf_dir, dtype="float32", with_tokenizer=False).logits(tokens)
    np.testing.assert_allclose(half.logits(tokens), full, atol=2e-2)
    assert loader.load(hf_dir, dtype="auto", with_tokenizer=False).config.dtype == "float32"  # a CPU's default


def test_eval_runs_in_float16_and_records_it(hf_dir, tmp_path, capsys):
    eval_config = evaluate.EvalConfig("sciriff_sample_list_qa", max_examples=2, max_new_tokens=4, batch_size=2)
    summary = evaluate.evaluate_run(checkpoint_path=str(hf_dir), eval_config=eval_config,
                                    output_dir=str(tmp_path / "out"), dtype="float16")
    assert 0.0 <= summary["json_parse_rate"] <= 1.0
    assert "[eval] params in float16, compute in float16" in capsys.readouterr().out
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    text = json.dumps(written)
    assert '"compute_dtype": "float16"' in text and '"dtype": "float16"' in text
