"""Rules of the codebase a test can hold: layout, no private reach-ins, no cycle, short modules."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "robustweights"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
MAX_LINES = 500  # "no module over 500 lines"
MAX_FUNCTION = 60  # lines of code in a function, its docstring not counted


def _name(path: Path) -> str:
    """A module's dotted name inside the package: ``sweeps``, ``reports``, ``paper.claims``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(path: Path, node: ast.ImportFrom) -> list[str]:
    """The package modules one relative ``from ... import`` names (``from . import x``: ``x``)."""
    package = _name(path).split(".") if path.name == "__init__.py" else _name(path).split(".")[:-1]
    base = [p for p in package[: len(package) - (node.level - 1)] if p]
    if node.module:
        return [".".join(base + node.module.split("."))]
    return [".".join(base + [a.name]) for a in node.names]


def _is_module(name: str) -> bool:
    return (PACKAGE / (name.replace(".", "/") + ".py")).exists() or (
        PACKAGE / name.replace(".", "/")
    ).is_dir()


def test_no_module_imports_another_modules_underscore_names():
    found = []
    for path in MODULES:
        tree = ast.parse(path.read_text(), filename=str(path))
        modules = {
            a.asname or a.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level >= 1 and node.module is None
            for a in node.names
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:  # from ..sweeps import _x
                found += [
                    f"{_name(path)}: from {'.' * node.level}{node.module or ''} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.attr.startswith("_")
            ):  # sweeps._x after from . import
                found.append(f"{_name(path)}: {node.value.id}.{node.attr}")
    assert found == []


def _imports(path: Path) -> set[str]:
    """The package's modules a module imports, anywhere in it (function-level imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            for name in _resolve(path, node):
                while name and not _is_module(
                    name
                ):  # from .sources import Key: the module is .sources
                    name = name.rpartition(".")[0]
                out.add(name)
    return out - {_name(path), ""}


def _graph() -> dict[str, set[str]]:
    return {_name(p): _imports(p) for p in MODULES if p.name != "__main__.py" and _name(p)}


def test_the_import_resolver_sees_relative_imports_in_subpackages():
    g = _graph()
    assert {"runs", "errors", "reports.figures", "reports.sources", "reports.document"} <= g[
        "reports"
    ]
    assert {"paper.claims", "sweeps", "paper.rows"} <= g["paper.experiments"]
    assert "training" in g["paper.rows"]
    assert "evaluation" in g["sweeps"] and "draws" in g["transforms"]


def test_no_import_cycle():
    graph = _graph()

    def reaches(start, goal, seen=()):
        return any(
            n == goal or (n not in seen and reaches(n, goal, seen + (n,)))
            for n in graph.get(start, ())
        )

    cycles = sorted(m for m in graph if reaches(m, m))
    assert cycles == []


def test_the_core_never_imports_the_paper_or_the_reports():
    """Layers: the core (transforms .. sweeps) sits below reports/ and paper/; only cli and the lazy
    helpers of the package's __init__ reach up."""
    upward = {
        m: sorted(n for n in deps if n.split(".")[0] in ("paper", "reports"))
        for m, deps in _graph().items()
        if m.split(".")[0] not in ("paper", "reports", "cli")
    }
    assert {m: d for m, d in upward.items() if d} == {}


def test_every_module_opens_with_one_line_that_says_what_it_owns():
    for path in MODULES:
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and doc.splitlines()[0].strip(), path


def test_no_module_is_over_about_500_lines():
    long = {_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_docs_architecture_names_every_module():
    """docs/architecture.md is how a newcomer finds a concept: a module it does not name is lost."""
    text = (PACKAGE.parent.parent / "docs" / "architecture.md").read_text()
    missing = [
        str(p.relative_to(PACKAGE))
        for p in MODULES
        if p.name not in ("__init__.py", "__main__.py") and p.name not in text
    ]
    assert missing == []


def _code_lines(fn: ast.AST) -> int:
    """A function's lines, less its docstring's."""
    n = fn.end_lineno - fn.lineno + 1
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
        if isinstance(first.value.value, str):
            n -= first.end_lineno - first.lineno + 1
    return n


def test_no_function_is_over_about_60_lines():
    long = {}
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := _code_lines(node)) > MAX_FUNCTION:
                    long[f"{_name(path)}.{node.name}"] = n
    assert long == {}


def test_ruff_lints_and_formats_the_package_as_pyproject_says():
    """Lines under 100 characters and one formatting, held by ruff (configured in pyproject.toml)
    rather than by hand: no packed lines, in the package and in its tests, benchmarks, examples and
    scripts."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is in the test extras: pip install -e '.[test]'"
    root = PACKAGE.parent.parent
    paths = ["src", "tests", "benchmarks", "examples", "scripts"]
    for args in (["check", *paths], ["format", "--check", *paths]):
        done = subprocess.run([ruff, *args], cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
