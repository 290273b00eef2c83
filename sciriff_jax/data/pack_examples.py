"""Packing a fixed number of examples into a fixed number of rows, on the host: the same examples per update as an
unpacked run (the release's recipe), at a packed run's cost.

SeqIO's packer fills rows from a stream, so the examples per update vary; here each update is exactly N examples
(one unpacked batch of them), laid out first-fit (longest first) into the update's rows.
"""
from __future__ import annotations

import numpy as np

KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


class PackingError(ValueError):
    """An update's examples do not fit into its rows; the message says how to make room."""


def pack_rows(unpacked: dict, rows: int) -> dict:
    """Unpacked rows (one document each, [n, L]) -> `rows` packed rows [rows, L] with segment ids and positions."""
    n, length = unpacked["decoder_target_tokens"].shape
    lengths = (unpacked["decoder_segment_ids"] > 0).sum(axis=1)
    out = {k: np.zeros((rows, length), np.int32) for k in (*KEYS, "decoder_segment_ids", "decoder_positions")}
    used = np.zeros(rows, np.int64)
    docs = np.zeros(rows, np.int32)
    for i in sorted(range(n), key=lambda i: -lengths[i]):  # longest first: fewer rows left with unusable gaps
        size = int(lengths[i])
        if size == 0:
            continue
        row = next((r for r in range(rows) if used[r] + size <= length), None)
        if row is None:
            raise PackingError(
                f"{n} examples ({int(lengths.sum()):,} tokens) do not fit into {rows} rows of {length} tokens; raise "
                "BATCH_SIZE (rows per update) or lower EXAMPLES_PER_UPDATE")
        start = int(used[row])
        docs[row] += 1
        for k in KEYS:
            out[k][row, start:start + size] = unpacked[k][i, :size]
        out["decoder_segment_ids"][row, start:start + size] = docs[row]
        out["decoder_positions"][row, start:start + size] = np.arange(size)
        used[row] += size
    return out
