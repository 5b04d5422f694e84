"""The layering in docs/architecture.md, enforced: who may import whom, and no function over 60 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "loralab"
ALWAYS = {"errors", "progress", "plotting", "io.atomic", "rundir", "lazy"}
ALLOWED = {  # package → the loralab packages it may import (besides ALWAYS and itself); docs/architecture.md's table
    "errors": set(), "progress": set(), "plotting": set(), "rundir": set(),
    "adapters": set(),
    "io": {"adapters"},
    "data": set(),
    "models": {"data"},
    "subspace": {"adapters"},
    "methods": {"adapters", "io", "models", "subspace"},
    "tasks": {"adapters", "data"},
    "analysis": {"adapters", "io", "models", "tasks"},
    "compose": {"adapters", "analysis"},
    "train": {"adapters", "io", "data", "models", "methods", "tasks", "analysis"},
    "runs": {"adapters", "io", "data", "models", "methods", "tasks", "train"},
    "commands": {"adapters", "io", "data", "models", "methods", "tasks", "analysis", "compose", "train", "runs"},
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
        if isinstance(node, ast.ImportFrom) and node.module == "loralab":  # from loralab import models
            names = [f"loralab.{a.name}" for a in node.names]
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


def test_the_documented_layers_are_the_enforced_ones():
    """docs/architecture.md's table of layers lists, per package, exactly what `ALLOWED` enforces."""
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `([a-z_.]+)/?`[^|]*\|[^|]*\| ([^|]*)\|$", doc, re.M)
    documented = {name: set(re.findall(r"`([a-z_.]+)`", allowed)) for name, allowed in rows}
    layers = {k: v for k, v in ALLOWED.items() if k not in ALWAYS}
    assert {k: v for k, v in documented.items() if k in layers} == layers
    assert set(layers) <= set(documented), sorted(set(layers) - set(documented))


def import_graph() -> dict[str, set[str]]:
    """Module → the loralab modules it imports (a submodule named in `from package import submodule` counts as
    that submodule, not its package; imports inside functions count; TYPE_CHECKING-only imports do not)."""
    names = {}
    for path in SRC.rglob("*.py"):
        parts = ("loralab", *path.relative_to(SRC).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text())
        type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                     and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        deps = set()
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(names)
                deps |= subs | ({node.module} if len(subs) < len(node.names) and node.module in names else set())
        graph[name] = deps - {name}
    return graph


def test_no_import_cycles():
    graph, cycles = import_graph(), []

    def visit(module, path):
        for dep in graph[module]:
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(module)

    done: set = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, cycles[:3]
