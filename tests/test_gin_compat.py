"""The gin internals run/gin_compat.py relies on: pinned to the gin-config version that has them.

(tests/test_main.py covers the include-search patch through parse_gin.)
"""
import importlib.metadata

import gin
import pytest

from sciriff_jax.run import gin_compat


def test_installed_gin_is_the_pinned_version_whose_internals_we_use():
    # gin_compat reads gin.config._CONFIG and patches gin.config._FILE_READERS; a new gin may move them.
    assert importlib.metadata.version("gin-config") == gin_compat.PINNED_GIN_VERSION


def test_defined_macros_lists_every_macro_of_the_parsed_files_with_its_value():
    gin.clear_config()
    try:
        gin.parse_config("A = 1\nB = 'x'\nC = %gin.REQUIRED\n")
        macros = gin_compat.defined_macros()
        assert macros["A"] == 1 and macros["B"] == "x" and gin_compat.is_required(macros["C"])
    finally:
        gin.clear_config()


def test_macro_references_finds_every_macro_a_binding_or_macro_names_and_resolve_follows_them():
    gin.clear_config()
    try:
        gin.parse_config("A = 1\nB = %A\nC = 3\nUNUSED = 4\n"
                         "gin_compat_probe.x = [%B, {'k': (%C,)}]\n")
        refs = gin_compat.macro_references()
        (probe,) = [key for key in refs if key.endswith("gin_compat_probe")]
        assert refs[probe] == {"B", "C"} and refs["B"] == {"A"} and refs["UNUSED"] == set()
        macros = gin_compat.defined_macros()
        assert gin_compat.resolve_macro(macros["B"], macros) == 1 and gin_compat.is_reference(macros["B"])
    finally:
        gin.clear_config()


@gin.configurable
def gin_compat_probe(x=None):
    return x


@pytest.mark.parametrize("name", ["_CONFIG", "_FILE_READERS"])
def test_the_private_names_exist(name):
    assert hasattr(gin.config, name)
