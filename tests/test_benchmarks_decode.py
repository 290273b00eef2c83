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
