"""The data feed: host rows -> global sharded arrays, and a saved input position that resumes exactly."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sciriff_jax.data import batches as data


def _sharding(n=8):
    return NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:n]), ("data",)), P("data"))


def _np(batch):
    return {k: np.asarray(v) for k, v in batch.items()}


def test_synthetic_global_batch_is_sharded_and_follows_the_batch_contract():
    it = data.synthetic_batches(sharding=_sharding(), global_batch_size=8, length=16, vocab_size=50, seed=3)
    b = next(it)
    assert set(b) == set(data.BATCH_KEYS)
    for v in b.values():
        assert v.shape == (8, 16) and v.dtype == np.int32 and v.sharding == _sharding()
    b = _np(b)
    # inputs are targets shifted right within each segment, 0 at every segment start
    starts = b["decoder_positions"] == 0
    assert np.all(b["decoder_input_tokens"][starts] == 0)
    assert np.all(b["decoder_input_tokens"][:, 1:][~starts[:, 1:]] == b["decoder_target_tokens"][:, :-1][~starts[:, 1:]])


def test_synthetic_rows_do_not_depend_on_how_the_batch_is_split_across_hosts():
    whole = next(data.synthetic_local_batches(vocab_size=50, length=16, rows=(0, 8), seed=1, skip=2))
    halves = [next(data.synthetic_local_batches(vocab_size=50, length=16, rows=r, seed=1, skip=2))
              for r in ((0, 4), (4, 8))]
    for k in data.BATCH_KEYS:
        np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))


def test_local_rows_of_a_single_process_cover_the_whole_batch():
    assert data.local_rows(_sharding(), 16) == (0, 16)
    assert data.host_shard(_sharding(), 16) == (0, 1, 16)


def test_restored_iterator_continues_with_the_next_unseen_batch():
    make = lambda: data.synthetic_batches(sharding=_sharding(), global_batch_size=8, length=8, vocab_size=20, seed=5)  # noqa: E731
    a = make()
    seen = [_np(next(a)) for _ in range(4)]
    b = make()
    next(b)
    state = {**a.state(), "batches_consumed": 2}
    b.restore(state)
    assert b.state()["batches_consumed"] == 2
    got = _np(next(b))
    for k in data.BATCH_KEYS:
        np.testing.assert_array_equal(got[k], seen[2][k])


def test_restore_refuses_a_different_stream():
    a = data.synthetic_batches(sharding=_sharding(), global_batch_size=8, length=8, vocab_size=20, seed=5)
    with pytest.raises(ValueError, match="seed=5"):
        a.restore({"batches_consumed": 3, "seed": 6, "data": a.description})


def test_seqio_sample_mixture_feeds_global_batches_and_resumes_exactly():
    pytest.importorskip("seqio")
    config = data.DataConfig("sciriff_sample", {"targets": 128})
    kw = dict(global_batch_size=8, sharding=_sharding(), seed=11)
    a = data.seqio_batches(config, **kw)
    seen = [_np(next(a)) for _ in range(3)]
    assert seen[0]["decoder_target_tokens"].shape == (8, 128)
    assert seen[0]["decoder_loss_weights"].sum() > 0
    assert not np.array_equal(seen[0]["decoder_target_tokens"], seen[1]["decoder_target_tokens"])
    b = data.seqio_batches(config, **kw)
    b.restore({**a.state(), "batches_consumed": 2})
    got = _np(next(b))
    for k in data.BATCH_KEYS:
        np.testing.assert_array_equal(got[k], seen[2][k])
