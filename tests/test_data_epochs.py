"""TRAIN_STEPS unset: the steps of one epoch are counted from the real SeqIO stream."""
import pytest

from sciriff_jax.data import batches as data


def test_steps_per_epoch_of_an_unpacked_task_is_its_examples_over_the_batch():
    pytest.importorskip("seqio")
    import seqio_tasks

    n = sum(1 for _ in open(seqio_tasks.sample_path("train")) if '"ie.named_entity_recognition"' in _)
    assert n > 16
    steps = data.DataConfig("sciriff_sample_ner", {"targets": 64}, pack=False).steps_per_epoch(8)
    assert steps == n // 8


def test_a_mixture_smaller_than_one_batch_is_an_error_naming_the_fix():
    pytest.importorskip("seqio")
    with pytest.raises(ValueError, match="lower BATCH_SIZE or set TRAIN_STEPS"):
        data.DataConfig("sciriff_sample_ner", {"targets": 64}, pack=False).steps_per_epoch(100_000)


def test_a_two_epoch_stream_holds_every_example_of_the_mixture_exactly_twice_in_a_seeded_order():
    pytest.importorskip("seqio")
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    sharding = NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), P("data"))
    config = data.DataConfig("sciriff_sample", {"targets": 2048}, pack=False)

    def rows(seed, epochs=2):
        stream = config.batches(sharding=sharding, global_batch_size=50, seed=seed, vocab_size=1536, epochs=epochs)
        out = []
        for batch in stream:
            tokens = np.asarray(batch["decoder_input_tokens"])
            out.extend(row[row > 0].tobytes() for row in tokens)  # one example per row (unpacked)
        return out

    def counts(rows_):
        out = {}
        for r in rows_:
            out[r] = out.get(r, 0) + 1
        return out

    one, two = rows(seed=3, epochs=1), rows(seed=3)
    assert len(one) == 1800 and len(two) == 2 * 1800  # the stream ends after its passes: nothing dropped or added
    assert counts(two) == {r: 2 * n for r, n in counts(one).items()}  # (the sample repeats two instances itself)
    assert rows(seed=3) == two and rows(seed=4) != two  # the order is fixed by the seed


def test_packed_updates_can_hold_exactly_the_recipes_number_of_examples():
    pytest.importorskip("seqio")
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    sharding = NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), P("data"))
    config = data.DataConfig("sciriff_sample", {"targets": 2048}, pack=True, examples_per_update=20)
    assert config.steps_per_epoch(8) == 1800 // 20
    stream = config.batches(sharding=sharding, global_batch_size=8, seed=0, vocab_size=1536, epochs=1)
    docs = []
    for batch in stream:
        seg, pos = np.asarray(batch["decoder_segment_ids"]), np.asarray(batch["decoder_positions"])
        docs.append(int(((pos == 0) & (seg > 0)).sum()))  # documents start at position 0
        assert seg.shape == (8, 2048)
    assert docs == [20] * 90  # every update: 20 examples in 8 rows, the whole epoch read once


def test_examples_that_cannot_fit_their_rows_say_how_to_make_room():
    import numpy as np

    from sciriff_jax.data.pack_examples import PackingError, pack_rows

    full = {k: np.ones((3, 4), np.int32) for k in ("decoder_input_tokens", "decoder_target_tokens",
                                                   "decoder_loss_weights", "decoder_segment_ids")}
    with pytest.raises(PackingError, match="raise BATCH_SIZE"):
        pack_rows(full, rows=2)
    packed = pack_rows({**full, "decoder_segment_ids": np.array([[1, 1, 0, 0]] * 3, np.int32)}, rows=2)
    assert packed["decoder_segment_ids"].tolist() == [[1, 1, 2, 2], [1, 1, 0, 0]]
    assert packed["decoder_positions"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 0]]
