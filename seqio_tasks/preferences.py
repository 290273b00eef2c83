"""Preference data as SeqIO tasks: chosen / rejected conversations rendered by the chat format SFT trains with.

A preference folder is laid out like the release: `<folder>/<task>/<split>-00000-of-00001.jsonl` (or .parquet),
one row per pair with `_instance_id`, `input` (the user turn), `chosen` and `rejected`: each the assistant's answer
text, or a whole conversation (a list of {role, content} messages, as TRL's preference datasets). `sciriff-jax data
prefs` writes such folders. `register(folder, chat_format)` registers one SeqIO task over every task folder in it
(and one per task folder, `<name>_<task>`); its examples hold `chosen` / `rejected` token ids with their loss masks
(1 on the assistant turns only, `ChatFormat.encode_chat`), and `get_pair_dataset` turns them into the batch contract
with 2 rows per pair (chosen even, rejected odd), one conversation per row.
"""
import glob
import hashlib
import json
import os

import numpy as np
import seqio
import tensorflow as tf

from sciriff_jax.chat.format import ChatFormat
from sciriff_jax.chat.render import single_turn
from seqio_tasks import sources

FIELDS = ("_instance_id", "input", "chosen", "rejected")
SPLITS = ("train", "validation", "test")
SUMMARY = "prefs_summary.json"   # what `data prefs` counted, beside the task folders


def task_folders(folder) -> list[str]:
    """The task folders of a preference folder (sorted); none is an error naming the layout."""
    folder = os.fspath(folder)
    found = sorted(d for d in glob.glob(os.path.join(folder, "*"))
                   if os.path.isdir(d) and any(sources.find_release_files(folder, os.path.basename(d), s)
                                               for s in SPLITS))
    if not found:
        raise FileNotFoundError(f"{folder}: no preference data there; expected <task>/<split>-00000-of-00001.jsonl "
                                f"files with fields {list(FIELDS)} (`sciriff-jax data prefs` writes them)")
    return found


def conversation(row: dict, side: str, where: str) -> list[dict]:
    """The `chosen` / `rejected` conversation of a row: the user turn + the answer, or the messages given."""
    value = row[side]
    if isinstance(value, str):
        return single_turn(row["input"], value)
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m
                                                  for m in value):
        if value[-1]["role"] != "assistant":
            raise ValueError(f"{where}: {side!r} must end with an assistant turn (what the pair compares)")
        return [{"role": m["role"], "content": str(m["content"])} for m in value]
    raise ValueError(f"{where}: {side!r} must be the answer text or a list of {{role, content}} messages, "
                     f"got {json.dumps(value)[:60]}")


def read_pairs(folder, task: str, split: str) -> list[dict]:
    """The rows of one task folder's split, each side as a JSON conversation (empty list when the split is absent)."""
    rows = []
    for path in sources.find_release_files(folder, task, split):
        for i, row in enumerate(sources.read_rows(path, required=FIELDS)):
            where = f"{path}: row {i + 1}"
            rows.append({"_instance_id": row["_instance_id"], "input": row["input"],
                         "chosen": json.dumps(conversation(row, "chosen", where)),
                         "rejected": json.dumps(conversation(row, "rejected", where))})
    return rows


def _tokenize(chat_format: ChatFormat):
    """The preprocessor: each side's conversation -> `<side>` ids and `<side>_loss_mask` (assistant turns)."""
    def encode(text):
        enc = chat_format.encode_chat(json.loads(text.decode("utf-8")))
        return np.asarray(enc.ids, np.int32), np.asarray(enc.mask, np.int32)

    def fn(x):
        out = dict(x)
        for side in ("chosen", "rejected"):
            ids, mask = tf.numpy_function(encode, [x[side]], (tf.int32, tf.int32), stateful=False)
            ids.set_shape([None])
            mask.set_shape([None])
            out[side], out[side + "_loss_mask"] = ids, mask
            out[side + "_pretokenized"] = x[side]
        return out

    def tokenize(ds, output_features):
        chat_format.check()
        return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    return tokenize


