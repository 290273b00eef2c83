"""The gin macro check reads what each macro may be from the config field it is bound to (one schema), and an
experiment's mesh presets are data the check reads."""
import dataclasses

import pytest

from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.run import gin_compat
from sciriff_jax.run import macros as macro_checks
from sciriff_jax.run import main as main_lib
from sciriff_jax.train.finetune import TrainConfig

GIN = main_lib.GIN_CONFIGS_DIR
RUN_FILES = {
    "runs/finetune.gin": ['MODEL_DIR="/x"', 'MIXTURE_OR_TASK_NAME="sciriff_sample"'],
    "runs/demo.gin": ['MODEL_DIR="/x"'],
    "runs/eval.gin": ['CHECKPOINT_PATH="/x"'],
    "runs/infer.gin": ['CHECKPOINT_PATH="/x"'],
    "experiments/scitulu_7b.gin": ['MODEL_DIR="/x"', 'INITIAL_CHECKPOINT_PATH="/y"'],
    "experiments/scitulu_7b_16k.gin": ['MODEL_DIR="/x"', 'INITIAL_CHECKPOINT_PATH="/y"'],
    "experiments/scitulu_70b.gin": ['MODEL_DIR="/x"', 'INITIAL_CHECKPOINT_PATH="/y"'],
    "experiments/eval_sciriff.gin": ['CHECKPOINT_PATH="/x"'],
}
TINY_FINETUNE = [str(GIN / "models" / "tiny.gin"), str(GIN / "runs" / "finetune.gin")]


def checked_macros() -> set[str]:
    """The macros of the parsed config that some field or preset gives a check."""
    macros = gin_compat.defined_macros()
    found = {name for p in macro_checks.presets(macros) for name in (p.macro, f"MICROBATCHES_{p.name}")}
    return found | {macro for scope, target, param, key, macro in gin_compat.macro_bindings()
                    if macro_checks.binding_check(scope, target, param, key) is not None}


@pytest.mark.parametrize("name", sorted(RUN_FILES))
def test_every_macro_of_the_run_files_is_checked_by_the_field_it_sets(name):
    main_lib.parse_gin([str(GIN / name)], RUN_FILES[name])
    assert sorted(set(gin_compat.defined_macros()) - checked_macros()) == []


def test_a_macro_is_checked_as_the_field_its_binding_names():
    assert macro_checks.field_check(TrainConfig, "batch_size")(0) == "an integer >= 1"
    assert macro_checks.field_check(TrainConfig, "train_steps")(None) is None
    assert macro_checks.field_check(LlamaConfig, "remat_policy")("dot") == "one of 'none', 'full', 'dots', 'dots_no_batch'"


def test_a_field_may_be_none_only_in_the_scopes_it_names():
    from sciriff_jax.data.batches import DataConfig

    assert macro_checks.field_check(DataConfig, "mixture_or_task_name", "train")(None) == "a non-empty string"
    assert macro_checks.field_check(DataConfig, "mixture_or_task_name", "train_eval")(None) is None


def test_a_model_override_is_checked_as_the_model_field_it_overrides():
    check = macro_checks.field_check(TrainConfig, "model_overrides", key="attention_backend")
    assert check(None) is None and check("ring") is None
    assert check("flash").startswith("one of 'auto', 'reference'") and check("flash").endswith(" or None")


def test_a_bad_attention_backend_macro_is_an_error_naming_it(capsys):
    argv = [f"--gin_file={f}" for f in TINY_FINETUNE] + ['--gin.MODEL_DIR="/x"', '--gin.MIXTURE_OR_TASK_NAME="s"',
                                                         '--gin.ATTENTION_BACKEND="flash"']
    assert main_lib.main(argv) == 2
    assert "gin macro ATTENTION_BACKEND='flash': expected one of 'auto'," in capsys.readouterr().err


def test_a_run_may_override_only_the_models_runtime_fields():
    with pytest.raises(ValueError, match="hidden_size"):
        TrainConfig("/x", model_overrides={"hidden_size": 8})


def test_unset_model_overrides_keep_the_model_files_choice():
    config = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=2,
                         remat_policy="dots")
    train = TrainConfig("/x", model_overrides={"attention_backend": "blockwise", "remat_policy": None})
    assert dataclasses.astuple(train.apply_overrides(config)) == dataclasses.astuple(
        config.replace(attention_backend="blockwise"))


def test_experiment_presets_are_read_as_mesh_and_microbatches_pairs():
    main_lib.parse_gin([str(GIN / "experiments" / "scitulu_7b.gin")], RUN_FILES["experiments/scitulu_7b.gin"])
    presets = {p.name: p for p in macro_checks.presets(gin_compat.defined_macros())}
    assert set(presets) == {"V4_64", "V5P_128", "V5E_256", "8XH100"}
    assert presets["V4_64"].macro == "MESH_V4_64" and presets["V4_64"].microbatches == 4
    assert presets["8XH100"].shape == {"data": 1, "fsdp": 8, "tensor": 1, "context": 1}


def test_a_preset_of_the_wrong_type_is_an_error_naming_it(tmp_path, capsys):
    path = tmp_path / "exp.gin"
    path.write_text("include 'experiments/scitulu_7b.gin'\nMICROBATCHES_V4_64 = 0\n")
    assert main_lib.main([f"--gin_file={path}", '--gin.MODEL_DIR="/x"', '--gin.INITIAL_CHECKPOINT_PATH="/y"']) == 2
    assert "gin macro MICROBATCHES_V4_64=0: expected an integer >= 1" in capsys.readouterr().err


def test_a_mesh_macro_without_its_microbatches_is_not_a_preset_and_must_be_used(tmp_path, capsys):
    path = tmp_path / "exp.gin"
    path.write_text("include 'models/tiny.gin'\ninclude 'runs/finetune.gin'\nMESH_FOO = {\"fsdp\": 8}\n")
    assert main_lib.main([f"--gin_file={path}", '--gin.MODEL_DIR="/x"', '--gin.MIXTURE_OR_TASK_NAME="s"']) == 2
    assert "never used by any binding: MESH_FOO" in capsys.readouterr().err


def test_eval_and_infer_share_their_settings_through_one_included_file():
    settings = {}
    for run, fn in (("eval", "evaluate_run"), ("infer", "infer_run")):
        main_lib.parse_gin([str(GIN / "runs" / f"{run}.gin")], ['CHECKPOINT_PATH="/x"'])
        settings[run] = {k: v for k, v in gin_compat.gin.get_bindings(fn).items() if k not in ("judge_url", "judge_model", "judge_protocol")}
        assert "include 'runs/decode.gin'" in (GIN / "runs" / f"{run}.gin").read_text()
    assert settings["eval"] == settings["infer"]
