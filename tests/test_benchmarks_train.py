"""The training-step benchmark times both stacks on CPU at tiny shapes and writes its JSON."""
import math

import pytest

from benchmark_results import FAST, read_result as _read
from benchmarks import train_step



def test_train_step_benchmark_times_both_stacks_on_one_batch(tmp_path):
    out = tmp_path / "train.json"
    train_step.main(FAST + ["--remat", "none", "--microbatches", "2", "--profile", str(tmp_path / "trace"),
                            "--out", str(out)])
    payload = _read(out)
    systems = [r["system"] for r in payload["rows"]]
    assert systems[0].startswith("transformers") and systems[1].startswith("sciriff-jax")
    vocab = payload["model"]["vocab_size"]
    for r in payload["rows"]:
        assert r["tokens_per_s"] > 0 and r["model_tflops"] > 0
        # Random init on random tokens: both stacks start near the uniform-prediction loss.
        assert abs(r["final_loss"] - math.log(vocab)) < 0.5
    # Both stacks built the same model: their own parameter counts match the config's.
    assert [r["params"] for r in payload["rows"]] == [payload["num_params"]] * 2
    assert payload["rows"][0]["vs_transformers"] == pytest.approx(1.0)
    # Each system's own peak memory (a child process each), the ratio, and the machine's load while timing.
    assert all(r["peak_rss_gb"] > 0.1 for r in payload["rows"]) and payload["rows"][1]["rss_vs_transformers"] > 0
    assert len(payload["load_avg_before"]) == 3 and payload["microbatches"] == 2
    assert "loss=chunked" in systems[1] and payload["rows"][1]["temp_gb"] > 0  # XLA's memory analysis of the step
    # The traced steps left a trace and a ranking of the ops that took the time.
    top = payload["rows"][1]["profile_top"]
    assert top and all(r["ms_per_call"] > 0 for r in top) and sum(r["share"] for r in top) <= 1.0 + 1e-9
    assert list((tmp_path / "trace").rglob("*.xplane.pb"))


def test_train_step_synthetic_batch_follows_the_batch_contract():
    b = train_step.synthetic_batch(2, 8, 50, doc=4)
    assert (b["decoder_segment_ids"][0] == [1, 1, 1, 1, 2, 2, 2, 2]).all()
    assert (b["decoder_positions"][0] == [0, 1, 2, 3, 0, 1, 2, 3]).all()
    assert (b["decoder_input_tokens"][:, 1:] == b["decoder_target_tokens"][:, :-1]).all()


def test_train_step_interleaving_counterbalances_the_order():
    ran = []
    systems = {name: {"one": (lambda name=name: ran.append(name)), "sync": lambda _: None, "info": {}}
               for name in ("torch", "jax")}
    timing = train_step.interleaved(systems, warmup=1, iters=4)
    # Built and warmed in order, then timed B A, A B, B A, A B: each system follows the other as often as itself.
    assert ran == ["torch", "torch", "jax", "jax"] + ["jax", "torch", "torch", "jax", "jax", "torch", "torch", "jax"]
    assert timing["torch"]["step_after"] == ["jax", "torch", "jax", "torch"]
    assert timing["jax"]["step_after"] == ["jax", "torch", "jax", "torch"]
    assert {"median_s_after_other", "median_s_after_self"} <= set(timing["jax"])


def test_train_parts_benchmark_times_the_head_and_attention_against_torch(tmp_path):
    from benchmarks import train_parts

    out = tmp_path / "parts.json"
    train_parts.main(["--tiny", "--iters", "1", "--warmup", "0", "--blocks", "16,32", "--out", str(out)])
    rows = _read(out)["rows"]
    parts = {}
    for r in rows:
        parts.setdefault(r["part"], []).append(r)
        assert r["median_s"] > 0 and r["vs_torch"] > 0
    # Each part: the PyTorch peer first (ratio 1), then every jax variant; exactly one attention row is auto's pick.
    assert [r["system"].startswith("torch") or r["system"].startswith("transformers") for r in rows].count(True) == 2
    assert len(parts["head"]) == 3 and len(parts["attention"]) == 4
    assert sum(r["system"].endswith("(auto)") for r in parts["attention"]) == 1
    # The tile sweep: attention only, at each row length with the same tokens per call.
    sweep = train_parts.main(["--tiny", "--iters", "1", "--warmup", "0", "--blocks", "16,32", "--sweep", "16,64"])
    assert sorted({r["seq"] for r in sweep["rows"]}) == [16, 64] and len(sweep["rows"]) == 2 + 3
