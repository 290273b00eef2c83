"""The import graph of `sciriff_jax/` and `seqio_tasks/` (read with `ast`, nothing imported): units depend one way,
no cycle between units, and an import inside a function only where it keeps a heavy or optional package out of
start-up, with its reason beside it."""
import ast
import functools
import io
import pathlib
import sys
import tokenize

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("sciriff_jax", "seqio_tasks")

# The units, bottom -> top: a module may import its own unit or a lower one. `sciriff_jax.<folder>` is a unit; the
# package root (`sciriff_jax/__init__.py`, which lazily exposes load_model, and the `sciriff_jax.main` shim) is the
# facade on top. chat sits below seqio_tasks, which renders with it; decoding sits below data: neither imports the
# other, and eval (above both) uses both.
ORDER = (
    "sciriff_jax.scoring",   # metrics, judge, score, JSON Lines: pure Python, the leaf
    "sciriff_jax.chat",      # the chat format and its rendering: pure Python, what the data layer tokenizes with
    "seqio_tasks",           # the data layer: SeqIO tasks, mixtures, vocabularies
    "sciriff_jax.model",
    "sciriff_jax.parallel",
    "sciriff_jax.decoding",
    "sciriff_jax.data",
    "sciriff_jax.io",
    "sciriff_jax.eval",
    "sciriff_jax.train",
    "sciriff_jax.run",
    "sciriff_jax",           # the facade
)
RANK = {unit: i for i, unit in enumerate(ORDER)}

# What an import inside a function may keep out of start-up: TensorFlow / SeqIO (and the data layer, which imports
# them), Pallas, cuDNN / Transformer-Engine kernels, the torch peers, and packages the core install does not have.
DEFERRABLE = {
    "tensorflow": "TensorFlow", "tensorflow_text": "TensorFlow", "tensorflow_datasets": "TensorFlow",
    "seqio": "SeqIO", "seqio_tasks": "the data layer (TensorFlow, SeqIO)", "apache_beam": "Beam",
    "jax.experimental.pallas": "Pallas kernels", "jax._src.cudnn": "cuDNN kernels",
    "transformer_engine": "Transformer-Engine", "torch": "torch", "transformers": "transformers",
    "tensorboardX": "tensorboardX (imports torch where it is installed: ~1 s)",
    "fsspec": "fsspec (not a core dependency: it comes with gcsfs / s3fs, for URLs)",
    "pyarrow": "pyarrow (~0.4 s at start-up; only .parquet files need it)",
    "qwix": "qwix (optional: the qlora extra; ~2 s at import; only a quantized LoRA base needs it)",
    "matplotlib": "matplotlib (~1 s at start-up; only a run's report draws)",
    "llguidance": "llguidance (optional: the constrained extra; only CONSTRAINED decoding needs it)",
}

