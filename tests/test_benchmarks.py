"""Each benchmark runs on CPU at tiny shapes, prints its table and writes its JSON; the FLOP formulas hold."""
import pathlib
import subprocess
import sys

import pytest

from benchmark_results import FAST, read_result as _read
from benchmarks import analysis, attention, common

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_useful_flops_reproduce_the_anchor_packed_attention_throughput():
    # ANCHORS.md: 4 documents of 1,024 tokens in a 4,096 row, 32 heads x 128, fwd+bwd 0.52 ms = 231 TFLOP/s.
    useful = common.packed_useful_flops(4096, 1024, heads=32, head_dim=128)
    assert useful / 0.52e-3 / 1e12 == pytest.approx(231, rel=0.01)
    assert useful == pytest.approx(common.causal_attention_flops(4096, 32, 128) / 4)


def test_attention_benchmark_writes_packed_unpacked_and_separate_rows(tmp_path, capsys):
    out = tmp_path / "attention.json"
    attention.main(FAST + ["--seqs", "128", "--doc", "32", "--backends", "reference", "--out", str(out)])
    rows = _read(out)["rows"]
    assert "| seq | layout | backend |" in capsys.readouterr().out
    layouts = {(r["layout"], r["backend"]) for r in rows}
    assert layouts == {("separate rows", "reference"), ("unpacked", "reference"), ("packed", "reference")}
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in rows)
    packed = next(r for r in rows if r["layout"] == "packed" and r["backend"] == "reference")
    unpacked = next(r for r in rows if r["layout"] == "unpacked" and r["backend"] == "reference")
    assert packed["useful_gflop"] == pytest.approx(unpacked["useful_gflop"] / 4)
    assert packed["packed_vs_separate"] > 0


def test_attention_separate_rows_equal_packed_rows():
    # The baseline must compute the same function as the packed row it is compared with.
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from sciriff_jax.model.attention import attention as attention_fn

    attn = jax.jit(functools.partial(attention_fn, backend="reference"))
    q, k, v, _ = attention.make_inputs(1, 64, 4, 2, 8, jnp.float32)
    packed = attn(q, k, v, segment_ids=attention.packed_segments(1, 64, 16))
    separate = attn(*(attention.to_separate_rows(x, 16) for x in (q, k, v)))
    np.testing.assert_allclose(np.asarray(packed).reshape(separate.shape), np.asarray(separate), atol=1e-5)


def test_decode_floor_for_the_1b_shape_is_near_the_anchor():
    # ANCHORS.md: ~0.7 ms per greedy step (~45K tokens/s) on an H200 for batch 32, 1,024-token prompts.
    rows = analysis.decode_rows(common.model_config(False), batch=32, prompt=1024, new=256)
    h200 = next(r for r in rows if r["card"].startswith("H200"))
    assert 0.5 < h200["step_floor_ms"] < 0.8
    assert 40_000 < h200["decode_tokens_s_ceiling"] < 65_000


def test_gpu_benchmarks_import_neither_tensorflow_nor_seqio():
    code = ("import sys, benchmarks.train_step, benchmarks.attention, benchmarks.analysis, benchmarks.decode\n"
            "import sciriff_jax.model.llama, sciriff_jax.train.step, sciriff_jax.decoding.generate, sciriff_jax.io.hf\n"
            "bad = sorted(m for m in ('tensorflow', 'seqio', 'seqio_tasks') if m in sys.modules)\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=REPO_ROOT)
