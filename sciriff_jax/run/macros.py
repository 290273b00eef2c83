"""Every gin macro a run binds is checked at start against what the parameter it sets accepts, and the macros that
must fit one another (MICROBATCHES into BATCH_SIZE, an experiment's mesh presets; the mesh's share of the batch is
checked by `finetune` once devices are known).

What a parameter accepts comes from the config dataclasses themselves: the field's type (`int | None`: an integer
or None) and its `dataclasses.field(metadata=...)`:
  "min"            the lowest value ("above": True for strictly above it), "below": an upper bound it stays under;
  "choices"        the values it may take;
  "check"          fn(value) -> None, or what the value must be (dict-valued settings: lengths, mesh shapes);
  "optional_in"    the gin scopes where a `str | None` field may be None (elsewhere it must be set);
  "overrides"      a config class: the field is a dict of that class's fields by name, each checked as that field.
So `TrainConfig.batch_size = %BATCH_SIZE` checks BATCH_SIZE as TrainConfig.batch_size. A wrong value would otherwise
surface minutes later as a traceback deep in JAX or TensorFlow that does not name the setting. Macros no binding
sets directly (a user's own, `%OTHER` chains) are checked through the macros that point at them.

Mesh presets: an experiment offers recommended meshes as pairs of macros, `MESH_<NAME>` (a MeshConfig.shape) and
`MICROBATCHES_<NAME>` (the MICROBATCHES that fits it), picked with --gin.MESH_SHAPE=%MESH_<NAME>
--gin.MICROBATCHES=%MICROBATCHES_<NAME>. Presets count as used, and each is checked like the settings it feeds
(that each fits its hardware and the batch is tests/test_experiments.py's to check: a run that changes BATCH_SIZE
and picks one preset must not fail on the others).
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Callable

from sciriff_jax.parallel.sharding import MeshConfig
from sciriff_jax.train.finetune import TrainConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")  # "auto": float32 on a CPU, bfloat16 on GPU / TPU
# Run-function parameters (evaluate_run, infer_run) that their annotation alone does not describe.
ARGUMENT_CHECKS: dict[str, Callable] = {}
PRESET_SHAPE, PRESET_MICROBATCHES = "MESH_", "MICROBATCHES_"


class MacroError(ValueError):
    """A gin macro whose value cannot be used; the message names the macro, what it is and what it must be."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(minimum: int | None) -> Callable:
    def check(v):
        if not _is_int(v) or (minimum is not None and v < minimum):
            return "an integer" + (f" >= {minimum}" if minimum is not None else "")
    return check