def task_name(folder, chat_format: ChatFormat, prefix: str = "prefs") -> str:
    """The SeqIO name of a folder's preference task for a format: prefs_<folder>_<hash of folder + format>."""
    folder = os.path.abspath(os.fspath(folder))
    key = hashlib.sha256(repr((folder, chat_format.identity)).encode()).hexdigest()[:8]
    base = "".join(c if c.isalnum() else "_" for c in os.path.basename(folder.rstrip("/")) or "root")
    return f"{prefix}_{base}_{key}"


def register(folder, chat_format: ChatFormat, prefix: str = "prefs") -> str:
    """Register the preference tasks of `folder` tokenized with `chat_format`; returns the name of the task over all
    its task folders (each task folder is also `<name>_<task>`). Registering again replaces them."""
    folder = os.path.abspath(os.fspath(folder))
    tasks = [os.path.basename(d) for d in task_folders(folder)]
    name = task_name(folder, chat_format, prefix)

    def load(names):
        return lambda split: [r for t in names for r in read_pairs(folder, t, split)]

    for task_label, names in [(name, tasks)] + [(f"{name}_{t}", [t]) for t in tasks]:
        if task_label in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(task_label)
        source = sources.RowsSource(load(names), splits=SPLITS, keys=FIELDS,
                                    describe=lambda split, n=names: f"preference folder {folder} ({', '.join(n)})")
        feature = seqio.Feature(chat_format.vocabulary, add_eos=False, dtype=tf.int32)
        task = seqio.TaskRegistry.add(task_label, source=source, output_features={"chosen": feature,
                                                                                  "rejected": feature},
                                      preprocessors=[_tokenize(chat_format)], shuffle_buffer_size=512)
        task.sciriff_metadata = {"preferences": folder, "tasks": names}
    return name


def _rows(ids, mask, length: int):
    """One conversation -> one row of the batch contract: inputs all tokens but the last, targets all but the first,
    the loss on the assistant turns' targets; cut to `length` (callers drop longer ones), padded with 0."""
    n = tf.minimum(tf.size(ids) - 1, length)
    pad = [[0, length - n]]
    real = tf.ones([n], tf.int32)
    return {"decoder_input_tokens": tf.pad(ids[:n], pad), "decoder_target_tokens": tf.pad(ids[1:n + 1], pad),
            "decoder_loss_weights": tf.pad(mask[1:n + 1], pad), "decoder_segment_ids": tf.pad(real, pad),
            "decoder_positions": tf.pad(tf.range(n, dtype=tf.int32), pad)}


def fits(ex, length: int):
    """Whether both conversations of a pair fit a row of `length` tokens (tokens - 1 <= length)."""
    return tf.logical_and(tf.size(ex["chosen"]) - 1 <= length, tf.size(ex["rejected"]) - 1 <= length)


def get_pair_dataset(name: str, *, split: str, length: int, pairs: int, shuffle: bool = True, seed: int = 0,
                     shard: seqio.ShardInfo | None = None, num_epochs: int | None = None) -> tf.data.Dataset:
    """Batches of `pairs` pairs as the batch contract with 2 x pairs rows (pair i: chosen row 2i, rejected 2i+1),
    one conversation per row; pairs longer than `length` tokens are left out (`count_pairs` counts them)."""
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(None, split=split, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                          shard_info=shard or seqio.ShardInfo(index=0, num_shards=1), trim_output_features=False)
    ds = ds.filter(lambda ex: fits(ex, length))

    def to_rows(ex):
        c, r = _rows(ex["chosen"], ex["chosen_loss_mask"], length), _rows(ex["rejected"], ex["rejected_loss_mask"],
                                                                          length)
        return {k: tf.stack([c[k], r[k]]) for k in c}

    ds = ds.map(to_rows, num_parallel_calls=tf.data.AUTOTUNE).batch(pairs, drop_remainder=True)
    return ds.map(lambda b: {k: tf.reshape(v, [2 * pairs, length]) for k, v in b.items()}).prefetch(tf.data.AUTOTUNE)


def count_pairs(name: str, *, split: str, length: int) -> tuple[int, int]:
    """(pairs that fit `length`, pairs left out as longer) in one pass over a preference task's split."""
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(None, split=split, shuffle=False, num_epochs=1, trim_output_features=False)
    kept, total = ds.reduce((0, 0), lambda acc, ex: (acc[0] + tf.cast(fits(ex, length), tf.int32), acc[1] + 1))
    return int(kept), int(total) - int(kept)
