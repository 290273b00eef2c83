"""Ahead-of-time compile of the training step for a TPU topology (or the local CPUs) and its memory report.

`sciriff-jax aot --gin_file=gin_configs/experiments/scitulu_7b.gin --topology=v5p-128` builds the same
model, optimizer, mesh and shardings as a training run, compiles one training step with the TPU
compiler from the `libtpu` package (no TPU needed), and prints what each chip would hold.
No TensorFlow or SeqIO here: the batch is described by shapes only.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from typing import Any, Sequence

import gin
import jax
import jax.numpy as jnp
from jax.experimental import topologies

from sciriff_jax.data.batches import BATCH_KEYS
from sciriff_jax.model.attention import select_backend
from sciriff_jax.parallel.sharding import MeshConfig
from sciriff_jax.run import gin_compat
from sciriff_jax.run import main as main_lib
from sciriff_jax.train import finetune as finetune_lib
from sciriff_jax.train import setup
from sciriff_jax.train.optim import OptimizerConfig

GiB = 1024 ** 3


class AotError(RuntimeError):
    """A topology or configuration that cannot be compiled ahead of time; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation as libtpu and Cloud TPU name it."""

    libtpu_name: str      # prefix of the libtpu topology name, e.g. "v5p" in "v5p:4x4x4"
    hbm_bytes: int        # HBM per chip
    cores_in_type: int    # TensorCores per chip counted by the accelerator type (v5p-128 = 64 chips)
    dims: int             # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
    chip_config: str      # "megacore": one JAX device per chip with both TensorCores


# HBM as the TPU compiler (libtpu 0.0.42) counts it available to a program, a little under the spec sheet.
CHIPS = {
    "v4": Chip("v4", int(30.75 * GiB), 2, 3, "megacore"),
    "v5p": Chip("v5p", int(95.74 * GiB), 2, 3, "megacore"),
    "v5e": Chip("v5e", int(15.75 * GiB), 1, 2, "default"),
    "v5litepod": Chip("v5e", int(15.75 * GiB), 1, 2, "default"),
    "v6e": Chip("v6e", int(31.25 * GiB), 1, 2, "default"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A compile target: a TPU slice (by accelerator type or libtpu name) or the local CPU devices."""

    name: str
    platform: str                 # "tpu" or "cpu"
    num_chips: int
    hbm_bytes: int | None = None  # per chip; None for CPU
    libtpu_name: str = ""         # e.g. "v5p:4x4x4"
    chip_config: str = "default"


def slice_shape(num_chips: int, dims: int) -> tuple[int, ...]:
    """The standard Cloud TPU slice shape for a chip count: double the smallest side, ties to the last side."""
    if num_chips < 1 or num_chips & (num_chips - 1):
        raise AotError(f"a TPU slice has a power-of-two number of chips; got {num_chips}")
    if dims == 2:
        shape = [1, 1]
    else:
        shape = [2, 2, 1] if num_chips >= 4 else [1, 1, 1]
    while math.prod(shape) < num_chips:
        smallest = min(shape)
        last = max(i for i, s in enumerate(shape) if s == smallest)
        shape[last] *= 2
    if math.prod(shape) != num_chips:
        raise AotError(f"no standard {dims}-D slice shape holds {num_chips} chips")
    return tuple(shape)


