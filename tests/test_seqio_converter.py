"""The chat feature converter: the batch contract, packing with per-document positions, loss mask."""
import numpy as np
import pytest
import tensorflow as tf

from seqio_tasks.converter import INPUTS_LOSS_MASK, ChatFeatureConverter

# Two chats as their rows: prompt tokens carry mask 1, assistant tokens (ending in EOS=1) carry 2.
DOCS = [([5, 6, 7, 8, 1], [1, 1, 2, 2, 2]), ([9, 10, 11, 1], [1, 1, 2, 2])]
KEYS = {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
        "decoder_positions"}
SPEC = tf.TensorSpec([None], tf.int32)


def _task_features(tokens, mask):
    """What a task yields for a row: the prompt as `inputs`, the (last) answer + EOS as `targets`."""
    start = mask.index(2)
    return {"inputs": tokens[:start], "targets": tokens[start:]}


def _convert(pack, length, docs=DOCS, **kwargs):
    ds = tf.data.Dataset.from_generator(lambda: (_task_features(t, m) for t, m in docs),
                                        output_signature={"inputs": SPEC, "targets": SPEC})
    out = ChatFeatureConverter(pack=pack, row_length=length, **kwargs)(ds, {"inputs": 64, "targets": 64})
    return list(out.as_numpy_iterator())


def _shifted(docs=DOCS):
    """Each document as the model sees it: inputs all but its last token, targets all but its first."""
    return [(t[:-1], t[1:], m[1:]) for t, m in docs]


def test_packed_rows_follow_the_batch_contract():
    (row,) = _convert(pack=True, length=12)
    assert set(row) == KEYS
    targets = np.concatenate([tg for _, tg, _ in _shifted()])
    n = len(targets)
    np.testing.assert_array_equal(row["decoder_target_tokens"][:n], targets)
    assert not row["decoder_target_tokens"][n:].any()
    seg = np.concatenate([[i + 1] * len(tg) for i, (_, tg, _) in enumerate(_shifted())])
    np.testing.assert_array_equal(row["decoder_segment_ids"][:n], seg)
    pos = np.concatenate([np.arange(len(tg)) for _, tg, _ in _shifted()])
    np.testing.assert_array_equal(row["decoder_positions"][:n], pos)
    assert not row["decoder_segment_ids"][n:].any() and not row["decoder_positions"][n:].any()


def test_each_document_starts_with_its_own_first_token_at_position_0_and_no_start_token():
    (row,) = _convert(pack=True, length=12)
    inp = np.concatenate([i for i, _, _ in _shifted()])
    np.testing.assert_array_equal(row["decoder_input_tokens"][:len(inp)], inp)
    starts = row["decoder_positions"] == 0
    starts &= row["decoder_segment_ids"] > 0
    assert row["decoder_input_tokens"][starts].tolist() == [t[0] for t, _ in DOCS]  # e.g. BOS, never 0


def test_inputs_are_targets_shifted_right_within_each_document():
    (row,) = _convert(pack=True, length=12)
    tgt, inp, seg = row["decoder_target_tokens"], row["decoder_input_tokens"], row["decoder_segment_ids"]
    for k in range(1, len(tgt)):
        if seg[k] and seg[k] == seg[k - 1]:
            assert inp[k] == tgt[k - 1]


def test_loss_weights_are_one_exactly_on_assistant_tokens():
    (row,) = _convert(pack=True, length=12)
    mask = np.concatenate([m for _, _, m in _shifted()])
    expected = np.zeros(12, np.int32)
    expected[:len(mask)] = (mask == 2)
    np.testing.assert_array_equal(row["decoder_loss_weights"], expected)


def test_unpacked_rows_have_one_document_each_with_positions():
    rows = _convert(pack=False, length=6)
    assert len(rows) == 2
    for row, (_, tg, m) in zip(rows, _shifted()):
        assert set(row) == KEYS
        np.testing.assert_array_equal(row["decoder_segment_ids"], [1] * len(tg) + [0] * (6 - len(tg)))
        np.testing.assert_array_equal(row["decoder_positions"][:len(tg)], np.arange(len(tg)))
        np.testing.assert_array_equal(row["decoder_loss_weights"][:len(tg)], np.array(m) == 2)


def test_earlier_assistant_turns_inside_inputs_are_trained_on_through_the_inputs_loss_mask():
    # A two-turn chat: user [5], assistant [6, 1], user [7], assistant [8, 1] (the last answer is `targets`).
    ex = {"inputs": [5, 6, 1, 7], INPUTS_LOSS_MASK: [1, 2, 2, 1], "targets": [8, 1]}
    ds = tf.data.Dataset.from_generator(lambda: iter([ex]), output_signature={k: SPEC for k in ex})
    (row,) = ChatFeatureConverter(pack=False, row_length=8)(ds, {"inputs": 8, "targets": 8}).as_numpy_iterator()
    np.testing.assert_array_equal(row["decoder_input_tokens"], [5, 6, 1, 7, 8, 0, 0, 0])
    np.testing.assert_array_equal(row["decoder_target_tokens"], [6, 1, 7, 8, 1, 0, 0, 0])
    np.testing.assert_array_equal(row["decoder_loss_weights"], [1, 1, 0, 1, 1, 0, 0, 0])


def test_without_a_row_length_a_row_holds_inputs_plus_targets_as_seqio_prefix_lm():
    ds = tf.data.Dataset.from_generator(lambda: (_task_features(t, m) for t, m in DOCS),
                                        output_signature={"inputs": SPEC, "targets": SPEC})
    rows = list(ChatFeatureConverter(pack=False)(ds, {"inputs": 2, "targets": 3}).as_numpy_iterator())
    assert len(rows) == 2 and all(r["decoder_target_tokens"].shape == (5,) for r in rows)


def test_overlong_rows_are_cut_at_the_end_or_dropped():
    cut = _convert(pack=False, length=2, overlong="truncate")
    assert len(cut) == 2
    np.testing.assert_array_equal(cut[0]["decoder_target_tokens"], [6, 7])
    kept = _convert(pack=False, length=3, overlong="drop")  # the 5-token chat is left out, the 4-token one fits
    assert len(kept) == 1
    np.testing.assert_array_equal(kept[0]["decoder_target_tokens"], [10, 11, 1])


@pytest.mark.parametrize("pack", [True, False])
def test_token_id_0_is_a_real_token_not_padding(pack):
    # Llama 3's and Qwen's id 0 is "!": a document holding it must keep every token and its loss.
    docs = [([5, 0, 7, 0, 1], [1, 1, 2, 2, 2]), ([9, 0, 1], [1, 2, 2])]
    rows = _convert(pack=pack, length=12 if pack else 6, docs=docs)
    got_targets = np.concatenate([r["decoder_target_tokens"][r["decoder_segment_ids"] > 0] for r in rows])
    got_inputs = np.concatenate([r["decoder_input_tokens"][r["decoder_segment_ids"] > 0] for r in rows])
    np.testing.assert_array_equal(got_targets, np.concatenate([tg for _, tg, _ in _shifted(docs)]))
    np.testing.assert_array_equal(got_inputs, np.concatenate([i for i, _, _ in _shifted(docs)]))
    weights = np.concatenate([r["decoder_loss_weights"][r["decoder_segment_ids"] > 0] for r in rows])
    np.testing.assert_array_equal(weights, np.concatenate([m for _, _, m in _shifted(docs)]) == 2)
