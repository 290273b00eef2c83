"""The task catalog: 54 tasks, 9 eval tasks, identical to the release's task table."""
import pytest

from seqio_tasks import catalog


def test_catalog_has_54_tasks_and_the_nine_eval_tasks():
    assert len(catalog.TASKS) == 54
    assert len(catalog.EVAL_TASKS) == 9
    assert len(catalog.TRAIN_TASKS) == 45
    assert {"scierc_ner", "scifact_entailment", "bioasq_list_qa"} <= set(catalog.EVAL_TASKS)


def test_catalog_matches_the_shared_tasks_tsv(shared_sciriff):
    assert catalog.TASKS_TSV.read_bytes() == (shared_sciriff / "tasks.tsv").read_bytes()
    assert catalog.load_catalog(shared_sciriff / "tasks.tsv") == catalog.TASKS


def test_instance_counts_sum_to_the_release_totals():
    assert sum(t.n_train for t in catalog.TASKS.values()) == 70_521
    assert sum(t.n_validation for t in catalog.TASKS.values()) == 30_736
    assert sum(t.n_test for t in catalog.TASKS.values()) == 35_875


def test_families_partition_the_tasks():
    names = [n for members in catalog.FAMILIES.values() for n in members]
    assert sorted(names) == sorted(catalog.TASKS)
    assert catalog.get_task_info("scierc_ner").family == "ie.named_entity_recognition"


def test_unknown_task_lists_close_matches():
    with pytest.raises(KeyError, match="scierc_ner"):
        catalog.get_task_info("scierc_nre")


def test_malformed_task_row_names_file_and_line(tmp_path):
    bad = tmp_path / "tasks.tsv"
    lines = catalog.TASKS_TSV.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].replace("\t1688\t", "\tmany\t")]) + "\n")
    with pytest.raises(ValueError, match=r"tasks.tsv:2"):
        catalog.load_catalog(bad)
