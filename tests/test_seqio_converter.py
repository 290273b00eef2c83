"""The chat feature converter: the batch contract, packing with per-document positions, loss mask."""
import numpy as np
import tensorflow as tf

from seqio_tasks.converter import LOSS_MASK, ChatFeatureConverter

# Two chats: prompt tokens carry loss_mask 1, assistant tokens (ending in EOS=1) carry 2.
DOCS = [([5, 6, 7, 8, 1], [1, 1, 2, 2, 2]), ([9, 10, 11, 1], [1, 1, 2, 2])]
KEYS = {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
        "decoder_positions"}


def _convert(pack, length):
    ds = tf.data.Dataset.from_generator(
        lambda: ({"targets": t, LOSS_MASK: m} for t, m in DOCS),
        output_signature={"targets": tf.TensorSpec([None], tf.int32), LOSS_MASK: tf.TensorSpec([None], tf.int32)})
    out = ChatFeatureConverter(pack=pack)(ds, {"targets": length, LOSS_MASK: length})
    return list(out.as_numpy_iterator())


def test_packed_rows_follow_the_batch_contract():
    (row,) = _convert(pack=True, length=12)
    assert set(row) == KEYS
    targets = np.concatenate([t for t, _ in DOCS])
    n = len(targets)
    np.testing.assert_array_equal(row["decoder_target_tokens"][:n], targets)
    assert not row["decoder_target_tokens"][n:].any()
    seg = np.concatenate([[i + 1] * len(t) for i, (t, _) in enumerate(DOCS)])
    np.testing.assert_array_equal(row["decoder_segment_ids"][:n], seg)
    pos = np.concatenate([np.arange(len(t)) for t, _ in DOCS])
    np.testing.assert_array_equal(row["decoder_positions"][:n], pos)
    assert not row["decoder_segment_ids"][n:].any() and not row["decoder_positions"][n:].any()


def test_inputs_are_targets_shifted_right_within_each_document():
    (row,) = _convert(pack=True, length=12)
    tgt, inp, seg = row["decoder_target_tokens"], row["decoder_input_tokens"], row["decoder_segment_ids"]
    for k in range(len(tgt)):
        starts_document = k == 0 or seg[k] != seg[k - 1]
        assert inp[k] == (0 if starts_document or seg[k] == 0 else tgt[k - 1])


def test_loss_weights_are_one_exactly_on_assistant_tokens():
    (row,) = _convert(pack=True, length=12)
    mask = np.concatenate([m for _, m in DOCS])
    expected = np.zeros(12, np.int32)
    expected[:len(mask)] = (mask == 2)
    np.testing.assert_array_equal(row["decoder_loss_weights"], expected)


def test_unpacked_rows_have_one_document_each_with_positions():
    rows = _convert(pack=False, length=6)
    assert len(rows) == 2
    for row, (t, m) in zip(rows, DOCS):
        assert set(row) == KEYS
        np.testing.assert_array_equal(row["decoder_segment_ids"], [1] * len(t) + [0] * (6 - len(t)))
        np.testing.assert_array_equal(row["decoder_positions"][:len(t)], np.arange(len(t)))
        np.testing.assert_array_equal(row["decoder_loss_weights"][:len(t)], np.array(m) == 2)
