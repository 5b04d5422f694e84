"""The layering in docs/architecture.md, enforced: who may import whom, and no function over 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "loralab"
ALWAYS = {"errors", "progress", "plotting", "io.atomic", "rundir"}
ALLOWED = {  # package → the loralab packages it may import (besides ALWAYS and itself)
    "errors": set(), "progress": set(), "rundir": set(),
    "adapters": set(),
    "io": {"adapters"},
    "data": {"io"},
    "models": {"io", "data"},
    "subspace": {"adapters"},
    "methods": {"adapters", "io", "models", "subspace"},
    "analysis": {"adapters", "io", "data", "models", "train", "methods", "runs"},
    "compose": {"adapters", "io", "analysis"},
    "train": {"adapters", "io", "data", "models", "methods", "analysis"},
    "runs": {"adapters", "io", "data", "models", "methods", "train"},
    "integrations": {"adapters", "io"},
}


def modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        yield path, parts[0], ast.parse(path.read_text())


def imported(tree: ast.AST) -> set[str]:
    """loralab packages a module imports, as 'adapters', 'io.atomic', ... ('' for the package root);
    imports under ``if TYPE_CHECKING:`` are annotations only and do not count."""
    found = set()
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        for name in names:
            if name == "loralab" or name.startswith("loralab."):
                rest = name.split(".")[1:]
                found.add(".".join(rest[:2]) if rest[:2] == ["io", "atomic"] else (rest[0] if rest else ""))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layers_import_only_what_they_may(package):
    bad = []
    for path, top, tree in modules():
        if top != package:
            continue
        for name in imported(tree) - ALWAYS - {package, ""}:
            if name.split(".")[0] not in ALLOWED[package]:
                bad.append(f"{path.relative_to(SRC)} imports loralab.{name}")
    assert not bad, bad


def test_no_core_package_imports_experiments():
    offenders = [str(p.relative_to(SRC)) for p, top, tree in modules()
                 if top not in ("experiments", "cli") and "experiments" in imported(tree)]
    assert not offenders


def test_no_function_over_sixty_lines():
    long = [f"{p.relative_to(SRC)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p, _, tree in modules() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long


def test_methods_are_chosen_by_the_registry_only():
    """No core module branches on a method's name: `loralab.methods` is the one place that knows them."""
    names = ("full", "lora", "dora", "did", "said")
    offenders = []
    for path, top, tree in modules():
        if top in ("methods", "experiments"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in names
                                                     for c in ast.walk(node)):
                if "method" in ast.unparse(node):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {ast.unparse(node)}")
    assert not offenders, offenders
