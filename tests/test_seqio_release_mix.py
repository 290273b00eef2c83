"""SciTulu's data as the release built it (allenai/SciRIFF script/instructions/create_mixture.py at e396d00):
the science instances the published train mix lists, and the Tulu rows drawn with its seed."""
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio

import seqio_tasks
from seqio_tasks import sources


def _release_row(task, index):
    return {"input": f"{task} question {index}", "output": f"answer {index}", "_instance_id": f"{task}:train:{index}",
            "metadata": {"task_family": "x"}}


def test_the_release_tulu_sample_drops_science_rows_and_shuffles_with_seed_76():
    rows = [{"dataset": "science.qasper" if i % 5 == 0 else "oasst", "id": str(i)} for i in range(40)]
    # What create_mixture does: random.seed(76) before anything else draws, then shuffle the non-science rows.
    random.seed(76)
    tulu = [r for r in rows if r["dataset"].split(".")[0] != "science"]
    random.shuffle(tulu)
    assert sources.release_tulu_sample(rows, 10) == tulu[:10]
    assert all(not r["dataset"].startswith("science") for r in sources.release_tulu_sample(rows, 40))


def test_reconstructed_scitulu_takes_exactly_the_instances_the_published_train_mix_lists(tmp_path, monkeypatch):
    # A release whose hub order (sorted by id) is not the release's own instance order, and a train mix that
    # lists indices 7, 2, 9 of acl_arc (not its first three).
    root = tmp_path / "release"
    (root / "4096").mkdir(parents=True)
    rows = [_release_row("acl_arc_intent_classification", i) for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), root / "4096" / "train-00000-of-00001.parquet")
    listed = ["7", "2", "9"]
    mix = [{"dataset": "science.acl_arc_intent_classification", "id": f"science.acl_arc_intent_classification.{i}",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]} for i in listed]
    mix.append({"dataset": "oasst", "id": "o1",
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    pq.write_table(pa.Table.from_pylist(mix), tmp_path / "train-00000-of-00001.parquet")
    monkeypatch.setitem(sources.LOCAL_RELEASE, "dir", str(root))
    monkeypatch.setattr(seqio_tasks.SETTINGS, "train_mix_path", str(tmp_path / "train-00000-of-00001.parquet"))
    task = seqio.get_mixture_or_task("sciriff_4096_acl_arc_intent_classification_first1000")
    got = [ex["_instance_id"].decode() for ex in task.source.get_dataset("train", shuffle=True, seed=1).as_numpy_iterator()]
    assert sorted(got) == sorted(f"acl_arc_intent_classification:train:{i}" for i in listed)
    assert task.source.num_input_examples("train") == 3


def test_a_task_the_train_mix_does_not_list_is_an_error_naming_it(tmp_path, monkeypatch):
    pq.write_table(pa.Table.from_pylist([{"dataset": "oasst", "id": "o1", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]), tmp_path / "mix.parquet")
    monkeypatch.setattr(seqio_tasks.SETTINGS, "train_mix_path", str(tmp_path / "mix.parquet"))
    task = seqio.get_mixture_or_task("sciriff_4096_scierc_re_first1000")
    with pytest.raises(ValueError, match="lists no instances of 'scierc_re'"):
        task.source.num_input_examples("train")


def test_science_ids_come_from_the_science_rows_only():
    rows = [{"dataset": "science.scierc_ner", "id": "science.scierc_ner.12"}, {"dataset": "flan", "id": "f"}]
    assert sources.release_science_ids(rows) == {"scierc_ner": frozenset({"12"})}
    with pytest.raises(ValueError, match="expected an id science.scierc_ner.<index>"):
        sources.release_science_ids([{"dataset": "science.scierc_ner", "id": "scierc_ner_12"}])


def test_the_published_train_mix_is_a_task_of_every_row(tmp_path, monkeypatch):
    rows = [{"dataset": "science.x" if i % 2 else "oasst", "id": f"r{i}", "messages": [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(6)]
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    monkeypatch.setattr(seqio_tasks.SETTINGS, "train_mix_path", str(path))
    task = seqio.get_mixture_or_task("sciriff_train_mix")
    assert task.source.num_input_examples("train") == 6
    assert json.loads(json.dumps(sorted(ex["id"].decode() for ex in task.source.get_dataset(
        "train", shuffle=False).as_numpy_iterator()))) == sorted(r["id"] for r in rows)
