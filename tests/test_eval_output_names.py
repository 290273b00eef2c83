"""An eval's default output folder is a plain name for a task list too (its text has commas and colons)."""
from sciriff_jax.eval.evaluate import default_output_dir, list_folder_name


def test_a_mixture_keeps_its_name_and_a_task_list_gets_a_short_stable_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert list_folder_name("sciriff_4096_eval") == "sciriff_4096_eval"
    name = list_folder_name("sciriff_4096_scifact_entailment,sciriff_4096_bioasq_list_qa:2")
    assert name.startswith("tasks_sciriff_4096_scifact_entailment_and_1_") and "," not in name and ":" not in name
    assert name == list_folder_name("sciriff_4096_scifact_entailment,sciriff_4096_bioasq_list_qa:2")
    assert name != list_folder_name("sciriff_4096_scifact_entailment,sciriff_4096_bioasq_list_qa")
    out = default_output_dir(str(tmp_path / "hf_model"), "a,b")
    assert out.parent == tmp_path / "sciriff_eval" / "hf_model" and out.name.startswith("tasks_a_and_1_")
