"""SciRIFF-Eval decoding with the tiny model on CPU: answer order, outputs, progress, resuming, the training eval hook."""
import json

import pytest

from sciriff_jax.chat.format import ChatFormat
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


def test_continuous_batching_keeps_each_answer_with_its_prompt(tiny_model, capsys):
    config, params, vocabulary = tiny_model
    prompts = ["short", "a longer prompt of words", "mid length", "x y z w", "tiny one"]
    together = evaluate.decode_texts(config, params, prompts, ChatFormat(vocabulary, "tulu"), max_new_tokens=4, batch_size=2)
    assert "5/5 instances" in capsys.readouterr().out
    alone = [evaluate.decode_texts(config, params, [p], ChatFormat(vocabulary, "tulu"), max_new_tokens=4, batch_size=1)[0] for p in prompts]
    assert together == alone


def test_overlong_prompt_keeps_its_last_tokens_like_lm_eval(tiny_model, capsys):
    import dataclasses

    from sciriff_jax.decoding.generate import GenerationConfig, generate

    config, params, vocabulary = tiny_model
    short_context = dataclasses.replace(config, max_position=16)
    text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    tokens = vocabulary.encode(text)
    assert len(tokens) > 12
    got = evaluate.decode_texts(short_context, params, [text], ChatFormat(vocabulary, "tulu"), max_new_tokens=4, batch_size=1)
    want = generate(short_context, params, [tokens[-12:]], GenerationConfig(4, vocabulary.eos_id), batch_size=1)
    assert got == [vocabulary.decode(want[0])]
    assert "1 prompt(s) longer than 12 tokens" in capsys.readouterr().out


def test_eval_hook_returns_flat_metrics_with_parse_rates(tiny_model, tmp_path):
    config, params, vocabulary = tiny_model
    hook = evaluate.make_eval_hook(evaluate.EvalConfig("sciriff_sample_ner", max_examples=2, max_new_tokens=4, batch_size=2),
                                   config=config, chat_format=ChatFormat(vocabulary, "tulu"), output_dir=tmp_path)
    flat = hook(params, 7)
    assert set(flat) == {"mean", "json_parse_rate", "sciriff_sample_ner/json_parse_rate", "sciriff_sample_ner/f1"}
    assert all(isinstance(v, float) for v in flat.values())
    assert (tmp_path / "step_7" / "summary.md").is_file()


def test_evaluate_run_from_orbax_from_hugging_face_and_sharded_gives_the_same_predictions(tiny_model, tmp_path, capsys):
    from sciriff_jax.io import checkpoint
    from sciriff_jax.io import hf

    from sciriff_jax.io import tokenizer_files

    config, params, vocabulary = tiny_model
    checkpoint.save_params(tmp_path / "ckpt", params, config)
    tokenizer_files.write_format(tmp_path / "ckpt" / "tokenizer", ChatFormat(vocabulary, "tulu"))  # as a run records it
    hf.write_hf(params, config, tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.model").write_bytes(open(vocabulary.sentencepiece_model_file, "rb").read())
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
    out = capsys.readouterr().out
    assert "[eval] sciriff_sample_list_qa: 2/2 instances" in out and "KV cache:" in out  # progress, memory


def test_prompts_start_with_bos_where_the_tokenizer_adds_it_and_the_template_does_not_write_it(tmp_path):
    from sciriff_jax.io import loader
    from tests import hf_dirs

    hf_dirs.byte_bpe_tokenizer(tmp_path / "bos", bos=True)
    hf_dirs.byte_bpe_tokenizer(tmp_path / "nobos", bos=False)
    with_bos = ChatFormat(loader.vocabulary_for(str(tmp_path / "bos")), "tulu")
    assert with_bos.bos_id == with_bos.vocabulary.bos_id is not None
    assert ChatFormat(loader.vocabulary_for(str(tmp_path / "nobos")), "tulu").bos_id is None
    assert ChatFormat(loader.vocabulary_for(str(tmp_path / "bos")), "llama2").bos_id is None  # writes <s> itself


def test_a_rerun_keeps_the_predictions_written_and_decodes_only_the_rest(tiny_model, tmp_path, capsys):
    config, params, vocabulary = tiny_model
    eval_config = evaluate.EvalConfig("sciriff_sample_ner", max_examples=3, max_new_tokens=4, batch_size=2)
    loaded = evaluate.load_examples(["sciriff_sample_ner"], "validation", 3)
    fresh = evaluate.predict_tasks(config, params, loaded, ChatFormat(vocabulary, "tulu"), eval_config=eval_config, output_dir=tmp_path)
    final = tmp_path / "predictions" / "sciriff_sample_ner.jsonl"
    lines = final.read_text().splitlines()
    # A run stopped after two predictions: a partial file (its last line cut mid-write), no final file.
    final.unlink()
    partial = tmp_path / "predictions" / "sciriff_sample_ner.partial.jsonl"
    marked = dict(json.loads(lines[2]), prediction="kept from the first run")
    partial.write_text(json.dumps(marked) + "\n" + lines[0] + "\n" + lines[1][:20])
    capsys.readouterr()
    again = evaluate.predict_tasks(config, params, loaded, ChatFormat(vocabulary, "tulu"), eval_config=eval_config, output_dir=tmp_path)
    out = capsys.readouterr().out
    assert "resuming: 2 prediction(s)" in out and "3/3 instances (2 resumed)" in out
    assert again["sciriff_sample_ner"][2]["prediction"] == "kept from the first run"
    assert again["sciriff_sample_ner"][:2] == fresh["sciriff_sample_ner"][:2]
    assert not partial.exists() and len(final.read_text().splitlines()) == 3


def test_a_rerun_with_other_weights_is_refused_rather_than_mixed_in(tiny_model, tmp_path):
    import jax

    config, params, vocabulary = tiny_model
    eval_config = evaluate.EvalConfig("sciriff_sample_ner", max_examples=1, max_new_tokens=2, batch_size=1)
    loaded = evaluate.load_examples(["sciriff_sample_ner"], "validation", 1)
    evaluate.predict_tasks(config, params, loaded, ChatFormat(vocabulary, "tulu"), eval_config=eval_config, output_dir=tmp_path)
    other = jax.tree.map(lambda x: x * 2, params)
    with pytest.raises(ValueError, match="other settings \\(params.*another OUTPUT_DIR"):
        evaluate.predict_tasks(config, other, loaded, ChatFormat(vocabulary, "tulu"), eval_config=eval_config, output_dir=tmp_path)


def test_progress_reports_instances_per_second_and_eta_from_the_first_finished_instance():
    from sciriff_jax.eval.progress import Progress

    now, lines = [100.0], []
    p = Progress(10, "mix", every_s=0.0, clock=lambda: now[0], out=lambda line, flush: lines.append(line))
    now[0] = 160.0  # compiling took a minute
    p.update(5)
    for _ in range(4):
        now[0] += 2.0
        p.update(5)
    assert lines[-1] == ("[eval] mix: 5/10 instances, 0.50 instances/s, 2.5 new tokens/s, ETA 00:10, "
                         "elapsed 01:08")
