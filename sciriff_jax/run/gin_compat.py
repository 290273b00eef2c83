"""The two places we rely on gin internals, wrapped here and pinned by tests/test_gin_compat.py.

gin-config 0.5.0 has no public API to (a) list the macros a set of files defines and the macros each binding
names, which `--gin.NAME=...` validation, "required macro not set" and "macro never used" errors need, or (b) skip a plain directory during include search
(gin tries every include as a package resource too, and crashes on a namespace package without a file).
Both use private names; the pinned gin version (pyproject.toml) and the test say when that breaks.
"""
from __future__ import annotations

import gin
from gin import config as gin_config
from gin import resource_reader

PINNED_GIN_VERSION = "0.5.0"


def defined_macros() -> dict[str, object]:
    """Macros defined by the parsed gin files (name -> value)."""
    # gin keeps macros as bindings of the pseudo-configurable `gin.macro`, scoped by macro name.
    return {scope: params.get("value") for (scope, selector), params in gin_config._CONFIG.items()
            if selector == "gin.macro"}


def macro_references() -> dict[str, set[str]]:
    """The macros each parsed binding names: {macro name or "scope/selector": {macro names}}."""
    out: dict[str, set[str]] = {}
    for (scope, selector), params in gin_config._CONFIG.items():
        key = scope if selector == "gin.macro" else f"{scope}/{selector}"
        found, todo = out.setdefault(key, set()), list(params.values())
        while todo:
            value = todo.pop()
            if isinstance(value, gin_config.ConfigurableReference) and value.selector == "gin.macro":
                found.add(value.scoped_selector.rsplit("/", 1)[0])  # "%NAME" is a reference to "NAME/gin.macro"
            elif isinstance(value, dict):
                todo.extend(value.values())
            elif isinstance(value, (list, tuple, set)):
                todo.extend(value)
    return out


def macro_bindings() -> list[tuple[str, object, str, str | None, str]]:
    """Each parameter a macro is bound to: (scope, configurable class or function, parameter, dict key, macro).

    The key is None for `TrainConfig.batch_size = %BATCH_SIZE`, "remat_policy" for
    `TrainConfig.model_overrides = {"remat_policy": %REMAT_POLICY}`."""
    out = []
    for (scope, selector), params in gin_config._CONFIG.items():
        match = None if selector == "gin.macro" else gin_config._REGISTRY.get_match(selector)
        if match is None:
            continue
        for param, value in params.items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            out.extend((scope, match.wrapped, param, key, v.scoped_selector.rsplit("/", 1)[0]) for key, v in items
                       if isinstance(v, gin_config.ConfigurableReference) and v.selector == "gin.macro")
    return out


def resolve_macro(value: object, macros: dict[str, object]) -> object:
    """A macro's value with `%OTHER` references followed (MESH_SHAPE = %MESH_V5P_128 -> the dict)."""
    seen = set()
    while isinstance(value, gin_config.ConfigurableReference) and value.selector == "gin.macro":
        name = value.scoped_selector.rsplit("/", 1)[0]
        if name in seen or name not in macros:
            break
        seen.add(name)
        value = macros[name]
    return value


def is_reference(value: object) -> bool:
    """True for a value gin computes when a binding is used (`@fn()`, `%gin.REQUIRED`), not a literal."""
    return isinstance(value, gin_config.ConfigurableReference)


def is_required(value: object) -> bool:
    """True for a macro left at %gin.REQUIRED."""
    return repr(value) == "%gin.REQUIRED"


def tolerate_plain_directories_in_include_search() -> None:
    """Make gin's package-resource lookup skip plain directories instead of crashing.

    gin tries every include (e.g. 'runs/finetune.gin') as a Python package resource too; a plain folder of the
    same name in the working directory (a user's `runs/`) is a namespace package without a file, and gin then
    fails with a TypeError instead of going on to the next search path.
    """
    def exists(path: str) -> bool:
        try:
            return resource_reader.system_path_file_exists(path)
        except TypeError:
            return False

    readers = gin_config._FILE_READERS
    readers[:] = [(read, exists if check is resource_reader.system_path_file_exists else check) for read, check in readers]


__all__ = ["gin", "PINNED_GIN_VERSION", "defined_macros", "macro_references", "macro_bindings", "resolve_macro", "is_reference",
           "is_required",
           "tolerate_plain_directories_in_include_search"]
