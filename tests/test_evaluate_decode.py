"""SciRIFF-Eval decoding with the tiny model on CPU: answer order, outputs, the training eval hook."""
import json

import pytest

from sciriff_jax.eval import evaluate
from sciriff_jax.parallel.sharding import MeshConfig


@pytest.fixture(scope="module")
def tiny_model():
    import jax

    from sciriff_jax.model import llama
    from sciriff_jax.model.config import LlamaConfig
    from seqio_tasks import vocab as vocab_lib

    vocabulary = vocab_lib.get_vocabulary()
    config = LlamaConfig(vocab_size=1536, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                         num_kv_heads=1, max_position=1024, dtype="float32", param_dtype="float32")
    return config, llama.init_params(config, jax.random.PRNGKey(0)), vocabulary


def test_decoding_in_length_sorted_chunks_keeps_each_answer_with_its_prompt(tiny_model, monkeypatch):
    config, params, vocabulary = tiny_model
    # Different lengths, all within one 16-token bucket, so the test compiles few programs.
    prompts = ["short", "a longer prompt of words", "mid length", "x y z w", "tiny one"]
    assert all(len(vocabulary.encode(p)) <= 16 for p in prompts)
    monkeypatch.setattr(evaluate, "CHUNK_BATCHES", 1)
    together = evaluate.decode_texts(config, params, prompts, vocabulary, max_new_tokens=4, batch_size=2)
    alone = [evaluate.decode_texts(config, params, [p], vocabulary, max_new_tokens=4, batch_size=1)[0] for p in prompts]
    assert together == alone


def test_overlong_prompt_keeps_its_last_tokens_like_lm_eval(tiny_model, capsys):
    import dataclasses

    from sciriff_jax.eval import decode

    config, params, vocabulary = tiny_model
    short_context = dataclasses.replace(config, max_position=16)
    text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    tokens = vocabulary.encode(text)
    assert len(tokens) > 12
    got = evaluate.decode_texts(short_context, params, [text], vocabulary, max_new_tokens=4, batch_size=1)
    want = decode.generate(short_context, params, [tokens[-12:]], max_new_tokens=4, eos_id=vocabulary.eos_id, batch_size=1)
    assert got == [vocabulary.decode(want[0])]
    assert "1 prompt(s) longer than 12 tokens" in capsys.readouterr().out


def test_eval_hook_returns_flat_metrics_with_parse_rates(tiny_model, tmp_path):
    config, params, vocabulary = tiny_model
    hook = evaluate.make_eval_hook(evaluate.EvalConfig("sciriff_sample_ner", max_examples=2, max_new_tokens=4, batch_size=2),
                                   config=config, vocabulary=vocabulary, output_dir=tmp_path)
    flat = hook(params, 7)
    assert set(flat) == {"mean", "json_parse_rate", "sciriff_sample_ner/json_parse_rate", "sciriff_sample_ner/f1"}
    assert all(isinstance(v, float) for v in flat.values())
    assert (tmp_path / "step_7" / "summary.md").is_file()


def test_evaluate_run_from_orbax_from_hugging_face_and_sharded_gives_the_same_predictions(tiny_model, tmp_path, capsys):
    from sciriff_jax.io import checkpoint
    from sciriff_jax.io import hf

    config, params, _ = tiny_model
    checkpoint.save_params(tmp_path / "ckpt", params, config)
    hf.write_hf(params, config, tmp_path / "hf")
    runs = {}
    for kind, source, layout in (("ckpt", "ckpt", None), ("hf", "hf", None), ("fsdp", "ckpt", "fsdp")):
        eval_config = evaluate.EvalConfig("sciriff_sample_list_qa", max_examples=2, max_new_tokens=4, batch_size=2)
        runs[kind] = evaluate.evaluate_run(checkpoint_path=str(tmp_path / source), eval_config=eval_config,
                                           output_dir=str(tmp_path / f"out_{kind}"), dtype="float32",
                                           mesh=MeshConfig(layout) if layout else None)
    summary = runs["ckpt"]
    assert list(summary["table"]) == ["sciriff_sample_list_qa/f1"] and 0.0 <= summary["json_parse_rate"] <= 1.0
    preds = {kind: (tmp_path / f"out_{kind}" / "predictions" / "sciriff_sample_list_qa.jsonl").read_text() for kind in runs}
    assert preds["ckpt"] == preds["hf"] == preds["fsdp"]
    rows = [json.loads(line) for line in preds["ckpt"].splitlines()]
    assert len(rows) == 2 and all({"_instance_id", "output", "prediction", "task"} <= set(r) for r in rows)
    assert "| sciriff_sample_list_qa | f1 |" in (tmp_path / "out_ckpt" / "summary.md").read_text()
    assert json.loads((tmp_path / "out_ckpt" / "summary.json").read_text())["mean"] == summary["mean"]
    assert "2/2 examples" in capsys.readouterr().out  # progress lines


def bos(hf_dir):
    from sciriff_jax.io import loader

    return loader.Loaded(None, None, str(hf_dir), "hf", str(hf_dir / "tokenizer.model"), own_tokenizer=True).bos_id


def test_hugging_face_directory_with_a_llama_tokenizer_gets_bos(tmp_path):
    import shutil

    from seqio_tasks import vocab as vocab_lib

    (tmp_path / "config.json").write_text('{"bos_token_id": 5}')
    shutil.copy(vocab_lib.sample_vocab_path(), tmp_path / "tokenizer.model")
    vocabulary = vocab_lib.get_vocabulary(str(tmp_path / "tokenizer.model"))
    assert vocabulary.tokenizer.bos_id() == -1  # the sample vocabulary has no BOS piece: config.json decides
    assert bos(tmp_path) == 5
    (tmp_path / "tokenizer_config.json").write_text('{"add_bos_token": false}')
    assert bos(tmp_path) is None
