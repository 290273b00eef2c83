"""benchmarks/grpo_rollout.py runs at tiny shapes: both stacks sample every answer to its full length."""
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from benchmark_results import read_result  # noqa: E402
from benchmarks import grpo_rollout  # noqa: E402


def test_grpo_rollout_benchmark_writes_both_rows(tmp_path, capsys):
    out = tmp_path / "grpo_rollout.json"
    grpo_rollout.main(["--tiny", "--group", "2", "--prompt_lengths", "20,33", "--new", "8", "--out", str(out)])
    rows = read_result(out)["rows"]
    assert "| system | new_tokens_per_s |" in capsys.readouterr().out
    assert [r["system"].split()[0] for r in rows] == ["transformers", "sciriff-jax"]
    assert all(r["new_tokens"] == 2 * 2 * 8 and r["new_tokens_per_s"] > 0 for r in rows)
    assert rows[0]["vs_transformers"] == 1.0
