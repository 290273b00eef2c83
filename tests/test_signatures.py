"""No function of the package takes more than 10 parameters: settings travel as the config objects they belong to."""
import ast
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_PARAMETERS = 10


def parameter_counts():
    """(file:line name, parameters without self/cls) of every function in sciriff_jax/ and seqio_tasks/."""
    for package in ("sciriff_jax", "seqio_tasks"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    a = node.args
                    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                    yield f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}", len(names)


def test_no_function_takes_more_than_ten_parameters():
    assert [f"{where} ({n})" for where, n in parameter_counts() if n > MAX_PARAMETERS] == []
