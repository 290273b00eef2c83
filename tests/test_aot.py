"""sciriff_jax.run.aot: topology names, the memory report (checked on the local CPU devices), clear errors."""
import importlib.util
import math
import os

import pytest

from sciriff_jax.run import aot
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.parallel.sharding import MeshConfig

TINY = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   max_position=64, dtype="float32", param_dtype="float32")
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None or bool(os.environ.get("TPU_LIBRARY_PATH"))


@pytest.mark.parametrize("spec, libtpu_name, chips", [
    ("v5p-128", "v5p:4x4x4", 64),
    ("v4-64", "v4:2x4x4", 32),
    ("v4-8", "v4:2x2x1", 4),
    ("v4-256", "v4:4x4x8", 128),
    ("v5e-256", "v5e:16x16", 256),
    ("v5litepod-16", "v5e:4x4", 16),
    ("v6e-8", "v6e:2x4", 8),
    ("v5p:2x2x2", "v5p:2x2x2", 8),
])
def test_accelerator_types_map_to_the_standard_slice_shape(spec, libtpu_name, chips):
    topo = aot.parse_topology(spec)
    assert (topo.platform, topo.libtpu_name, topo.num_chips) == ("tpu", libtpu_name, chips)
    assert topo.hbm_bytes > 10 * aot.GiB


@pytest.mark.parametrize("spec", ["tpu-128", "v5p-96", "v9-8", "v5p:4xfour"])
def test_unknown_topologies_are_rejected_with_what_is_accepted(spec):
    with pytest.raises(aot.AotError, match="topology"):
        aot.parse_topology(spec)


@pytest.fixture(scope="module")
def fsdp_step():
    devices = aot.topology_devices(aot.parse_topology("cpu:8"))
    return aot.compile_train_step(TINY, devices, mesh=MeshConfig("fsdp"), batch_size=8, length=32)


def test_cpu_topology_compiles_the_train_step_on_the_requested_devices(fsdp_step):
    assert fsdp_step.compiled is not None and not fsdp_step.out_of_memory
    assert dict(fsdp_step.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1, "context": 1}
    paths = {a.path for a in fsdp_step.arrays}
    assert "['params']['embedding']" in paths and "['batch']['decoder_input_tokens']" in paths
    assert any(p.startswith("['opt_state']") for p in paths)


def test_reported_argument_bytes_are_the_per_device_shards_of_every_input(fsdp_step):
    report = aot.memory_report(fsdp_step.compiled, fsdp_step.arrays)
    assert report.argument_bytes == sum(a.shard_bytes for a in fsdp_step.arrays)
    emb = next(a for a in fsdp_step.arrays if a.path == "['params']['embedding']")
    assert "fsdp" in emb.spec and math.prod(emb.shard_shape) * 8 == math.prod(emb.shape)
    batch = next(a for a in fsdp_step.arrays if a.path == "['batch']['decoder_input_tokens']")
    assert batch.shard_shape == (1, 32)
    # Params and optimizer state are donated: the new ones are written over them.
    state = sum(a.shard_bytes for a in fsdp_step.arrays if not a.path.startswith("['batch']"))
    assert report.alias_bytes == state
    assert report.total_bytes == report.argument_bytes + report.output_bytes - state + report.temp_bytes + report.code_bytes


def test_the_verdict_compares_the_total_with_the_chip_memory(fsdp_step):
    report = aot.memory_report(fsdp_step.compiled, fsdp_step.arrays, hbm_bytes=10 * aot.GiB, top=3)
    assert report.fits and len(report.largest) == 3
    assert report.largest[0].global_bytes >= report.largest[-1].global_bytes
    text = aot.format_report(report)
    assert "fits" in text and "arguments" in text and "temporaries" in text and "P(" in text
    small = aot.memory_report(fsdp_step.compiled, fsdp_step.arrays, hbm_bytes=report.total_bytes - 1)
    assert small.fits is False and "DOES NOT FIT" in aot.format_report(small)


@pytest.mark.parametrize("platform, length, dtype, want", [
    ("gpu", 256, "bfloat16", "cudnn"),
    ("gpu", 256, "float32", "reference"),
    ("tpu", 256, "bfloat16", "splash"),
    ("tpu", 200, "bfloat16", "reference"),
    ("cpu", 4096, "bfloat16", "blockwise"),
])
def test_auto_attention_resolves_for_the_target_platform_not_the_host(platform, length, dtype, want):
    assert aot.target_attention_backend(TINY.replace(dtype=dtype), platform, length) == want


