"""The decoder-only chat feature converter: SeqIO task features -> the batch contract of docs/design.md."""
from typing import Mapping

import seqio
import tensorflow as tf

# The task feature marking assistant tokens (incl. EOS): 2 there, 1 on other tokens. Never 0 on a real
# token, because SeqIO's packer measures each feature's length by its non-zero entries.
LOSS_MASK = "loss_mask"


class ChatFeatureConverter(seqio.FeatureConverter):
    """Packs (by default) rendered chats into decoder_{input,target}_tokens, loss weights, segment ids, positions.

    Unlike seqio.LMFeatureConverter the loss weights come from the task's `loss_mask` feature, so only
    assistant turns are trained on. Segment ids and positions are produced unpacked too (one document
    per row), so the model always sees the same five keys.
    """

    TASK_FEATURES = {"targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
                     LOSS_MASK: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
    MODEL_FEATURES = {k: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                      for k in ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                                "decoder_segment_ids", "decoder_positions")}
    PACKING_FEATURE_DTYPES = {}  # segment ids / positions are model features whether packed or not

    def __init__(self, pack: bool = True, **kwargs):
        super().__init__(pack=pack, **kwargs)

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict:
        targets = features["targets"]
        if self.pack:
            segment_ids, positions = features["targets_segment_ids"], features["targets_positions"]
        else:
            nonpad = tf.cast(tf.not_equal(targets, 0), tf.int32)
            segment_ids, positions = nonpad, tf.range(tf.size(targets), dtype=tf.int32) * nonpad
        return {
            "decoder_target_tokens": targets,
            # Shifted right within each document, so no token sees the previous document's last token.
            "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(
                targets, sequence_id=segment_ids, bos_id=self.bos_id),
            "decoder_loss_weights": tf.cast(tf.equal(features[LOSS_MASK], 2), tf.int32),
            "decoder_segment_ids": segment_ids,
            "decoder_positions": positions,
        }

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        lengths = dict(task_feature_lengths)
        lengths.setdefault(LOSS_MASK, lengths["targets"])
        ds = self._pack_or_pad(ds, lengths)
        return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        return {k: task_feature_lengths["targets"] for k in self.MODEL_FEATURES}
