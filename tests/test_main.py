"""The gin entry point: flag parsing and the errors a user sees for bad bindings."""
import pytest

from sciriff_jax.run import gin_compat
from sciriff_jax.run import main as main_lib


@pytest.fixture
def run_file(tmp_path):
    path = tmp_path / "run.gin"
    path.write_text('MODEL_DIR = %gin.REQUIRED\nTRAIN_STEPS = 10\nrun.modes = ["train"]\n')
    return str(path)


def test_gin_dot_flags_become_bindings():
    flags = main_lib.parse_flags(["--gin_file=a.gin", '--gin.MODEL_DIR="/tmp/x"', "--gin.TRAIN_STEPS=5"])
    assert flags.gin_file == ["a.gin"]
    assert flags.gin_bindings == ['MODEL_DIR="/tmp/x"', "TRAIN_STEPS=5"]


def test_macro_override_is_applied(run_file):
    main_lib.load_config([run_file], ['MODEL_DIR="/tmp/x"', "TRAIN_STEPS=5"])
    macros = gin_compat.defined_macros()
    assert macros["TRAIN_STEPS"] == 5 and macros["MODEL_DIR"] == "/tmp/x"


def test_unknown_macro_is_named(run_file, capsys):
    assert main_lib.main([f"--gin_file={run_file}", '--gin.MODEL_DIR="/x"', "--gin.TRAIN_STEPZ=5"]) == 2
    err = capsys.readouterr().err
    assert "TRAIN_STEPZ" in err and "TRAIN_STEPS" in err


def test_missing_required_macro_is_named(run_file, capsys):
    assert main_lib.main([f"--gin_file={run_file}"]) == 2
    assert "MODEL_DIR" in capsys.readouterr().err


def test_unknown_configurable_is_named(run_file, capsys):
    assert main_lib.main([f"--gin_file={run_file}", '--gin.MODEL_DIR="/x"', "--gin.no_such_fn.x=1"]) == 2
    assert "no_such_fn" in capsys.readouterr().err


def test_missing_gin_file_is_named(tmp_path, capsys):
    missing = str(tmp_path / "nope.gin")
    assert main_lib.main([f"--gin_file={missing}"]) == 2
    assert "nope.gin" in capsys.readouterr().err


def test_unknown_mode_is_rejected(run_file):
    main_lib.load_config([run_file], ['MODEL_DIR="/x"'])
    with pytest.raises(main_lib.GinConfigError, match="bogus"):
        main_lib.run(modes=["bogus"])


def test_includes_resolve_when_the_working_directory_has_a_folder_of_the_same_name(tmp_path, monkeypatch):
    # A user's runs/ folder must not shadow gin_configs/runs/ (gin looked it up as a Python package and crashed).
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    main_lib.load_config([str(main_lib.GIN_CONFIGS_DIR / "runs" / "demo.gin")], ['MODEL_DIR="/tmp/x"'])
    assert gin_compat.defined_macros()["MIXTURE_OR_TASK_NAME"] == "sciriff_sample"


def test_max_examples_flag_sets_the_macro_of_eval_runs():
    flags = main_lib.parse_flags(["--gin_file=runs/eval.gin", "--max_examples", "5"])
    main_lib.load_config(flags.gin_file, ['CHECKPOINT_PATH="/tmp/x"', *flags.gin_bindings])
    assert gin_compat.defined_macros()["MAX_EXAMPLES"] == 5
