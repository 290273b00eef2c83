"""The decoding benchmark runs both stacks on the same weights at tiny shapes and writes its JSON."""
import json

from benchmarks import decode


def test_decode_benchmark_times_both_stacks_on_the_same_weights(tmp_path):
    out = tmp_path / "decode.json"
    decode.main(["--tiny", "--iters", "1", "--warmup", "0", "--batch", "2", "--prompt", "16", "--new", "4",
                 "--no-split", "--out", str(out)])
    payload = json.loads(out.read_text())
    systems = [r["system"] for r in payload["rows"]]
    assert systems[0].startswith("transformers") and systems[1].startswith("sciriff-jax")
    assert all(r["new_tokens_per_s"] > 0 and r["seconds"] > 0 for r in payload["rows"])
    # Same weights, same prompts, greedy: the first new token agrees (a wrong weight copy gives ~1/vocab).
    assert payload["agreement"]["first_token_agreement"] >= 0.5


def test_agreement_counts_the_common_prefix():
    a = decode.agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [7, 5, 6]])
    assert a == {"first_token_agreement": 0.5, "mean_common_prefix": 1.0}


def test_sciriff_case_runs_both_stacks_on_forced_answer_lengths(tmp_path, shared_sciriff):
    out = tmp_path / "decode_sciriff.json"
    decode.main(["--case", "sciriff", "--tiny", "--prompts", "3", "--batch", "2", "--out", str(out)])
    payload = json.loads(out.read_text())
    jax_row, torch_row = payload["rows"][-1], payload["rows"][0]
    assert torch_row["system"].startswith("transformers") and jax_row["system"].startswith("sciriff-jax")
    assert jax_row["vs_transformers"] == torch_row["seconds"] / jax_row["seconds"]
    # Forced lengths: both stacks stop every row at its reference length, on the same weights.
    assert payload["agreement"]["first_token_agreement"] == 1.0
    assert len(payload["work"]["answer_lengths"]) == 3


def test_useful_work_counts_both_schedules_on_the_sciriff_eval_lengths(tmp_path, shared_sciriff):
    from benchmarks import decode_work

    out = tmp_path / "work.json"
    decode_work.main(["--tiny", "--batches", "4", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert set(payload["tasks"]) >= {"scifact_entailment", "multicite_intent_classification"}
    row = payload["rows"][0]
    assert row["instances"] == 9 * 20
    assert 0 < row["fixed_useful"] < row["continuous_useful"] <= 1.0
    assert row["continuous_prefill_computed"] >= row["prompt_tokens"]


def test_sciriff_lengths_match_the_task_statistics(shared_sciriff):
    import csv

    from benchmarks import sciriff_lengths

    lengths = sciriff_lengths.eval_lengths(shared_sciriff)
    stats = {r["name"]: r for r in csv.DictReader((shared_sciriff / "tasks.tsv").open(), delimiter="\t")}
    assert sum(len(d["prompt"]) for d in lengths.values()) == 4177
    biored = lengths["biored_ner"]
    # Prompt = input + template; answers = reference + EOS: the means sit just above tasks.tsv's.
    assert float(stats["biored_ner"]["mean_toks_input"]) < sum(biored["prompt"]) / 100 < 1.02 * float(
        stats["biored_ner"]["mean_toks_input"])
    assert all(p <= 3072 for d in lengths.values() for p in d["prompt"])
    assert all(1 <= a <= 1024 for d in lengths.values() for a in d["answer"])
