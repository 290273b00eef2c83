"""Every gin binding or --gin.MACRO that a message of the package names is one gin and the run files know.

A hint such as "set finetune.on_nonfinite='skip'" that names a binding gin no longer has sends the user from one
error to another; the strings of sciriff_jax/ and seqio_tasks/ are read here (docstrings included) and each
`Configurable.arg=` / `scope/Configurable.arg=` and each `--gin.MACRO` is looked up.
"""
import ast
import inspect
import pathlib
import re

import gin
import pytest

from sciriff_jax.run import gin_setup, main  # noqa: F401  (registers the configurables, `run` included)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("sciriff_jax", "seqio_tasks")
BINDING = re.compile(r"(?<![\w.-])((?:\w+/)*[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)\s?=(?!=)")
GIN_FLAG = re.compile(r"--gin\.([A-Za-z_]\w*)")
MACRO_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=", re.MULTILINE)
PLACEHOLDERS = {"NAME", "MACRO", "X"}  # usage text: --gin.NAME=VALUE


def message_strings():
    """(file:line, text) of every string literal (f-strings with their fields as {}) in the packages."""
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.JoinedStr):
                    text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value
                else:
                    continue
                yield f"{path.relative_to(REPO_ROOT)}:{node.lineno}", text


def known_macros() -> set[str]:
    return {m for path in (REPO_ROOT / "gin_configs").rglob("*.gin") for m in MACRO_LINE.findall(path.read_text())}


def binding_problem(name: str) -> str | None:
    """Why gin cannot bind `name` (`[scope/]Configurable.arg`), or None when it can."""
    configurable, _, arg = name.rpartition("/")[2].rpartition(".")
    if configurable == "gin":
        return None  # --gin.MACRO, checked against the run files' macros
    match = gin.config._REGISTRY.get_match(configurable)
    if match is None:
        return f"gin has no configurable {configurable!r}"
    if arg not in inspect.signature(match.wrapped).parameters:
        return f"gin's {configurable} has no parameter {arg!r}"
    return None


def unknown_names(strings, macros) -> list[str]:
    found = []
    for where, text in strings:
        for m in BINDING.finditer(text):
            problem = binding_problem(m.group(1))
            if problem:
                found.append(f"{where}: {m.group(1)}= ({problem})")
        for m in GIN_FLAG.finditer(text):
            if m.group(1) not in macros | PLACEHOLDERS:
                found.append(f"{where}: --gin.{m.group(1)} (no run or model file defines it)")
    return found


def test_messages_name_only_bindings_and_macros_that_gin_knows():
    assert unknown_names(message_strings(), known_macros()) == []


@pytest.mark.parametrize("text", ["set finetune.on_nonfinite='skip'", "finetune.microbatches=3",
                                  "--gin.ONNONFINITE='\"skip\"'", "train/DataConfig.packing=True"])
def test_the_check_catches_a_stale_binding(text):
    assert unknown_names([("x.py:1", text)], known_macros())


@pytest.mark.parametrize("text", ["--gin.ON_NONFINITE='\"skip\"'", "TrainConfig.batch_size = %BATCH_SIZE",
                                  "train/DataConfig.pack=False", "see config.json for the shapes"])
def test_the_check_passes_what_gin_accepts(text):
    assert unknown_names([("x.py:1", text)], known_macros()) == []
