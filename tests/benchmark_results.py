"""What the benchmark tests share: the fastest CPU flags and a reader that checks a result file's environment."""
import json

FAST = ["--tiny", "--iters", "1", "--warmup", "0"]


def read_result(path):
    """A benchmark's JSON output, checked to name the JAX version and the device it ran on."""
    payload = json.loads(path.read_text())
    assert payload["environment"]["jax"] and payload["environment"]["device"]
    return payload
