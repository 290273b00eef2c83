"""Our decoder-only feature converter: SciRIFF task features -> the batch contract of docs/design.md.

Tasks yield SeqIO's standard `inputs` (the rendered prompt through the assistant header) and `targets`
(the answer + EOS), so SeqIO's own converters work on them unchanged. This converter puts each
`inputs + targets` into one row, with the loss on `targets` and, for multi-turn chats, also on the
earlier assistant turns inside `inputs` (the task's `inputs_loss_mask` feature, which SeqIO's converters
ignore), packs rows, and applies the over-long policy to the whole row.
"""
import logging
import threading
from typing import Mapping

import seqio
import tensorflow as tf

# 2 on tokens of earlier assistant turns inside `inputs` (multi-turn chats), 1 elsewhere. Never 0 on a real
# token, because SeqIO's packer and trimming measure a feature's length by its non-zero entries.
INPUTS_LOSS_MASK = "inputs_loss_mask"
_ROW_MASK = "loss_mask"  # the row's 1/2 mask while packing (internal to this converter)
_ROW_INPUTS = "row_inputs"  # the row's model inputs while packing (internal)
OVERLONG_POLICIES = ("truncate", "drop", "truncate_trained")
# (label, "truncated" | "dropped" | UNTRAINED) -> count of over-long rows seen by this process's pipelines.
OVERLONG_COUNTS: dict[tuple[str, str], int] = {}
UNTRAINED = "dropped: no answer token left after truncation"
_counts_lock = threading.Lock()


def _count(label: str, kind: str):
    def bump():
        with _counts_lock:
            first = (label, kind) not in OVERLONG_COUNTS
            OVERLONG_COUNTS[(label, kind)] = OVERLONG_COUNTS.get((label, kind), 0) + 1
        if first:
            logging.warning("%s: over-long instances are %s (see `sciriff-jax data stats`); "
                            "set seqio_tasks.configure(overlong=...) to change", label, kind)
        return True

    return bump


class ChatFeatureConverter(seqio.FeatureConverter):
    """Packs (by default) `inputs + targets` rows into decoder_{input,target}_tokens, loss weights, segment ids,
    positions.

    `row_length`: tokens per row; None means inputs + targets lengths, as SeqIO's PrefixLM converter.
    `overlong`: a row longer than that is cut at the end ("truncate": the prompt and the start of the answer
    stay) or left out ("drop"); either is counted in OVERLONG_COUNTS under `label`. "truncate_trained" truncates
    as "truncate" and then drops (counting as UNTRAINED) a row left without any trained token, as open-instruct
    does; with it, `seqio_tasks.get_dataset` trims prompts to row + 1 tokens so such a row has none.
    Segment ids and positions are produced unpacked too (one document per row), so the model always sees the
    same five keys.
    """

    TASK_FEATURES = {"inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
                     "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
    MODEL_FEATURES = {k: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                      for k in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                                "decoder_segment_ids", "decoder_positions")}
    PACKING_FEATURE_DTYPES = {}  # segment ids / positions are model features whether packed or not

    def __init__(self, pack: bool = True, row_length: int | None = None, overlong: str = "truncate",
                 label: str = "rows", **kwargs):
        if overlong not in OVERLONG_POLICIES:
            raise ValueError(f"ChatFeatureConverter(overlong={overlong!r}); expected one of {OVERLONG_POLICIES}")
        self.row_length, self.overlong, self.label = row_length, overlong, label
        super().__init__(pack=pack, **kwargs)

    def _row(self, task_feature_lengths: Mapping[str, int]) -> int:
        return int(self.row_length or task_feature_lengths["inputs"] + task_feature_lengths["targets"])

    def _join(self, ex: Mapping[str, tf.Tensor]) -> dict:
        """One document: its tokens as model inputs (all but the last) and as targets (all but the first).

        The first token (BOS where the vocabulary has one) is an input only: position 0 holds it, as at eval
        time and as open-instruct trained SciTulu; no extra start token is put before a document.
        """
        inputs, targets = ex["inputs"], ex["targets"]
        if INPUTS_LOSS_MASK in ex:  # trimmed with `inputs` only when SeqIO trims it: cut it to match
            in_mask = ex[INPUTS_LOSS_MASK][: tf.size(inputs)]
        else:
            in_mask = tf.ones_like(inputs)
        # Ids + 1 while packing: SeqIO's packer measures a document by its non-zero entries, and id 0 is a real
        # token in many vocabularies (Llama 3's and Qwen's "!"); _convert_example takes the 1 off again.
        tokens = tf.concat([inputs, targets], 0) + 1
        mask = tf.concat([in_mask, tf.fill(tf.shape(targets), 2)], 0)
        return {"targets": tokens[1:], _ROW_INPUTS: tokens[:-1], _ROW_MASK: mask[1:]}

    def _apply_overlong(self, ds: tf.data.Dataset, row: int) -> tf.data.Dataset:
        kind = "dropped" if self.overlong == "drop" else "truncated"  # truncate_trained: truncated, then checked

        def keep(x):
            too_long = tf.size(x["targets"]) > row
            # The Python counter runs only for over-long rows, so the common path stays in-graph.
            tf.cond(too_long, lambda: tf.py_function(_count(self.label, kind), [], tf.bool), lambda: tf.constant(True))
            return tf.logical_not(too_long) if self.overlong == "drop" else tf.constant(True)

        ds = ds.filter(lambda x: tf.size(x["targets"]) > 0).filter(keep)
        ds = ds.map(lambda x: {k: v[:row] for k, v in x.items()}, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.filter(self._keep_trained) if self.overlong == "truncate_trained" else ds

    def _keep_trained(self, x) -> tf.Tensor:
        """False for a row that truncation left without any trained token (a prompt longer than the row): it would
        only pad the batch, and under per-microbatch loss normalisation change others' weight. open-instruct drops
        these rows; so does the "truncate_trained" policy, counting each as UNTRAINED in OVERLONG_COUNTS."""
        trained = tf.reduce_any(tf.equal(x[_ROW_MASK], 2))
        tf.cond(trained, lambda: tf.constant(True), lambda: tf.py_function(_count(self.label, UNTRAINED), [], tf.bool))
        return trained

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict:
        shifted = features["targets"]  # ids + 1, 0 = padding
        if self.pack:
            segment_ids, positions = features["targets_segment_ids"], features["targets_positions"]
        else:
            nonpad = tf.cast(tf.not_equal(shifted, 0), tf.int32)
            segment_ids, positions = nonpad, tf.range(tf.size(shifted), dtype=tf.int32) * nonpad
        real = segment_ids > 0
        return {
            "decoder_target_tokens": tf.where(real, shifted - 1, 0),
            # Each document's own tokens shifted by one: no token sees the previous document's last token.
            "decoder_input_tokens": tf.where(real, features[_ROW_INPUTS] - 1, 0),
            "decoder_loss_weights": tf.cast(tf.equal(features[_ROW_MASK], 2), tf.int32),
            "decoder_segment_ids": segment_ids,
            "decoder_positions": positions,
        }

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        row = self._row(task_feature_lengths)
        ds = ds.map(self._join, num_parallel_calls=tf.data.AUTOTUNE)
        ds = self._apply_overlong(ds, row)
        ds = self._pack_or_pad(ds, {"targets": row, _ROW_INPUTS: row, _ROW_MASK: row})
        return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        row = self._row(task_feature_lengths)
        return {k: row for k in self.MODEL_FEATURES}
