"""The packages import in one direction: rewards <- envs <- agents <- recipes.

``rewards`` is pure (numbers in, numbers out), ``envs`` is what a custom agent installs and
must not need a trainer, ``agents`` builds on both. docs/DESIGN.md draws the tree; this
test reads every module's imports (top-level and inside functions) and fails on an
import against the direction, naming the file and line.

Library code keeps its functions short enough to read as their steps: no function or
method of ``envs``, ``agents`` or ``rewards`` is over :data:`MAX_FUNCTION_LINES` lines
(``def`` line to last line, docstring included), each one over named with its length.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAY_NOT_IMPORT = {
    "rewards": ("envs", "agents", "recipes"),
    "envs": ("agents", "recipes"),
    "agents": ("recipes",),
}
LIBRARY_PACKAGES = ("agents", "envs", "rewards")
MAX_FUNCTION_LINES = 60


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(MAY_NOT_IMPORT))
def test_imports_follow_the_package_direction(package):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in MAY_NOT_IMPORT[package]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_design_doc_draws_every_package():
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    tree = design[design.index("## Layout"):].split("```")[1]
    packages = [p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("*/**/__init__.py")
                if not p.parent.relative_to(ROOT).as_posix().startswith((".", "tests", "examples"))]
    missing = [p for p in packages if f"{p.rsplit('/', 1)[-1]}/" not in tree]
    assert not missing, f"docs/DESIGN.md's tree lacks {missing}"


def long_functions(path: Path) -> list[str]:
    """``file:line name: n lines`` for each function or method of ``path`` (nested ones
    included) longer than :data:`MAX_FUNCTION_LINES`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in functions
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


@pytest.mark.parametrize("package", (*LIBRARY_PACKAGES, "recipes", "examples"))
def test_no_function_is_over_the_line_limit(package):
    long = [entry for path in sorted((ROOT / package).rglob("*.py")) for entry in long_functions(path)]
    assert not long, f"over {MAX_FUNCTION_LINES} lines (split into named steps):\n" + "\n".join(long)
