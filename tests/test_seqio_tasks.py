"""Registered SeqIO tasks and mixtures: names, the batch contract from get_dataset, determinism, errors."""
import json

import numpy as np
import pytest
import seqio

import seqio_tasks
from seqio_tasks import catalog
from sciriff_jax.chat import render

LENGTHS = {"targets": 256}
# Chat data is real data: its tasks need a vocabulary of their own, so the tests register a set with the sample's.
TEST_SET = "testvocab"
seqio_tasks.register(prefix=TEST_SET, vocabulary=seqio_tasks.get_vocabulary())


def _first(name, split="train", **kw):
    kw = {"batch_size": 2, "shuffle": True, "seed": 7, **kw}
    return next(seqio_tasks.get_dataset(name, split, LENGTHS, **kw).as_numpy_iterator())


def test_every_task_and_config_is_registered_with_its_metadata():
    names = set(seqio.TaskRegistry.names())
    for config in catalog.CONTEXT_CONFIGS:
        for task in catalog.TASKS:
            assert f"sciriff_{config}_{task}" in names
    meta = seqio.get_mixture_or_task("sciriff_8192_scierc_ner").sciriff_metadata
    assert meta["family"] == "ie.named_entity_recognition" and meta["eval_task"] and meta["config"] == 8192


def test_mixtures_cover_the_release_as_specified():
    train = seqio.get_mixture_or_task("sciriff_4096_train")
    assert len(train.tasks) == 54
    assert {t.name for t in seqio.get_mixture_or_task("sciriff_16384_eval").tasks} == {
        f"sciriff_16384_{n}" for n in catalog.EVAL_TASKS}
    scitulu = {t.name for t in seqio.get_mixture_or_task("sciriff_4096_scitulu").tasks}
    assert len(scitulu) == 46 and "sciriff_tulu_v2_chat" in scitulu
    assert not any(n.startswith("sciriff_4096_scierc_ner") for n in scitulu)
    ner = seqio.get_mixture_or_task("sciriff_4096_family_ie_named_entity_recognition")
    assert len(ner.tasks) == len(catalog.FAMILIES["ie.named_entity_recognition"])
    assert len(seqio.get_mixture_or_task("sciriff_sample").tasks) == 5


def test_sample_mixture_batches_follow_the_contract():
    b = _first("sciriff_sample", shuffle=False)
    assert set(b) == {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                      "decoder_segment_ids", "decoder_positions"}
    assert all(v.shape == (2, LENGTHS["targets"]) and v.dtype == np.int32 for v in b.values())
    assert b["decoder_segment_ids"].max() > 1  # packed
    w, t = b["decoder_loss_weights"], b["decoder_target_tokens"]
    assert 0 < w.sum() < (t > 0).sum()
    assert not (w * (t == 0)).any()


def test_trained_tokens_are_the_answers_and_their_eos():
    b = _first("sciriff_sample_list_qa", split="validation", shuffle=False)
    vocab = seqio_tasks.get_vocabulary()
    answers = {r["output"] for r in seqio_tasks.raw_examples("sample_list_qa", "validation")}
    row, w, seg = b["decoder_target_tokens"][0], b["decoder_loss_weights"][0], b["decoder_segment_ids"][0]
    for s in range(1, seg.max() + 1):
        ids = row[(seg == s) & (w == 1)].tolist()
        if ids[-1] == vocab.eos_id:  # documents cut at the row's end have no EOS yet
            assert vocab.decode(ids[:-1]) in answers


def test_same_seed_gives_the_same_batches_and_hosts_get_different_shards():
    a, b = _first("sciriff_sample_ner", seed=3), _first("sciriff_sample_ner", seed=3)
    assert all((a[k] == b[k]).all() for k in a)
    h0 = _first("sciriff_sample_ner", shuffle=False, shard=seqio.ShardInfo(index=0, num_shards=2))
    h1 = _first("sciriff_sample_ner", shuffle=False, shard=seqio.ShardInfo(index=1, num_shards=2))
    assert not (h0["decoder_target_tokens"] == h1["decoder_target_tokens"]).all()


def test_raw_examples_give_release_strings():
    rows = seqio_tasks.raw_examples("sciriff_sample_entailment", "validation", max_examples=3)
    assert len(rows) == 3
    assert all(isinstance(r[k], str) for r in rows for k in ("input", "output", "_instance_id", "metadata"))
    assert json.loads(rows[0]["metadata"])["task_family"] == "entailment"


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError, match="sciriff_sample"):
        seqio_tasks.get_dataset("sciriff_sampel", "train", LENGTHS, 1)


