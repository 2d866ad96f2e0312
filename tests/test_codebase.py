"""Rules of the codebase that a test can hold: no module reaches into another's private names."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "robustweights"


def test_no_module_imports_another_modules_underscore_names():
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        modules = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and node.level == 1 and node.module is None for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:   # from .sweeps import _x
                found += [f"{path.name}: from .{node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in modules and node.attr.startswith("_"):   # sweeps._x after from . import
                found.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert found == []


def _imports(path: Path) -> set[str]:
    """The package's modules a module imports, anywhere in it (function-level imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return out - {path.stem}


def test_no_import_cycle():
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,))) for n in graph.get(start, ()))

    cycles = sorted(m for m in graph if reaches(m, m))
    assert cycles == []


def test_every_module_opens_with_one_line_that_says_what_it_owns():
    for path in PACKAGE.glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and doc.splitlines()[0].strip(), path.name