def test_an_explicit_attention_backend_is_kept_for_any_target():
    assert aot.target_attention_backend(TINY.replace(attention_backend="blockwise"), "tpu", 256) == "blockwise"


def test_eval_configs_are_refused_with_a_pointer_to_a_training_config():
    with pytest.raises(aot.AotError, match="training"):
        aot.finetune_settings(["gin_configs/experiments/eval_sciriff.gin"])


def test_experiment_settings_reach_the_compile_with_required_paths_stubbed():
    s = aot.finetune_settings(["gin_configs/experiments/scitulu_7b.gin"], ["MESH_SHAPE=%MESH_V4_64"])
    assert s["mesh"].shape["fsdp"] == 32 and s["model"].num_layers == 32
    assert s["train"].initial_checkpoint_path == "unused-by-aot"


def test_main_compiles_a_gin_config_for_the_cpu_devices(capsys):
    rc = aot.main(["--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/finetune.gin",
                   "--topology=cpu:4", '--gin.MESH_LAYOUT="fsdp"', "--gin.BATCH_SIZE=4",
                   '--gin.TASK_FEATURE_LENGTHS={"targets": 32}', "--top=2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "'fsdp': 4" in out and "per-device memory" in out and "largest arrays" in out


@pytest.mark.skipif(HAVE_LIBTPU, reason="libtpu is installed here, so the TPU path is tested instead")
def test_tpu_topology_without_libtpu_says_how_to_install_it():
    with pytest.raises(aot.AotError, match=r"pip install -e \.\[aot\]"):
        aot.topology_devices(aot.parse_topology("v5p-8"))


@pytest.mark.skipif(not HAVE_LIBTPU, reason="needs libtpu (pip install -e .[aot]) to compile for a TPU topology")
def test_tpu_topology_compiles_with_libtpu_and_uses_the_chip_memory():
    topo = aot.parse_topology("v5e-4")
    devices = aot.topology_devices(topo)
    assert len(devices) == 4 and devices[0].platform == "tpu"
    step = aot.compile_train_step(TINY.replace(attention_backend="reference"), devices, mesh=MeshConfig("fsdp"),
                                  batch_size=4, length=128)
    report = aot.memory_report(step.compiled, step.arrays, topo.hbm_bytes)
    assert report.fits and report.hbm_bytes == aot.CHIPS["v5e"].hbm_bytes
    assert report.argument_bytes >= sum(a.shard_bytes for a in step.arrays)


@pytest.mark.skipif(not HAVE_LIBTPU, reason="needs libtpu (pip install -e .[aot]) to compile for a TPU topology")
def test_auto_attention_compiles_splash_for_a_tpu_topology_on_a_sharded_mesh():
    # Splash is a Mosaic kernel: it compiles on a batch- and head-sharded mesh only inside shard_map.
    config = TINY.replace(hidden_size=256, num_heads=2, num_kv_heads=2, dtype="bfloat16", max_position=256)
    topo = aot.parse_topology("v5e-8")
    step = aot.compile_train_step(config, aot.topology_devices(topo), mesh=MeshConfig("fsdp_tp"), batch_size=8,
                                  length=256)
    assert step.config.attention_backend == "splash" and dict(step.mesh.shape)["tensor"] == 2
    report = aot.memory_report(step.compiled, step.arrays, topo.hbm_bytes)
    assert report.fits and report.argument_bytes >= sum(a.shard_bytes for a in step.arrays)


def test_optimizer_moments_are_sharded_like_the_params(fsdp_step):
    by_path = {a.path: a for a in fsdp_step.arrays}
    emb = by_path["['params']['embedding']"]
    moments = [a for p, a in by_path.items() if p.startswith("['opt_state']") and p.endswith("['embedding']")]
    assert len(moments) == 2
    for m in moments:
        assert m.shard_shape == emb.shard_shape, f"{m.path}: {m.spec} vs params {emb.spec}"


def test_a_batch_that_does_not_split_over_the_devices_is_refused_as_finetune_refuses_it(capsys):
    rc = aot.main(["--gin_file=gin_configs/models/tiny.gin", "--gin_file=gin_configs/runs/finetune.gin",
                   "--topology=cpu:4", '--gin.MESH_LAYOUT="fsdp"', "--gin.BATCH_SIZE=6",
                   '--gin.TASK_FEATURE_LENGTHS={"targets": 32}'])
    assert rc == 2
    assert "BATCH_SIZE=6 / MICROBATCHES=1 = 6 rows per forward pass do not divide over the 4" in capsys.readouterr().err