# (file, imported module) -> why it stays inside its function although the rule above does not cover it.
_DISPATCH = "the CLI dispatcher loads a subcommand's stack when it runs: `sciriff-jax score` and `--help` need no JAX"
ALLOWED: dict[tuple[str, str], str] = {
    ("sciriff_jax/__init__.py", "sciriff_jax.io.loader"):
        "the facade: `import sciriff_jax` stays light; load_model loads JAX and the model stack on its first call",
    ("sciriff_jax/run/cli.py", "sciriff_jax.run.main"): _DISPATCH,
    ("sciriff_jax/run/cli.py", "sciriff_jax.run.aot"): _DISPATCH,
    ("sciriff_jax/run/cli.py", "sciriff_jax.io.convert"): _DISPATCH,
    ("sciriff_jax/run/cli.py", "sciriff_jax.io.checkpoint"): _DISPATCH,
    ("sciriff_jax/run/cli.py", "sciriff_jax.eval.prefs"): _DISPATCH,
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def unit_of(module: str) -> str | None:
    """The unit a project module belongs to; None for the standard library and third-party packages."""
    parts = module.split(".")
    if parts[0] == "seqio_tasks":
        return "seqio_tasks"
    if parts[0] != "sciriff_jax":
        return None
    if len(parts) > 1 and (ROOT / "sciriff_jax" / parts[1]).is_dir():
        return f"sciriff_jax.{parts[1]}"
    return "sciriff_jax"


class Import:
    """One imported module: where (file:line), whether inside a function, and any comment beside it."""

    def __init__(self, module, target, node, in_function, comment):
        self.module, self.target, self.in_function, self.comment = module, target, in_function, comment
        self.where = f"{FILES[module].relative_to(ROOT)}:{node.lineno}"
        self.file = str(FILES[module].relative_to(ROOT))


def _comments(source: str) -> dict[int, str]:
    return {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def _targets(module: str, node) -> list[str]:
    """The modules an import statement names; `from pkg import sub` names pkg.sub where that is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if FILES[module].name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module
    if unit_of(source) is None:  # third party: `from jax.experimental import pallas` loads jax.experimental.pallas
        return [source] + [f"{source}.{alias.name}" for alias in node.names]
    subs = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in FILES]
    return subs if len(subs) == len(node.names) else [source] + subs


@functools.cache
def imports() -> list[Import]:
    found = []
    for module, path in FILES.items():
        source = path.read_text(encoding="utf-8")
        tree, comments = ast.parse(source), _comments(source)
        lines = source.splitlines()

        def visit(node, in_function):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    comment = next((comments[n] for n in range(child.lineno, child.end_lineno + 1) if n in comments),
                                   None)
                    above = lines[child.lineno - 2].strip() if child.lineno > 1 else ""
                    if comment is None and above.startswith("#"):
                        comment = above
                    found.extend(Import(module, t, child, in_function, comment) for t in _targets(module, child))
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(tree, False)
    return found


def _project_module(target: str) -> str | None:
    """The project module (file) an import of `target` runs, or None outside the project."""
    while target and target not in FILES:
        target = target.rpartition(".")[0]
    return target or None


@functools.cache
def loads(module: str) -> frozenset[str]:
    """Every module that importing `module` loads at start-up (module-level imports, followed through the project,
    and the packages above it)."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in FILES]
        if current in FILES:
            for imp in imports():
                if imp.module == current and not imp.in_function:
                    todo.append(_project_module(imp.target) or imp.target)
    return frozenset(seen)


def _deferred(names) -> set[str]:
    return {key for key in DEFERRABLE for name in names if name == key or name.startswith(key + ".")}


def upward_imports() -> list[str]:
    bad = []
    for imp in imports():
        here, there = unit_of(imp.module), unit_of(imp.target)
        if there is not None and RANK.get(there, len(ORDER)) > RANK.get(here, -1):
            bad.append(f"{imp.where}: {here} imports {imp.target} from the higher unit {there}")
    return bad


def unit_cycles() -> list[str]:
    """Cycles between units (at least one through each knot), each as a chain of file:line edges."""
    edges: dict[str, dict[str, str]] = {}
    for imp in imports():
        here, there = unit_of(imp.module), unit_of(imp.target)
        if there is not None and there != here:
            edges.setdefault(here, {}).setdefault(there, imp.where)
    cycles, done = set(), set()

    def walk(unit, path):
        if unit in path:
            cycle = path[path.index(unit):]
            start = cycle.index(min(cycle))  # one spelling per cycle
            cycles.add(tuple(cycle[start:] + cycle[:start]))
            return
        if unit in done:
            return
        for nxt in edges.get(unit, {}):
            walk(nxt, path + [unit])
        done.add(unit)

    for unit in sorted(edges):
        walk(unit, [])
    return [" -> ".join(f"{a} ({edges[a][b]})" for a, b in zip(c, c[1:] + c[:1])) + f" -> {c[0]}"
            for c in sorted(cycles)]


def needless_deferrals() -> list[str]:
    statements: dict[str, list[Import]] = {}
    for imp in imports():
        if imp.in_function:
            statements.setdefault(imp.where, []).append(imp)
    bad = []
    for where, imps in statements.items():
        first = imps[0]
        if any((imp.file, imp.target) in ALLOWED for imp in imps):
            continue
        kept_out = set().union(*(_deferred(loads(_project_module(imp.target) or imp.target)) for imp in imps))
        kept_out -= _deferred(loads(first.module))
        if not kept_out:
            bad.append(f"{where}: `{first.target}` imported inside a function keeps nothing heavy out of start-up; "
                       "import it at module level")
        elif not first.comment:
            what = sorted({DEFERRABLE[k] for k in kept_out})
            bad.append(f"{where}: `{first.target}` is imported inside a function to keep {', '.join(what)} out of "
                       "start-up: say so in a comment beside it")
    return bad


def test_the_order_names_every_unit_once():
    unplaced = {unit_of(m) for m in FILES} - set(ORDER)
    assert not unplaced, f"units missing from ORDER (place each where its imports allow): {sorted(unplaced)}"
    assert len(set(ORDER)) == len(ORDER)
    assert len(imports()) > 300


def test_no_unit_imports_a_higher_one():
    bad = upward_imports()
    assert not bad, "imports against the layer order (" + " < ".join(ORDER) + "):\n" + "\n".join(bad)


def test_no_import_cycle_between_units():
    cycles = unit_cycles()
    assert not cycles, "import cycles between units:\n" + "\n".join(cycles)


def test_scoring_is_a_leaf():
    bad = [f"{imp.where}: {imp.target}" for imp in imports()
           if unit_of(imp.module) == "sciriff_jax.scoring" and unit_of(imp.target) not in (None, "sciriff_jax.scoring")]
    assert not bad, "sciriff_jax.scoring imports the rest of the project:\n" + "\n".join(bad)


def test_imports_inside_functions_only_keep_heavy_packages_out_of_start_up_and_say_so():
    bad = needless_deferrals()
    assert not bad, "imports inside functions:\n" + "\n".join(bad)


def test_all_layer_rules_at_once():
    """One list of every violation, for the owners of the files it names."""
    bad = upward_imports() + unit_cycles() + needless_deferrals()
    bad.sort(key=lambda line: (line.split(":")[0], int(line.split(":")[1]) if line.split(":")[1].isdigit() else 0))
    assert not bad, f"{len(bad)} import-graph violations:\n" + "\n".join(bad)


def test_the_walk_finds_an_upward_import_a_cycle_and_a_needless_deferral(monkeypatch, tmp_path):
    """The checks catch what they are for, on a made-up tree."""
    for rel, text in {
        "sciriff_jax/__init__.py": "",
        "sciriff_jax/scoring/__init__.py": "",
        "sciriff_jax/scoring/metrics.py": "from seqio_tasks import sample\n",
        "sciriff_jax/model/__init__.py": "",
        "sciriff_jax/model/llama.py": "def f():\n    import json\n    import torch  # torch: a test peer\n",
        "seqio_tasks/__init__.py": "",
        "seqio_tasks/sample.py": "from sciriff_jax.scoring import metrics\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "ROOT", tmp_path)
    files = {module_name(p): p for pkg in PACKAGES for p in sorted((tmp_path / pkg).rglob("*.py"))}
    monkeypatch.setattr(this, "FILES", files)
    imports.cache_clear()
    loads.cache_clear()
    try:
        assert upward_imports() == ["sciriff_jax/scoring/metrics.py:1: sciriff_jax.scoring imports seqio_tasks.sample "
                                    "from the higher unit seqio_tasks"]
        assert unit_cycles() == ["sciriff_jax.scoring (sciriff_jax/scoring/metrics.py:1) -> seqio_tasks "
                                 "(seqio_tasks/sample.py:1) -> sciriff_jax.scoring"]
        assert needless_deferrals() == ["sciriff_jax/model/llama.py:2: `json` imported inside a function keeps nothing "
                                        "heavy out of start-up; import it at module level"]
    finally:
        imports.cache_clear()
        loads.cache_clear()
