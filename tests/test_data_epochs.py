"""TRAIN_STEPS unset: the steps of one epoch are counted from the real SeqIO stream."""
import pytest

from sciriff_jax.data import batches as data


def test_steps_per_epoch_of_an_unpacked_task_is_its_examples_over_the_batch():
    pytest.importorskip("seqio")
    import seqio_tasks

    n = sum(1 for _ in open(seqio_tasks.sample_path("train")) if '"ie.named_entity_recognition"' in _)
    assert n > 16
    steps = data.steps_per_epoch(mixture_or_task_name="sciriff_sample_ner", task_feature_lengths={"targets": 64},
                                 global_batch_size=8, pack=False)
    assert steps == n // 8


def test_a_mixture_smaller_than_one_batch_is_an_error_naming_the_fix():
    pytest.importorskip("seqio")
    with pytest.raises(ValueError, match="lower BATCH_SIZE or set TRAIN_STEPS"):
        data.steps_per_epoch(mixture_or_task_name="sciriff_sample_ner", task_feature_lengths={"targets": 64},
                             global_batch_size=100_000, pack=False)
