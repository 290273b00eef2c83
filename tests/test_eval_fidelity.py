"""Eval fidelity to the release (issue 22): a quick run prompts as the full run; the prompt budget and its cuts."""
import dataclasses
import json

import pytest

from sciriff_jax.chat.format import ChatFormat
from sciriff_jax.eval import evaluate
from sciriff_jax.eval.protocol import Protocol

TASK = "sciriff_4096_evidence_inference"  # the 1-shot task


def test_max_examples_selects_instances_and_nothing_else(shared_sciriff, monkeypatch):
    """An instance's prompt in a quick run (MAX_EXAMPLES) equals its prompt in the full run: the shot comes from
    the whole split, as with lm-eval's --limit (even with MAX_EXAMPLES=1, where the first N held no other shot)."""
    monkeypatch.setenv("SCIRIFF_JAX_DATA_DIR", str(shared_sciriff / "hub_layout"))
    loaded = evaluate.load_examples([TASK], "validation")
    fmt = ChatFormat(None, "tulu")
    full = evaluate.task_prompts(loaded, fmt, evaluate.EvalConfig(TASK))[TASK]
    for n in (1, 5):
        examples, texts = evaluate.task_prompts(loaded, fmt, evaluate.EvalConfig(TASK, max_examples=n))[TASK]
        assert [ex["_instance_id"] for ex in examples] == [ex["_instance_id"] for ex in full[0][:n]]
        assert texts == full[1][:n]
    assert texts[0].count("<|user|>") == 2 and "\n\n\n<|user|>\n" in texts[0]  # one shot, then the instance
    # the old behaviour (shots from the first N only) would give the first instance no shot at all
    assert Protocol("release").prompts(examples[:1], fmt, 1, "evidence_inference")[0].count("<|user|>") == 1


@pytest.fixture(scope="module")
def tiny_model():
    import jax

    from sciriff_jax.model import llama
    from sciriff_jax.model.config import LlamaConfig
    from seqio_tasks import vocab as vocab_lib

    vocabulary = vocab_lib.get_vocabulary()
    config = LlamaConfig(vocab_size=1536, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                         num_kv_heads=1, max_position=160, dtype="float32", param_dtype="float32")
    return config, llama.init_params(config, jax.random.PRNGKey(0)), vocabulary


def test_summary_records_the_budget_and_how_many_prompts_were_cut_by_how_much(tiny_model, tmp_path, capsys):
    config, params, vocabulary = tiny_model
    fmt = ChatFormat(vocabulary, "tulu")
    eval_config = evaluate.EvalConfig("sciriff_sample_ner", max_examples=3, max_new_tokens=2, batch_size=3)
    summary = evaluate.evaluate_tasks(config, params, ["sciriff_sample_ner"], fmt, eval_config=eval_config,
                                      output_dir=tmp_path)
    loaded = evaluate.load_examples(["sciriff_sample_ner"], "validation", 3)
    lengths = [len(fmt.encode(t)) for t in evaluate.task_prompts(loaded, fmt, eval_config)["sciriff_sample_ner"][1]]
    cut = [max(0, n - 158) for n in lengths]
    assert any(cut)  # the sample's prompts exceed the 158-token budget
    want = {"n": 3, "n_cut": sum(c > 0 for c in cut), "tokens_cut_total": sum(cut), "tokens_cut_max": max(cut)}
    prompts = json.loads((tmp_path / "summary.json").read_text())["prompts"]
    assert prompts == summary["prompts"] == {"max_position": 160, "max_new_tokens": 2, "budget": 158,
                                             "n_cut": want["n_cut"], "tasks": {"sciriff_sample_ner": want}}
    out = capsys.readouterr().out
    assert f"{want['n_cut']} of 3 prompt(s) were cut from the left to the budget of 158 tokens" in out
    assert f"{sum(cut)} tokens in all, at most {max(cut)} from one" in out
    # a context that holds them all: nothing cut, nothing said
    wide = dataclasses.replace(config, max_position=4096)
    summary = evaluate.evaluate_tasks(wide, params, ["sciriff_sample_ner"], fmt, eval_config=eval_config)
    assert summary["prompts"]["budget"] == 4094 and summary["prompts"]["n_cut"] == 0
    assert "cut from the left" not in capsys.readouterr().out
