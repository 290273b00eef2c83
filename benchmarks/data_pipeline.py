"""Host-side input pipeline: tokens/s and packing fill rate of the built-in SciRIFF sample mixture.

Needs seqio + TensorFlow by nature (it measures `seqio_tasks.get_dataset`), unlike the other benchmarks;
it never touches an accelerator. For each row length it reads --batches batches of the `sciriff_sample`
mixture, packed and unpacked, and reports rows/s, tokens/s (all slots and non-padding), the fill rate
(non-padding / all slots), the loss-token share and documents per row.

  python -m benchmarks.data_pipeline --out data_pipeline.json
  python -m benchmarks.data_pipeline --tiny --out /tmp/data_pipeline.json
"""
from __future__ import annotations

import os
import time

from benchmarks import common


def measure(mixture: str, length: int, batch: int, batches: int, pack: bool, split: str = "train") -> dict:
    """Read `batches` batches (after the first, which pays the set-up) and summarise speed and fill."""
    import numpy as np
    import seqio_tasks

    t0 = time.perf_counter()
    ds = seqio_tasks.get_dataset(mixture, split, {"targets": length}, batch, shuffle=True, seed=0, pack=pack,
                                 num_epochs=None)
    it = ds.as_numpy_iterator()
    next(it)
    first = time.perf_counter() - t0
    slots = nonpad = loss = docs = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        seg = b["decoder_segment_ids"]
        slots += seg.size
        nonpad += int(np.count_nonzero(seg))
        loss += int(np.count_nonzero(b["decoder_loss_weights"]))
        docs += int(seg.max(axis=1).sum())
    secs = time.perf_counter() - t0
    rows = batches * batch
    return {"length": length, "layout": "packed" if pack else "unpacked", "batch": batch, "batches": batches,
            "first_batch_s": first,
            "rows_per_s": rows / secs, "slot_tokens_per_s": slots / secs, "tokens_per_s": nonpad / secs,
            "fill_rate": nonpad / slots, "loss_token_share": loss / slots, "docs_per_row": docs / rows}


def main(argv=None) -> dict:
    """Run the data-pipeline benchmark; returns the JSON payload."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--mixture", default="sciriff_sample", help="registered SeqIO mixture or task name")
    p.add_argument("--lengths", default=None, help="comma-separated row lengths (default 1024,4096; tiny 256)")
    p.add_argument("--batch", type=int, default=None, help="rows per batch (default 8; tiny 2)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per case (default 50; tiny 3)")
    args = p.parse_args(argv)
    lengths = [int(x) for x in (args.lengths or ("256" if args.tiny else "1024,4096")).split(",")]
    args.batch = args.batch or (2 if args.tiny else 8)
    args.batches = args.batches or (3 if args.tiny else 50)
    rows = []
    for length in lengths:
        for pack in (True, False):
            print(f"  data: {args.mixture} length {length} {'packed' if pack else 'unpacked'} ...", flush=True)
            rows.append(measure(args.mixture, length, args.batch, args.batches, pack))
    cols = ["length", "layout", "tokens_per_s", "slot_tokens_per_s", "rows_per_s", "fill_rate", "loss_token_share",
            "docs_per_row", "first_batch_s"]
    return common.report("data pipeline", args, rows, cols, extra={"mixture": args.mixture})


if __name__ == "__main__":
    main()
