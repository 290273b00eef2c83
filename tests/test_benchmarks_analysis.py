"""The analysis compiles the real train step from abstract inputs and reports memory, FLOPs and bytes."""
import json

from benchmarks import analysis, common


def test_analysis_compiles_the_real_train_step_and_counts_parameters(tmp_path):
    out = tmp_path / "analysis.json"
    analysis.main(["--tiny", "--policies", "full", "--memory-cases", "1", "--out", str(out)])
    payload = json.loads(out.read_text())
    tables = payload["tables"]
    config = common.model_config(True)
    assert payload["rows"][0]["params"] == config.num_params()
    mem = tables["memory"]
    assert {r["remat"] for r in mem} == {"full"}
    for r in mem:
        # Arguments = fp32 params + two fp32 AdamW moments (+ the step counter and the batch).
        assert r["arguments_gb"] * 1e9 >= 12 * config.num_params()
        assert r["residual_gb"] > 0 and r["temporaries_gb"] > 0
    hlo = tables["hlo_flops"][0]
    assert 0.8 < hlo["hlo_over_formula"] < 2.0
    attn = tables["attention_flops"]
    assert all(r["packed_useful_tflop"] < r["unpacked_tflop"] for r in attn)
