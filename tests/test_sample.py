"""The built-in sample: release fields, five task families with their real output shapes, deterministic."""
import json
import re

import pytest

from seqio_tasks import sample

ALLOWED_SCORERS = {"scierc_ner", "bioasq_list_qa", "label_f1", "scifact_entailment", "token_f1"}


def _rows(split):
    return [json.loads(line) for line in open(sample.sample_path(split), encoding="utf-8")]


def test_sample_files_are_small_and_sized_as_declared():
    total = sum(sample.sample_path(s).stat().st_size for s in sample.SPLITS)
    assert total < 2_000_000
    for split in sample.SPLITS:
        assert len(_rows(split)) == sample.SIZES[split] * len(sample.SAMPLE_TASKS)


def test_every_instance_has_exactly_the_release_fields():
    for split in sample.SPLITS:
        for i, row in enumerate(_rows(split)):
            assert set(row) == {"input", "output", "metadata", "_instance_id"}
            assert set(row["metadata"]) == {"domains", "input_context", "output_context", "source_type", "task_family"}
            task, row_split, index = row["_instance_id"].split(":")
            assert task in sample.SAMPLE_TASKS and row_split == split and index.isdigit()
            assert row["metadata"]["task_family"] == sample.SAMPLE_TASKS[task]["family"]


def test_instance_ids_are_unique():
    ids = [r["_instance_id"] for s in sample.SPLITS for r in _rows(s)]
    assert len(ids) == len(set(ids))


def test_outputs_have_the_task_shape_and_copy_spans_from_the_input():
    labels = set()
    for row in _rows("train"):
        task, out, text = row["_instance_id"].split(":")[0], row["output"], row["input"]
        if task == "sample_ner":
            ents = json.loads(out)
            assert isinstance(ents, dict) and all(isinstance(v, list) for v in ents.values())
            assert all(e in text for v in ents.values() for e in v)
        elif task == "sample_list_qa":
            items = json.loads(out)
            assert isinstance(items, list) and items and all(i in text for i in items)
        elif task == "sample_entailment":
            d = json.loads(out)
            assert d["verdict"] in {"SUPPORT", "CONTRADICT", "NEI"}
            assert all(s in text.split("\n") for s in d["evidence"])
            assert (d["verdict"] == "NEI") == (d["evidence"] == [])
        elif task == "sample_classification":
            labels.add(out)
            assert re.fullmatch(r"[A-Za-z]+", out)
        else:
            assert out.count(".") == 1 and len(out.split()) < 25
    assert len(labels) >= 4


def test_sample_tasks_name_a_known_scorer():
    assert len(sample.SAMPLE_TASKS) == 5
    assert {m["scorer"] for m in sample.SAMPLE_TASKS.values()} <= ALLOWED_SCORERS


def test_sample_tasks_use_their_declared_scorer_and_eval_tasks_their_own():
    assert sample.resolve_scorer("sciriff_sample_ner") == "scierc_ner"
    assert sample.resolve_scorer("sciriff_sample_classification") == "label_f1"
    assert sample.resolve_scorer("sciriff_4096_evidence_inference") == "evidence_inference"
    with pytest.raises(ValueError, match="no SciRIFF-Eval scorer for 'sciriff_4096_acl_arc_intent_classification'"):
        sample.resolve_scorer("sciriff_4096_acl_arc_intent_classification")


def test_regenerating_the_sample_reproduces_the_committed_files(tmp_path):
    paths = sample.write_sample(tmp_path, seed=0)
    for split, path in paths.items():
        assert path.read_bytes() == sample.sample_path(split).read_bytes()


def test_unknown_split_is_refused_with_the_known_splits():
    with pytest.raises(ValueError, match="train"):
        sample.sample_path("test")
