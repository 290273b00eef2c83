"""gin_configs/experiments/*.gin: each parses with the real registrations, names registered mixtures,
and each recommended mesh fits the hardware it is named for."""
import pathlib

import gin
import pytest

from sciriff_jax.run import aot
from sciriff_jax.run import gin_compat
from sciriff_jax.run import macros as macro_checks
from sciriff_jax.run import main as main_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "gin_configs" / "experiments"
TRAINING = ["scitulu_7b.gin", "scitulu_7b_16k.gin", "scitulu_70b.gin"]
REQUIRED = {"MODEL_DIR": '"/tmp/run"', "INITIAL_CHECKPOINT_PATH": '"/tmp/init"', "CHECKPOINT_PATH": '"/tmp/ckpt"'}
GPU_CHIPS = {"8XH100": 8, "4X8XH100": 32}


def load(name, extra=()):
    """Parse an experiment with its required paths set; returns the defined macros."""
    path = str(EXPERIMENTS / name)
    try:
        main_lib.parse_gin([path], list(extra))
    except main_lib.GinConfigError:
        pass  # required macros missing: set the ones this file defines, then parse again
    macros = gin_compat.defined_macros()
    bindings = [f"{k}={v}" for k, v in REQUIRED.items() if k in macros] + list(extra)
    main_lib.parse_gin([path], bindings)
    return gin_compat.defined_macros()


def recommended_meshes(name):
    """(macro name, hardware, microbatches) for each mesh preset of an experiment file, as the macro check reads them."""
    return [(p.macro, p.name, p.microbatches) for p in macro_checks.presets(load(name))]


def test_the_four_experiments_exist():
    assert sorted(p.name for p in EXPERIMENTS.glob("*.gin")) == sorted(TRAINING + ["eval_sciriff.gin"])


@pytest.mark.parametrize("name", TRAINING)
def test_training_experiment_parses_into_a_finetune_run(name):
    load(name)
    s = gin.get_bindings("finetune")
    assert s["model"].vocab_size == 32000
    assert s["optimizer"].learning_rate == 2e-5 and s["train"].num_epochs == 2.0 and s["optimizer"].schedule == "linear"
    assert s["train"].initial_checkpoint_path == "/tmp/init"
    length = dict(s["data"].task_feature_lengths)["targets"]
    assert s["train"].batch_size * length == 128 * 4096  # the paper's tokens per step
    if length == 4096:  # the release's data and batches: every train-mix row, 128 examples per update, unpacked
        assert s["data"].mixture_or_task_name == "sciriff_train_mix" and not s["data"].pack
    else:  # no release at 16K: the rebuilt SciTulu mix, packed
        assert s["data"].mixture_or_task_name == f"sciriff_{length}_scitulu" and s["data"].pack


def test_eval_experiment_parses_into_sciriff_eval():
    load("eval_sciriff.gin")
    s = gin.get_bindings("evaluate_run")
    assert s["eval_config"].mixture_or_task_name == "sciriff_4096_eval" and s["eval_config"].split == "validation"
    assert s["eval_config"].max_new_tokens == 1024 and s["checkpoint_path"] == "/tmp/ckpt"


def test_16k_experiment_splits_the_sequence_over_the_context_axis_with_ring_attention():
    load("scitulu_7b_16k.gin")
    s = gin.get_bindings("finetune")
    assert s["mesh"].layout == "fsdp_tp_cp" and s["train"].model_overrides["attention_backend"] == "ring"
    assert s["mesh"].shape["context"] > 1
    # The context is a RUNTIME override (it wins over the model file's and the checkpoint's, finetune.gin).
    assert s["train"].model_overrides["max_position"] >= 16384


def test_70b_experiment_uses_the_70b_shape():
    load("scitulu_70b.gin")
    assert gin.get_bindings("finetune")["model"].num_layers == 80


@pytest.mark.parametrize("name", TRAINING)
def test_each_recommended_mesh_fits_its_hardware_and_the_batch(name):
    meshes = recommended_meshes(name)
    hardware = {hw for _, hw, _ in meshes}
    assert any(hw.startswith("V4") for hw in hardware) and "V5P_128" in hardware and "V5E_256" in hardware
    assert any(hw.endswith("H100") for hw in hardware)
    for macro, hw, microbatches in meshes:
        load(name, [f"MESH_SHAPE=%{macro}", f"MICROBATCHES={microbatches}"])
        s = gin.get_bindings("finetune")
        mesh = s["mesh"].shape
        chips = GPU_CHIPS.get(hw) or aot.parse_topology(hw.lower().replace("_", "-")).num_chips
        assert mesh["data"] * mesh["fsdp"] * mesh["tensor"] * mesh["context"] == chips, macro
        rows = s["train"].batch_size // microbatches
        assert rows * microbatches == s["train"].batch_size and rows % (mesh["data"] * mesh["fsdp"]) == 0, macro
        assert dict(s["data"].task_feature_lengths)["targets"] % mesh["context"] == 0, macro


def test_experiment_mixtures_are_registered():
    import seqio
    import seqio_tasks  # noqa: F401  registers the SciRIFF tasks and mixtures

    for name in TRAINING + ["eval_sciriff.gin"]:
        load(name)
        selector = "finetune" if name in TRAINING else "evaluate_run"
        s = gin.get_bindings(selector)
        mixture = s["data"].mixture_or_task_name if name in TRAINING else s["eval_config"].mixture_or_task_name
        assert mixture in {*seqio.MixtureRegistry.names(), *seqio.TaskRegistry.names()}, f"{name}: {mixture}"