def _number(minimum: float | None, *, above: bool = False, below: float | None = None) -> Callable:
    def check(v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = ok and (minimum is None or (v > minimum if above else v >= minimum))
        if not ok or (below is not None and v >= below):
            return ("a number" + (f" {'>' if above else '>='} {minimum}" if minimum is not None else "")
                    + (f" and < {below}" if below is not None else ""))
    return check


def _choice(choices) -> Callable:
    def check(v):
        if v not in choices:
            return f"one of {', '.join(repr(c) for c in choices)}"
    return check


def _string(v):
    if not isinstance(v, str) or not v:
        return "a non-empty string"


def _bool(v):
    if not isinstance(v, bool):
        return "True or False"


def _optional(check: Callable) -> Callable:
    def optional(v):
        if v is not None and (why := check(v)):
            return why + " or None"
    return optional


ARGUMENT_CHECKS["dtype"] = _optional(_choice(DTYPES))


def _type_parts(annotation) -> tuple[str, bool]:
    """(base type name, whether None is allowed) of an annotation such as "int | None"."""
    if isinstance(annotation, str):
        parts = [p.strip() for p in annotation.split("|")]
    else:
        parts = [getattr(a, "__name__", str(a)) for a in (typing.get_args(annotation) or (annotation,))]
    parts = ["None" if p == "NoneType" else p for p in parts]
    base = [p for p in parts if p != "None"]
    return (base[0] if len(base) == 1 else ""), "None" in parts


def accepts(annotation, metadata, scope: str = "") -> Callable | None:
    """The check of one parameter: its type and metadata (see the module docstring); None when nothing is known."""
    if "check" in metadata:
        return metadata["check"]
    base, optional = _type_parts(annotation)
    if "optional_in" in metadata:
        optional = scope in metadata["optional_in"]
    minimum = metadata.get("min")
    if "choices" in metadata:
        check = _choice(metadata["choices"])
    elif base == "int":
        check = _int(minimum)
    elif base == "float":
        check = _number(minimum, above=metadata.get("above", False), below=metadata.get("below"))
    elif base == "str":
        check = _string
    elif base == "bool":
        check = _bool
    else:
        return None
    return _optional(check) if optional else check


def field_check(cls, name: str, scope: str = "", key: str | None = None) -> Callable | None:
    """The check of `cls.name` bound in gin scope `scope` (of its entry `key` for an "overrides" field)."""
    field = {f.name: f for f in dataclasses.fields(cls)}.get(name)
    if field is None:
        return None
    if key is not None:
        target = field.metadata.get("overrides")
        check = target and field_check(target, key)
        return check and _optional(check)  # None keeps the value the run would have without the override
    return accepts(field.type, field.metadata, scope)


def binding_check(scope: str, target, param: str, key: str | None) -> Callable | None:
    """The check of a macro bound to `param` of `target` (a config dataclass or a run function)."""
    if dataclasses.is_dataclass(target):
        return field_check(target, param, scope, key)
    if key is None and param in ARGUMENT_CHECKS:
        return ARGUMENT_CHECKS[param]
    parameter = inspect.signature(target).parameters.get(param)
    return None if parameter is None or key is not None else accepts(parameter.annotation, {}, scope)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A recommended mesh an experiment offers: --gin.MESH_SHAPE=%MESH_<name> --gin.MICROBATCHES=<microbatches>."""

    name: str              # the hardware it is for, e.g. "V5P_128", "8XH100"
    shape: dict
    microbatches: int

    @property
    def macro(self) -> str:
        return PRESET_SHAPE + self.name


def presets(macros: dict) -> list[Preset]:
    """The mesh presets among `macros` (values with `%OTHER` followed): each MESH_<NAME> with its MICROBATCHES_<NAME>."""
    out = []
    for name, microbatches in sorted(macros.items()):
        hardware = name[len(PRESET_MICROBATCHES):]
        if name.startswith(PRESET_MICROBATCHES) and PRESET_SHAPE + hardware in macros:
            out.append(Preset(hardware, macros[PRESET_SHAPE + hardware], microbatches))
    return out


def _preset_checks(macros: dict) -> dict[str, list[Callable]]:
    shape, micro = field_check(MeshConfig, "shape"), field_check(TrainConfig, "microbatches")
    names = {p.name for p in presets(macros)}
    return {**{PRESET_SHAPE + n: [shape] for n in names}, **{PRESET_MICROBATCHES + n: [micro] for n in names}}


def validate(macros: dict, bindings=(), *, skip=lambda v: False) -> None:
    """Check every bound macro's value and the macros that must fit one another; MacroError names the macro.

    `macros` holds literal values (references to other macros already followed); `bindings` lists
    (scope, configurable, parameter, dict key, macro) as gin_compat.macro_bindings gives them. Values `skip` says are
    computed by gin later (`%gin.REQUIRED`, `@fn()`) are not checked here.
    """
    checks = _preset_checks(macros)
    for scope, target, param, key, macro in bindings:
        check = binding_check(scope, target, param, key)
        if check is not None:
            checks.setdefault(macro, []).append(check)
    for name, value in sorted(macros.items()):
        if name not in checks or skip(value):
            continue
        why = next((why for check in checks[name] if (why := check(value))), None)
        if why:
            raise MacroError(f"gin macro {name}={value!r}: expected {why} (set it in the gin file or with "
                             f"--gin.{name}=...)")
    batch, micro = macros.get("BATCH_SIZE"), macros.get("MICROBATCHES")
    if _is_int(batch) and _is_int(micro) and batch % micro:
        raise MacroError(f"gin macros BATCH_SIZE={batch} and MICROBATCHES={micro}: MICROBATCHES must divide "
                         f"BATCH_SIZE (each microbatch is BATCH_SIZE / MICROBATCHES rows); e.g. "
                         f"--gin.MICROBATCHES={_divisor_near(batch, micro)}")


def _divisor_near(n: int, k: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), d))


def unused(macros: dict, referenced: dict[str, set[str]]) -> list[str]:
    """Macros no binding reaches: `referenced` maps each binding (macros by name) to the macros it names."""
    roots = set().union(*(refs for key, refs in referenced.items() if key not in macros), set())
    roots |= {name for p in presets(macros) for name in (p.macro, PRESET_MICROBATCHES + p.name)}  # used by being offered
    used, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in used:
            used.add(name)
            todo.extend(referenced.get(name, ()))
    return sorted(name for name in macros if name not in used)