def parse_topology(spec: str) -> Topology:
    """'v5p-128', 'v4-64', 'v5e-256', 'v5litepod-16', 'v6e-64', a libtpu name 'v5p:4x4x4', or 'cpu'."""
    spec = spec.strip()
    if spec == "cpu" or spec.startswith("cpu:"):
        n = len(jax.devices("cpu")) if spec == "cpu" else int(spec.split(":", 1)[1])
        return Topology(name=spec, platform="cpu", num_chips=n)
    known = ", ".join(sorted(CHIPS))
    if ":" in spec:
        gen, _, shape_text = spec.partition(":")
        chip = CHIPS.get(gen)
        if chip is None:
            raise AotError(f"--topology={spec}: unknown TPU generation {gen!r}; known: {known}")
        try:
            shape = tuple(int(s) for s in shape_text.split("x"))
        except ValueError:
            raise AotError(f"--topology={spec}: expected a shape like 4x4x4 after ':'") from None
        return Topology(spec, "tpu", math.prod(shape), chip.hbm_bytes, f"{chip.libtpu_name}:{shape_text}",
                        chip.chip_config)
    gen, _, count = spec.rpartition("-")
    chip = CHIPS.get(gen)
    if chip is None or not count.isdigit():
        raise AotError(f"--topology={spec}: expected an accelerator type such as v4-64, v5p-128, v5e-256 "
                       f"or v6e-64 (generations: {known}), a libtpu name such as v5p:4x4x4, or 'cpu'")
    num_chips = max(int(count) // chip.cores_in_type, 1)
    try:
        shape = slice_shape(num_chips, chip.dims)
    except AotError as err:
        raise AotError(f"--topology={spec}: {err}") from None
    return Topology(spec, "tpu", num_chips, chip.hbm_bytes,
                    f"{chip.libtpu_name}:{'x'.join(map(str, shape))}", chip.chip_config)


def topology_devices(topo: Topology) -> list:
    """Compile-only devices of a TPU topology (via libtpu), or the first `num_chips` local CPU devices."""
    if topo.platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < topo.num_chips:
            raise AotError(f"--topology={topo.name}: only {len(devices)} CPU devices here; set "
                           f"XLA_FLAGS=--xla_force_host_platform_device_count={topo.num_chips} before starting")
        return devices[: topo.num_chips]
    gen = topo.libtpu_name.split(":")[0]
    side = 1 if topo.num_chips < 4 else 2
    host_bounds = (side, side, 1)
    try:
        desc = topologies.get_topology_desc(topo.libtpu_name, "tpu", chip_config_name=topo.chip_config,
                                            chips_per_host_bounds=host_bounds, num_slices=1)
    except RuntimeError as err:
        text = str(err)
        if "not installed" in text or "TPU support" in text:
            raise AotError(
                f"--topology={topo.name}: the TPU compiler (libtpu) is not installed, so TPU topologies cannot "
                "be targeted from this machine. Install it with `pip install -e .[aot]` (the libtpu wheel "
                "matching your jax), or set TPU_LIBRARY_PATH to a libtpu.so; `--topology=cpu` compiles for "
                "the local CPU devices instead.") from err
        raise AotError(f"--topology={topo.name} ({topo.libtpu_name}): libtpu cannot build this topology: "
                       f"{text.splitlines()[0]}") from err
    devices = list(desc.devices)
    if len(devices) != topo.num_chips:
        raise AotError(f"--topology={topo.name}: libtpu made {len(devices)} {gen} devices for "
                       f"{topo.libtpu_name}, expected {topo.num_chips}")
    return devices


# --- the memory report ------------------------------------------------------------------------------

@dataclasses.dataclass
class ArrayInfo:
    """One input array of the compiled step and how it is laid out over the mesh."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    spec: str
    shard_shape: tuple[int, ...]

    @property
    def global_bytes(self) -> int:
        return math.prod(self.shape) * jnp.dtype(self.dtype).itemsize

    @property
    def shard_bytes(self) -> int:
        return math.prod(self.shard_shape) * jnp.dtype(self.dtype).itemsize


@dataclasses.dataclass
class MemoryReport:
    """Per-device memory of a compiled program, in bytes, and its largest inputs."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    peak_bytes: int | None
    hbm_bytes: int | None
    largest: list[ArrayInfo]

    @property
    def total_bytes(self) -> int:
        """Arguments + outputs not aliased to (donated) arguments + temporaries + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes


def describe_arrays(tree, shardings) -> list[ArrayInfo]:
    """ArrayInfo for every leaf of `tree` (ShapeDtypeStructs) under the matching `shardings` tree."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    shard_leaves = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(leaves) != len(shard_leaves):
        raise ValueError(f"describe_arrays: {len(leaves)} arrays but {len(shard_leaves)} shardings")
    out = []
    for (path, leaf), sharding in zip(leaves, shard_leaves):
        shape = tuple(leaf.shape)
        spec = str(getattr(sharding, "spec", sharding))
        out.append(ArrayInfo(jax.tree_util.keystr(path), shape, str(jnp.dtype(leaf.dtype)), spec,
                             tuple(sharding.shard_shape(shape)) if shape else ()))
    return out


def memory_report(compiled, arrays: Sequence[ArrayInfo] = (), hbm_bytes: int | None = None,
                  top: int = 8) -> MemoryReport:
    """Per-device figures from `compiled.memory_analysis()` plus the `top` largest of `arrays`."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise AotError("this backend's compiler gives no memory analysis; try another --topology")
    peak = getattr(stats, "peak_memory_in_bytes", 0) or None
    largest = sorted(arrays, key=lambda a: a.global_bytes, reverse=True)[:top]
    return MemoryReport(stats.argument_size_in_bytes, stats.output_size_in_bytes, stats.alias_size_in_bytes,
                        stats.temp_size_in_bytes, stats.generated_code_size_in_bytes, peak, hbm_bytes, largest)


def _gib(n: int) -> str:
    return f"{n / GiB:8.2f} GiB"


def format_report(report: MemoryReport, title: str = "") -> str:
    """A human-readable table of the report."""
    lines = [title] if title else []
    lines += [
        "per-device memory:",
        f"  arguments            {_gib(report.argument_bytes)}  (params, optimizer state, batch)",
        f"  outputs              {_gib(report.output_bytes)}  ({_gib(report.alias_bytes).strip()} reuse donated arguments)",
        f"  temporaries          {_gib(report.temp_bytes)}  (activations, gradients, collectives)",
        f"  generated code       {_gib(report.code_bytes)}",
        f"  total                {_gib(report.total_bytes)}",
    ]
    if report.peak_bytes:
        lines.append(f"  XLA peak estimate    {_gib(report.peak_bytes)}")
    if report.hbm_bytes is not None:
        pct = 100.0 * report.total_bytes / report.hbm_bytes
        verdict = "fits" if report.fits else "DOES NOT FIT: see README.md, Running on real hardware > Troubleshooting"
        lines.append(f"  chip HBM             {_gib(report.hbm_bytes)}  -> {pct:.0f}% used, {verdict}")
    if report.largest:
        lines.append(format_largest(report.largest))
    return "\n".join(lines)


def format_largest(arrays: Sequence[ArrayInfo]) -> str:
    """One line per array: path, dtype, global shape, mesh PartitionSpec, per-device shard and its size."""
    lines = ["largest arrays (global shape, sharding -> per-device shard):"]
    width = max((len(a.path) for a in arrays), default=0)
    for a in arrays:
        lines.append(f"  {a.path:<{width}}  {a.dtype:<8} {str(a.shape):<22} {a.spec:<32} "
                     f"-> {str(a.shard_shape):<20} {a.shard_bytes / 2**20:10.1f} MiB")
    return "\n".join(lines)


# --- compiling the training step -----------------------------------------------------------------

@dataclasses.dataclass
class CompiledStep:
    """A training step compiled for a set of devices (or the compiler's out-of-memory verdict)."""

    compiled: Any                 # None when the compiler refused: out of memory
    mesh: Any
    config: Any
    arrays: list[ArrayInfo]
    seconds: float
    out_of_memory: str = ""       # the compiler's message when it ran out of HBM


def target_attention_backend(config, platform: str, length: int, mesh=None) -> str:
    """What `config.attention_backend` becomes on the target platform (the compiling host may be a CPU)."""
    q = jax.ShapeDtypeStruct((1, length, config.num_heads, config.head_dim), jnp.dtype(config.dtype))
    return select_backend(config.attention_backend, q, mesh=mesh, platform=platform)


def compile_train_step(config, devices, *, mesh: MeshConfig = MeshConfig("fsdp"), batch_size: int, length: int,
                       microbatches: int = 1, optimizer: OptimizerConfig = OptimizerConfig(),
                       train_steps: int = 1000) -> CompiledStep:
    """Lower and compile the training run's step (train.setup.build) for `devices` from shapes alone."""
    started = time.time()
    try:
        run_setup = setup.build(config, mesh=mesh, optimizer=optimizer, train_steps=train_steps,
                                microbatches=microbatches, devices=devices)  # checks the target's platform
        run_setup.check_batch(batch_size)  # the check finetune makes, on the target's devices
    except setup.RunConfigError as err:
        raise AotError(str(err)) from err
    sharding = run_setup.sharding
    platform = devices[0].platform
    backend = target_attention_backend(config, platform, length, sharding.mesh)
    run_setup = run_setup.with_step_config(config.replace(attention_backend=backend))
    params, opt_state = run_setup.abstract_params(), run_setup.abstract_opt_state()
    batch = run_setup.abstract_batch(batch_size, length)
    try:
        with sharding.context():
            lowered = run_setup.step.jitted.lower(params, opt_state, batch)
    except (NotImplementedError, ValueError) as err:
        raise AotError(
            f"the training step cannot be lowered for {platform} with attention backend {backend!r} on mesh "
            f"{dict(sharding.mesh.shape)}: {str(err).splitlines()[0]} -- try another backend, e.g. "
            "--gin.ATTENTION_BACKEND='\"blockwise\"'") from err
    # The step is jitted with exactly these in_shardings, so they are what the compiled program takes.
    # (`compiled.input_shardings` cannot be used: with splash its kernel's mask tables become extra
    # executable inputs and jax 0.10.2 fails to unflatten them, "Too many leaves for PyTreeDef".)
    arrays = describe_arrays({"params": params, "opt_state": opt_state, "batch": batch},
                             {"params": sharding.params, "opt_state": sharding.opt_state,
                              "batch": {k: sharding.batch for k in BATCH_KEYS}})
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as err:
        # The TPU compiler refuses a program that cannot fit rather than reporting its size.
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        return CompiledStep(None, sharding.mesh, run_setup.config, arrays, time.time() - started,
                            str(err).splitlines()[0])
    return CompiledStep(compiled, sharding.mesh, run_setup.config, arrays, time.time() - started)


# --- gin glue and the command line ----------------------------------------------------------------

STUB = "unused-by-aot"  # the value of a required macro AOT does not need (MODEL_DIR, the mixture, paths)


def finetune_settings(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> dict:
    """The config objects `finetune` would get from a run/experiment config (required macros AOT does not use are
    stubbed): {"train", "data", "model", "optimizer", "mesh", ...}."""
    bindings = list(bindings)
    try:
        main_lib.parse_gin(gin_files, bindings)
    except main_lib.GinConfigError as err:
        # MODEL_DIR, the mixture and checkpoint paths do not change the compiled program.
        given = {b.partition("=")[0].strip() for b in bindings}
        missing = [m for m, v in gin_compat.defined_macros().items() if gin_compat.is_required(v) and m not in given]
        if not missing:
            raise AotError(str(err)) from err
        try:
            main_lib.parse_gin(gin_files, bindings + [f'{m}="{STUB}"' for m in missing])
        except main_lib.GinConfigError as err2:
            raise AotError(str(err2)) from err2
    settings = gin.get_bindings("finetune")
    if "model" not in settings or "train" not in settings:
        raise AotError(f"{', '.join(gin_files)} configure no training run (no `finetune.*` bindings): `aot` compiles "
                       "the training step, so give a training config such as gin_configs/experiments/scitulu_7b.gin")
    return settings


def compile_from_gin(gin_files: Sequence[str], bindings: Sequence[str], devices) -> CompiledStep:
    """Compile the training step that `gin_files` + `bindings` describe, for `devices`."""
    s = finetune_settings(gin_files, bindings)
    train, data = s["train"], s["data"]
    if train.initial_checkpoint_path == STUB:  # required but not given: the model file has the shapes
        train = dataclasses.replace(train, initial_checkpoint_path=None)
    try:
        # The model finetune would train on the target: DTYPE "auto" is the target platform's, not this host's.
        config = finetune_lib.resolve_model_config(s["model"], train, platform=devices[0].platform)
    except ValueError as err:
        raise AotError(str(err)) from err
    return compile_train_step(config, devices, mesh=s.get("mesh", MeshConfig()), batch_size=train.batch_size,
                              length=data.length, microbatches=train.microbatches,
                              optimizer=s.get("optimizer", OptimizerConfig()), train_steps=train.train_steps or 1000)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """--gin_file (repeatable), --gin.NAME=VALUE, --topology, --top."""
    parser = argparse.ArgumentParser(
        prog="sciriff-jax aot",
        description="Compile the training step for a TPU topology on this machine (no TPU needed) and report "
                    "per-device memory against the chip's HBM and the sharding of the largest arrays.",
        epilog="Example: sciriff-jax aot --gin_file=gin_configs/experiments/scitulu_7b.gin --topology=v5p-128")
    parser.add_argument("--gin_file", action="append", default=[], required=True, help="gin file (repeatable)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding, e.g. 'BATCH_SIZE=64'")
    parser.add_argument("--topology", required=True,
                        help="v4-64, v5p-128, v5e-256, v6e-64 (Cloud TPU accelerator types), a libtpu name such as "
                             "v5p:4x4x4, or cpu / cpu:N for the local CPU devices")
    parser.add_argument("--top", type=int, default=8, help="how many of the largest arrays to list")
    known, rest = parser.parse_known_args(list(argv))
    known.gin_bindings.extend(main_lib.gin_flag_bindings(parser, rest))
    return known


def main(argv: Sequence[str] | None = None) -> int:
    """`sciriff-jax aot`: compile for --topology and print the memory report; 0 if it fits, 1 if not, 2 on errors."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        topo = parse_topology(args.topology)
        devices = topology_devices(topo)
        target = f"{topo.name} ({topo.libtpu_name}, {topo.num_chips} chips)" if topo.platform == "tpu" else \
            f"{topo.num_chips} local CPU devices"
        print(f"[aot] compiling the training step of {', '.join(args.gin_file)} for {target} ...", flush=True)
        step = compile_from_gin(args.gin_file, args.gin_bindings, devices)
    except AotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    c = step.config
    print(f"[aot] compiled in {step.seconds:.1f}s: {c.num_params() / 1e9:.2f}B params, mesh "
          f"{dict(step.mesh.shape)}, attention {c.attention_backend}, remat {c.remat_policy}", flush=True)
    if step.out_of_memory:
        print(f"DOES NOT FIT: {step.out_of_memory}\n(README.md, Running on real hardware > Troubleshooting, lists the knobs)")
        print(format_largest(sorted(step.arrays, key=lambda a: a.global_bytes, reverse=True)[: args.top]))
        return 1
    report = memory_report(step.compiled, step.arrays, topo.hbm_bytes, top=args.top)
    print(format_report(report), flush=True)
    return 1 if report.fits is False else 0


if __name__ == "__main__":
    sys.exit(main())
