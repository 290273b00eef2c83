"""The data-pipeline benchmark (the one needing seqio + TensorFlow) reads the sample mixture, writes JSON."""
import json

from benchmarks import data_pipeline


def test_data_pipeline_benchmark_reports_fill_rate(tmp_path):
    out = tmp_path / "data.json"
    data_pipeline.main(["--tiny", "--lengths", "512", "--batches", "2", "--out", str(out)])
    payload = json.loads(out.read_text())
    assert payload["environment"]["seqio"]
    rows = {r["layout"]: r for r in payload["rows"]}
    assert 0 < rows["unpacked"]["fill_rate"] <= rows["packed"]["fill_rate"] <= 1
    assert rows["packed"]["docs_per_row"] >= rows["unpacked"]["docs_per_row"] == 1
    assert rows["packed"]["tokens_per_s"] > 0
