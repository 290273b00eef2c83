"""The gin entry point: flag parsing and the errors a user sees for bad bindings."""
import pytest

from sciriff_jax.run import gin_compat
from sciriff_jax.run import main as main_lib


@pytest.fixture
def run_file(tmp_path):
    path = tmp_path / "run.gin"
    path.write_text('MODEL_DIR = %gin.REQUIRED\nTRAIN_STEPS = 10\nrun.modes = ["train"]\n'
                    "TrainConfig.model_dir = %MODEL_DIR\nTrainConfig.train_steps = %TRAIN_STEPS\n")
    return str(path)


def test_gin_dot_flags_become_bindings():
    flags = main_lib.parse_flags(["--gin_file=a.gin", '--gin.MODEL_DIR="/tmp/x"', "--gin.TRAIN_STEPS=5"])
    assert flags.gin_file == ["a.gin"]
    assert flags.gin_bindings == ['MODEL_DIR="/tmp/x"', "TRAIN_STEPS=5"]


def test_macro_override_is_applied(run_file):
    main_lib.parse_gin([run_file], ['MODEL_DIR="/tmp/x"', "TRAIN_STEPS=5"])
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
    main_lib.parse_gin([run_file], ['MODEL_DIR="/x"'])
    with pytest.raises(main_lib.GinConfigError, match="bogus"):
        main_lib.run(modes=["bogus"])


def test_includes_resolve_when_the_working_directory_has_a_folder_of_the_same_name(tmp_path, monkeypatch):
    # A user's runs/ folder must not shadow gin_configs/runs/ (gin looked it up as a Python package and crashed).
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    main_lib.parse_gin([str(main_lib.GIN_CONFIGS_DIR / "runs" / "demo.gin")], ['MODEL_DIR="/tmp/x"'])
    assert gin_compat.defined_macros()["MIXTURE_OR_TASK_NAME"] == "sciriff_sample"


def test_max_examples_flag_sets_the_macro_of_eval_runs():
    flags = main_lib.parse_flags(["--gin_file=runs/eval.gin", "--max_examples", "5"])
    main_lib.parse_gin(flags.gin_file, ['CHECKPOINT_PATH="/tmp/x"', *flags.gin_bindings])
    assert gin_compat.defined_macros()["MAX_EXAMPLES"] == 5


TINY_FINETUNE = [str(main_lib.GIN_CONFIGS_DIR / "models" / "tiny.gin"), str(main_lib.GIN_CONFIGS_DIR / "runs" /
                                                                            "finetune.gin")]
REQUIRED = ['MODEL_DIR="/tmp/x"', 'MIXTURE_OR_TASK_NAME="sciriff_sample"']


def test_a_misspelt_macro_inside_a_gin_file_is_an_error_naming_it(tmp_path, capsys):
    path = tmp_path / "exp.gin"
    path.write_text("include 'models/tiny.gin'\ninclude 'runs/finetune.gin'\nTRAIN_STEPZ = 7\n")
    assert main_lib.main([f"--gin_file={path}", *(f"--gin.{b}" for b in REQUIRED)]) == 2
    err = capsys.readouterr().err
    assert "never used by any binding: TRAIN_STEPZ (did you mean TRAIN_STEPS?)" in err and str(path) in err


@pytest.mark.parametrize("binding,message", [
    ('TRAIN_STEPS="ten"', "TRAIN_STEPS='ten': expected an integer >= 1 or None"),
    ("TRAIN_STEPS=10.7", "TRAIN_STEPS=10.7: expected an integer >= 1 or None"),
    ("BATCH_SIZE=0", "BATCH_SIZE=0: expected an integer >= 1"),
    ("MICROBATCHES=0", "MICROBATCHES=0: expected an integer >= 1"),
    ("MICROBATCHES=3", "BATCH_SIZE=128 and MICROBATCHES=3: MICROBATCHES must divide BATCH_SIZE"),
    ("LEARNING_RATE=-1e-5", "LEARNING_RATE=-1e-05: expected a number > 0"),
    ("WARMUP_RATIO=1.5", "WARMUP_RATIO=1.5: expected a number >= 0 and < 1"),
    ('SCHEDULE="linaer"', "SCHEDULE='linaer': expected one of 'linear', 'cosine', 'constant'"),
    ('MESH_SHAPE={"data": 2, "fsdb": 4}', "MESH_SHAPE={'data': 2, 'fsdb': 4}: expected None or a dict over the axes"),
    ('TASK_FEATURE_LENGTHS={"targets": 0}', "TASK_FEATURE_LENGTHS={'targets': 0}"),
    ("USE_CACHED_TASKS=1", "USE_CACHED_TASKS=1: expected True or False"),
])
def test_a_macro_value_of_the_wrong_type_or_range_is_an_error_naming_the_macro(capsys, binding, message):
    assert main_lib.main([f"--gin_file={f}" for f in TINY_FINETUNE] + [f"--gin.{b}" for b in REQUIRED + [binding]]) == 2
    assert message in capsys.readouterr().err


def test_a_macro_that_points_at_a_preset_is_checked_as_the_preset():
    main_lib.parse_gin([str(main_lib.GIN_CONFIGS_DIR / "experiments" / "scitulu_7b.gin")],
                         REQUIRED + ['INITIAL_CHECKPOINT_PATH="/x"', "MESH_SHAPE=%MESH_V4_64", "MICROBATCHES=4"])
    assert gin_compat.resolve_macro(gin_compat.defined_macros()["MESH_SHAPE"], gin_compat.defined_macros())["fsdp"] == 32


def test_a_batch_that_does_not_divide_over_the_mesh_stops_before_training_naming_the_macros(tmp_path, capsys):
    # 8 fake CPU devices (tests/conftest.py): 12 rows do not split over 8 data-parallel devices.
    argv = [f"--gin_file={f}" for f in TINY_FINETUNE] + [
        f'--gin.MODEL_DIR="{tmp_path}"', '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample"', "--gin.BATCH_SIZE=12",
        "--gin.TRAIN_STEPS=1", '--gin.TASK_FEATURE_LENGTHS={"targets": 16}',
        '--gin_bindings=train/DataConfig.source="synthetic"', "--gin_bindings=TrainConfig.tensorboard=False"]
    assert main_lib.main(argv) == 2
    err = capsys.readouterr().err
    assert "BATCH_SIZE=12 / MICROBATCHES=1 = 12 rows per forward pass do not divide over the 8 data-parallel" in err
    assert not (tmp_path / "checkpoints").exists()
