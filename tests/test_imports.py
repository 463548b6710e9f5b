"""The package's import graph: every module imports, the graph of ``recbole_etegrec`` imports has no
circle, and command code (``cli``, ``commands/``) is imported by no library module.

    python -m pytest -q tests/test_imports.py

Edges are read from each module's source with ``ast``: every ``import``/``from ... import`` of a
``recbole_etegrec`` module, at the top and inside functions or classes alike (a lazy import is a
circle too once both functions run), plus the parent packages whose ``__init__`` such an import runs.
Not edges: imports under ``if TYPE_CHECKING:`` (never executed) and under
``if __name__ == "__main__":``: that block runs only when the file is executed as the ``__main__``
module (``python -m recbole_etegrec.<x>``), a module object distinct from the one the package
imports. Such a block must be a thin shim: imports from the command modules and one ``sys.exit``.
"""
import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import recbole_etegrec

PACKAGE = "recbole_etegrec"
COMMAND_MODULES = ("recbole_etegrec.cli", "recbole_etegrec.commands")  # a module or a package prefix


def _modules() -> dict:
    """{module name: source path} of every module and package of recbole_etegrec."""
    names = [PACKAGE] + [m.name for m in pkgutil.walk_packages(recbole_etegrec.__path__, f"{PACKAGE}.")]
    return {name: Path(importlib.util.find_spec(name).origin) for name in names}


MODULES = _modules()


def _is_guard(test: ast.expr, kind: str) -> bool:
    """``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:`` or ``if __name__ == "__main__":``."""
    if kind == "type_checking":
        return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _imported_names(node, module: str, is_package: bool) -> list:
    """Absolute dotted names an Import/ImportFrom node asks for (a ``from X import y`` gives both
    ``X`` and ``X.y``; only names that are modules are kept later)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _edges(module: str, path: Path) -> tuple:
    """(set of recbole_etegrec modules ``module`` imports, list of ``__main__`` blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets, main_blocks = set(), []

    def visit(node):
        if isinstance(node, ast.If) and _is_guard(node.test, "type_checking"):
            return [visit(child) for child in node.orelse]
        if isinstance(node, ast.If) and _is_guard(node.test, "main"):
            main_blocks.append(node)
            return [visit(child) for child in node.orelse]
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in _imported_names(node, module, is_package):
                parts = name.split(".")
                # the module itself and every parent package whose __init__ the import runs
                for i in range(1, len(parts) + 1):
                    target = ".".join(parts[:i])
                    if target in MODULES and target != module and not module.startswith(target + "."):
                        targets.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return targets, main_blocks


GRAPH, MAIN_BLOCKS = {}, {}
for _name, _path in MODULES.items():
    GRAPH[_name], MAIN_BLOCKS[_name] = _edges(_name, _path)


def _is_command(module: str) -> bool:
    return any(module == c or module.startswith(c + ".") for c in COMMAND_MODULES)


def find_cycle(graph: dict):
    """One circle of ``graph`` as a list of modules (first == last), or None."""
    state, stack = {}, []

    def dfs(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_the_package_has_no_import_circle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_reports_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_modules_never_import_command_code():
    """Commands live in the CLI: cli.py and commands/ import the library, never the reverse."""
    wrong = {m: sorted(t for t in targets if _is_command(t))
             for m, targets in GRAPH.items() if not _is_command(m)}
    assert not {m: t for m, t in wrong.items() if t}, wrong
    assert "recbole_etegrec.commands" in MODULES and GRAPH["recbole_etegrec.cli"]


def test_main_blocks_are_thin_shims():
    """A library module's ``python -m`` block only imports a command and exits with it."""
    for module, blocks in MAIN_BLOCKS.items():
        for block in blocks:
            for stmt in block.body:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [stmt.module]
                    assert all(n == "sys" or _is_command(n) for n in names), (module, ast.unparse(stmt))
                else:
                    assert isinstance(stmt, ast.Expr) and "sys.exit(" in ast.unparse(stmt), \
                        (module, ast.unparse(stmt))
