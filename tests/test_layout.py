"""The code's shape, checked: imports at the top of each module and running one way, short functions.

A reader sees the real dependency graph only when project imports sit at the top of a module; a
function-level import hides a cycle. Long functions are where features become hard to change.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("models", "utils")
SCRIPTS = sorted(p.name for p in ROOT.glob("*.py"))
PROJECT_TOP = {"models", "utils", *(Path(s).stem for s in SCRIPTS)}
MAX_LINES = 60
LONG_OK = "# long:"  # a function may be longer when a comment right above it says why


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    for script in SCRIPTS:
        mods[Path(script).stem] = ROOT / script
    return mods


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """Absolute project module names an import statement refers to."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in PROJECT_TOP]
    if node.level:
        base = module.split(".")
        base = base if is_package else base[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] not in PROJECT_TOP:
        return []
    names = [f"{target}.{a.name}" for a in node.names]
    return [target, *names]


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    nested: list[str] = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = [t for t in _resolve(name, node, is_package) if t in mods and t != name]
            if node.col_offset > 0 and targets and not _in_type_checking(tree, node):
                nested.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {targets[0]} inside a function")
            edges[name].update(targets)
    return edges, nested


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for top in tree.body:
        if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test):
            if any(n is node for n in ast.walk(top)):
                return True
    return False


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between modules; a package's __init__ re-exporting its own submodules is not one."""
    def real(a: str, b: str) -> bool:
        return not (b.startswith(a + ".") or a.startswith(b + "."))  # package <-> its own member

    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if not real(m, n):
                continue
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_project_imports_sit_at_the_top_of_each_module():
    _, nested = _graph()
    assert nested == [], "\n".join(nested)


def test_no_two_modules_import_each_other():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_library_functions_are_short():
    long = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                size = node.end_lineno - node.lineno + 1
                said_why = any(LONG_OK in lines[i] for i in range(max(first - 3, 0), first - 1))
                if size > MAX_LINES and not said_why:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} is {size} lines")
    assert long == [], "\n".join(long)


def test_the_checks_can_fail():
    """The cycle finder sees a two-module cycle and ignores a package importing its own member."""
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert _cycles({"pkg": {"pkg.mod"}, "pkg.mod": {"pkg"}}) == []
