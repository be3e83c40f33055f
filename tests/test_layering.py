"""The import order of DESIGN.md ("Import order"), checked on the source (ast, nothing imported).

Bottom to top; a module imports only from its own floor or below, and never inside a function or
method (a function-level import of an advtrain module is how a cycle hides). Lazy imports of heavy
third-party packages (matplotlib, faiss, lightning callbacks) inside functions stay allowed.

Beyond DESIGN.md's list: ``autoload`` (imports nothing of advtrain) sits on the first floor
with ``registry``; ``cli`` (the command lines and their shared plumbing), ``zoo`` (``python -m advtrain.zoo``) and
the repo-root ``callbacks/`` (installed as ``advtrain.callbacks``) on the top floor; every ``__main__``
module is a command line, top floor wherever it sits, and no module imports one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "advtrain"
#: the repo-root callbacks/ folder installs as ``advtrain.callbacks`` (pyproject.toml)
CALLBACKS = REPO / "callbacks"

#: DESIGN.md's floors, bottom (1) to top (7), by the first name under ``advtrain``
FLOORS: dict[str, int] = {
    "ops": 1, "nn": 1, "io": 1, "registry": 1, "distributed": 1, "autoload": 1,
    "models": 2, "data": 2, "smoothing": 2,
    "featspace": 3,
    "attacks": 4,
    "defenses": 5,
    "training": 6, "evaluation": 6,
    "callbacks": 7, "cli": 7, "zoo": 7,
}
#: entry points (``python -m ...``) are command lines, the top floor, wherever they sit; nothing imports them
ENTRY = 7


def module_name(path: Path) -> str:
    if path.is_relative_to(CALLBACKS):
        parts = ["advtrain", *path.relative_to(REPO).with_suffix("").parts]
    else:
        parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor(module: str) -> int:
    parts = module.split(".")
    if parts[-1] == "__main__":
        return ENTRY
    if len(parts) == 1:  # advtrain/__init__.py
        return 0
    if parts[1] not in FLOORS:
        raise AssertionError(f"{module}: advtrain.{parts[1]} has no floor in tests/test_layering.py "
                             "(add it, and to DESIGN.md's import order)")
    return FLOORS[parts[1]]


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported advtrain module, line, inside a function) for every import statement of ``path``."""
    module = module_name(path)
    return imports_in(path.read_text(), module if path.name == "__init__.py" else module.rpartition(".")[0])


def imports_in(source: str, package: str) -> list[tuple[str, int, bool]]:
    """The advtrain imports of ``source``, a module of ``package`` (relative imports resolve against it)."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - child.level + 1] + ([base] if base else []))
                targets = [base]
                if child.module is None or base == "advtrain":  # ``from . import x``: x may be a module
                    targets = [f"{base}.{a.name}" for a in child.names]
                found.extend((t, child.lineno, in_function) for t in targets)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return [(t, line, f) for t, line, f in found if t == "advtrain" or t.startswith("advtrain.")]


MODULES = sorted(ROOT.rglob("*.py")) + sorted(CALLBACKS.rglob("*.py"))


def test_every_package_has_a_floor():
    for path in MODULES:
        floor(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_order(path):
    here = module_name(path)
    mine = floor(here)
    wrong = []
    for target, line, in_function in imports(path):
        if in_function:
            wrong.append(f"line {line}: {target} imported inside a function (import it at module level)")
        if target.split(".")[-1] == "__main__":
            wrong.append(f"line {line}: {target} is a command line; nothing imports it")
        elif floor(target) > mine:
            wrong.append(f"line {line}: {target} (floor {floor(target)}) above {here} (floor {mine})")
    assert not wrong, f"{here}:\n  " + "\n  ".join(wrong)


def test_the_checker_sees_violations():
    """Relative imports resolve and function-level ones are found (a checker that finds nothing
    passes everything)."""
    src = "from ..attacks import ATTACKS\nimport torch\n\ndef f():\n    from ..ops import norms\n    import faiss\n"
    assert imports_in(src, "advtrain.featspace") == [("advtrain.attacks", 1, False), ("advtrain.ops", 5, True)]
    assert floor("advtrain.attacks") > floor("advtrain.featspace")
