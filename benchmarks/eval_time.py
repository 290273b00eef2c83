"""Wall time of `sciriff-jax eval` on the six shared SciRIFF-Eval tasks (755 real validation instances).

The shared folder holds six of the nine eval tasks, so a mixture of those six is registered and
`evaluate.evaluate_run` (what `sciriff-jax eval` runs) decodes and scores it from a checkpoint, e.g. the
demo's tiny model (`make demo` -> runs/demo). Needs the data layer (TensorFlow), unlike the GPU benchmarks.

  python -m benchmarks.eval_time --checkpoint runs/demo --max-new 96 --out benchmarks/results/eval_time_cpu.json
"""
from __future__ import annotations

import os
import time

from benchmarks import common, sciriff_lengths

SHARED_TASKS = ("bioasq_list_qa", "biored_ner", "evidence_inference", "qasper_abstractive_qa", "scierc_ner",
                "scifact_entailment")


def main(argv=None) -> dict:
    """Time one eval of the six shared tasks; returns the JSON payload."""
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="Orbax checkpoint or Hugging Face directory")
    p.add_argument("--shared", default=str(sciriff_lengths.SHARED / "hub_layout"),
                   help="release folder holding 4096/validation-*.parquet")
    p.add_argument("--max-new", type=int, default=96, help="MAX_NEW_TOKENS (the demo's 96 by default)")
    p.add_argument("--batch", type=int, default=32, help="BATCH_SIZE (slots)")
    p.add_argument("--max-examples", type=int, default=None, help="per task (default: all)")
    p.add_argument("--output-dir", default="/tmp/sciriff_eval_time", help="predictions and summary (reruns resume)")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    os.environ["SCIRIFF_JAX_DATA_DIR"] = args.shared
    import seqio

    import seqio_tasks  # noqa: F401  registers the tasks
    from sciriff_jax.eval import evaluate

    name = "sciriff_4096_eval_shared6"
    if name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(name, [(f"sciriff_4096_{t}", 1.0) for t in SHARED_TASKS])
    config = evaluate.EvalConfig(name, max_examples=args.max_examples, max_new_tokens=args.max_new,
                                 batch_size=args.batch)
    t0 = time.perf_counter()
    summary = evaluate.evaluate_run(checkpoint_path=args.checkpoint, eval_config=config, output_dir=args.output_dir,
                                    dtype=args.dtype)
    secs = time.perf_counter() - t0
    n = sum(r["n"] for r in summary["tasks"].values())
    row = {"system": "sciriff-jax eval (continuous batching)", "instances": n, "seconds": secs,
           "instances_per_s": n / secs, "mean": summary["mean"], "json_parse_rate": summary["json_parse_rate"]}
    return common.report("eval wall time, six shared SciRIFF-Eval tasks", args, [row],
                         ["system", "instances", "seconds", "instances_per_s", "mean", "json_parse_rate"])


if __name__ == "__main__":
    main()
