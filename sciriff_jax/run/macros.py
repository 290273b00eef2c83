"""Every gin macro the run files define, checked by name at start: type, range, choices, and the divisibility
between macros (MICROBATCHES into BATCH_SIZE; the mesh's share is checked by `finetune` once devices are known).

A wrong value would otherwise surface minutes later as a traceback deep in JAX or TensorFlow that does not name the
setting. Macros a user's own gin file adds are not known here and pass through to the configurables they feed.
"""
from __future__ import annotations

from typing import Callable

from sciriff_jax.model.config import ATTENTION_BACKENDS, REMAT_POLICIES
from sciriff_jax.parallel.sharding import LAYOUTS, MESH_AXES
from sciriff_jax.train.loop import NONFINITE_POLICIES
from sciriff_jax.eval.protocol import PROTOCOLS
from sciriff_jax.train.optim import SCHEDULES

DTYPES = ("float32", "bfloat16", "float16")
SPLITS = ("train", "validation", "test")


class MacroError(ValueError):
    """A gin macro whose value cannot be used; the message names the macro, what it is and what it must be."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(minimum: int) -> Callable:
    def check(v):
        if not _is_int(v) or v < minimum:
            return f"an integer >= {minimum}"
    return check


def _number(minimum: float, *, above: bool = False, below: float | None = None) -> Callable:
    def check(v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (v > minimum if above else v >= minimum)
        if not ok or (below is not None and v >= below):
            return f"a number {'>' if above else '>='} {minimum}" + (f" and < {below}" if below is not None else "")
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


def _lengths(v):
    if not isinstance(v, dict) or "targets" not in v or not all(_is_int(n) and n > 0 for n in v.values()):
        return 'a dict of positive integer lengths with "targets", e.g. {"targets": 4096}'


def _mesh_shape(v):
    if v is None:
        return None
    if (not isinstance(v, dict) or set(v) - set(MESH_AXES) or not all(_is_int(n) and (n >= 1 or n == -1)
                                                                       for n in v.values())
            or list(v.values()).count(-1) > 1):
        return (f"None or a dict over the axes {MESH_AXES} of sizes >= 1 (one may be -1: the remaining devices), "
                'e.g. {"data": 1, "fsdp": -1}')


def _fewshot(v):
    if v is not None and (not isinstance(v, dict) or not all(isinstance(k, str) and _is_int(n) and n >= 0
                                                             for k, n in v.items())):
        return 'None or a dict of task name -> number of examples, e.g. {"evidence_inference": 1}'


SPEC: dict[str, Callable] = {
    "MODEL_DIR": _string, "CHECKPOINT_PATH": _string, "MIXTURE_OR_TASK_NAME": _string,
    "INITIAL_CHECKPOINT_PATH": _optional(_string), "OUTPUT_DIR": _optional(_string),
    "VOCABULARY_PATH": _optional(_string), "JUDGE_URL": _optional(_string), "JUDGE_MODEL": _optional(_string),
    "EVAL_MIXTURE_OR_TASK_NAME": _optional(_string), "DECODE_EVAL_MIXTURE_OR_TASK_NAME": _optional(_string),
    "TASK_FEATURE_LENGTHS": _lengths,
    "TRAIN_STEPS": _optional(_int(1)), "NUM_EPOCHS": _number(0, above=True), "BATCH_SIZE": _int(1), "EXAMPLES_PER_UPDATE": _optional(_int(1)),
    "MICROBATCHES": _int(1), "SEED": _int(0), "CHECKPOINT_PERIOD": _int(0), "KEEP_CHECKPOINTS": _optional(_int(1)),
    "LOG_EVERY": _int(1), "EVAL_EVERY": _optional(_int(1)), "VOCAB_SIZE": _int(1),
    "MAX_EXAMPLES": _optional(_int(1)), "MAX_NEW_TOKENS": _int(1),
    "LEARNING_RATE": _number(0, above=True), "WARMUP_RATIO": _number(0, below=1.0), "WEIGHT_DECAY": _number(0),
    "GRAD_CLIP": _optional(_number(0)),
    "SCHEDULE": _choice(SCHEDULES), "ON_NONFINITE": _choice(NONFINITE_POLICIES),
    "MESH_LAYOUT": _optional(_choice(LAYOUTS)), "MESH_SHAPE": _mesh_shape,
    "ATTENTION_BACKEND": _optional(_choice(ATTENTION_BACKENDS)), "REMAT_POLICY": _optional(_choice(REMAT_POLICIES)),
    "TEMPLATE": _string, "PROTOCOL": _choice(PROTOCOLS), "DTYPE": _optional(_choice(DTYPES)), "SPLIT": _choice(SPLITS),
    "FEWSHOT": _fewshot, "USE_CACHED_TASKS": _bool, "PACK": _bool, "EVAL_AT_START": _bool,
}
# Named alternatives an experiment offers for --gin.MESH_SHAPE=%MESH_V4_64 (listed in its PRESETS macro).
PRESETS = "PRESETS"


def _check(name: str) -> Callable | None:
    if name in SPEC:
        return SPEC[name]
    return _mesh_shape if name.startswith("MESH_") else None


def validate(macros: dict, *, skip=lambda v: False) -> None:
    """Check every known macro's value and the macros that must divide one another; MacroError names the macro.

    `macros` holds literal values (references to other macros already followed); values `skip` says are computed
    by gin later (`%gin.REQUIRED`, `@fn()`) are not checked here.
    """
    for name, value in sorted(macros.items()):
        check = _check(name)
        if check is None or skip(value):
            continue
        why = check(value)
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
    roots |= referenced.get(PRESETS, set())  # presets are used by being offered
    used, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in used:
            used.add(name)
            todo.extend(referenced.get(name, ()))
    return sorted(name for name in macros if name not in used and name != PRESETS)