def test_truncated_rows_left_without_an_answer_token_are_dropped_and_counted():
    """open-instruct drops rows whose labels truncation cut entirely; so do we (issue 22 point 4), counted, and
    `data stats` predicts the same number."""
    from seqio_tasks import tools

    task = seqio.get_mixture_or_task("sciriff_sample_ner")

    def rows():
        return list(seqio_tasks.get_dataset("sciriff_sample_ner", "validation", {"targets": 160}, 1, shuffle=False,
                                            pack=False, num_epochs=1).as_numpy_iterator())

    kept = rows()  # "truncate" (the default) keeps every row
    assert len(kept) == task.num_input_examples("validation")
    seqio_tasks.configure(overlong="truncate_trained")
    try:
        seqio_tasks.OVERLONG_COUNTS.clear()
        trained = rows()
        untrained = seqio_tasks.OVERLONG_COUNTS.get(("sciriff_sample_ner", seqio_tasks.converter.UNTRAINED), 0)
        assert 0 < untrained < len(kept) and len(trained) + untrained == len(kept)
        assert all(r["decoder_loss_weights"].sum() > 0 for r in trained)
        stats = tools.task_stats(task, "validation", 160)
        assert stats["dropped"] == untrained and stats["instances"] == len(kept)
    finally:
        seqio_tasks.configure(overlong="truncate")


def test_overlong_instances_are_dropped_and_counted_when_asked():
    seqio_tasks.configure(overlong="drop")
    try:
        seqio_tasks.OVERLONG_COUNTS.clear()
        task = seqio.get_mixture_or_task("sciriff_sample_ner")
        rows = seqio_tasks.get_dataset("sciriff_sample_ner", "validation", {"targets": 150}, 1, shuffle=False,
                                       pack=False, num_epochs=1)
        n = len(list(rows))
        dropped = seqio_tasks.OVERLONG_COUNTS.get(("sciriff_sample_ner", "dropped"), 0)
        assert dropped > 0 and n + dropped == task.num_input_examples("validation")
    finally:
        seqio_tasks.configure(overlong="truncate")


def test_chat_data_trains_on_every_assistant_turn(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]
    (tmp_path / "tulu.jsonl").write_text(json.dumps({"id": "x", "dataset": "d", "messages": msgs}) + "\n")
    seqio_tasks.configure(tulu_path=str(tmp_path / "tulu.jsonl"))
    b = _first(f"{TEST_SET}_tulu_v2_chat", shuffle=False, pack=False, batch_size=1)
    ids, mask = render.tokenize_messages(msgs, seqio_tasks.get_vocabulary())
    n = len(ids) - 1  # the model reads all but the last token and predicts all but the first
    assert b["decoder_input_tokens"][0, :n].tolist() == ids[:-1]
    assert b["decoder_target_tokens"][0, :n].tolist() == ids[1:]
    assert b["decoder_loss_weights"][0, :n].tolist() == mask[1:]


def test_scitulu_chat_rows_follow_the_science_count_and_ratio(tmp_path):
    path = tmp_path / "chat.jsonl"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    path.write_text("".join(json.dumps({"id": str(i), "messages": msgs}) + "\n" for i in range(3)))
    seqio_tasks.configure(tulu_path=str(path), scitulu_per_task=1, chat_ratio=2 / 45)
    try:
        mix = seqio.get_mixture_or_task("sciriff_4096_scitulu")
        assert "sciriff_4096_acl_arc_intent_classification_first1" in {t.name for t in mix.tasks}
        assert seqio.get_mixture_or_task("sciriff_tulu_v2_chat").num_input_examples("train") == 2
    finally:
        seqio_tasks.configure(scitulu_per_task=1000, chat_ratio=1.0)
    assert seqio.get_mixture_or_task("sciriff_tulu_v2_chat").sciriff_metadata["rows"] == 35_357


def test_train_mix_source_reads_a_local_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    msgs = [{"role": "user", "content": "Extract entities."}, {"role": "assistant", "content": "{}"}]
    pq.write_table(pa.Table.from_pylist([{"dataset": "science.scierc_ner", "id": "s0", "messages": msgs}]),
                   tmp_path / "train-00000-of-00001.parquet")
    seqio_tasks.configure(train_mix_path=str(tmp_path / "train-00000-of-00001.parquet"))
    b = _first(f"{TEST_SET}_train_mix", shuffle=False, pack=False, batch_size=1)
    ids, mask = render.tokenize_messages(msgs, seqio_tasks.get_vocabulary())
    assert b["decoder_target_tokens"][0, :len(ids) - 1].tolist() == ids[1:]
