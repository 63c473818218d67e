"""Measured properties of the code itself: short functions, one home for the backend-specific code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("robust", "attacks", "models")
LONGEST = 80


def _functions():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(ROOT), node.name, node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_80_lines():
    long = [f"{path}:{name} ({lines} lines)" for path, name, lines in _functions() if lines > LONGEST]
    assert not long, f"functions over {LONGEST} lines: {', '.join(long)}"


def test_tensorflow_is_imported_only_by_its_backend_module():
    allowed = {Path("robust/backend/tensorflow.py")}
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "tensorflow" or n.startswith("tensorflow.") for n in names):
                    found.append(path.relative_to(ROOT))
    assert set(found) <= allowed, f"TensorFlow imported outside the backend seam: {sorted(set(found) - allowed)}"


def _module_name(path: Path) -> str:
    """``robust/study.py`` -> ``robust.study``; ``attacks/pgd.py`` -> ``robust.attacks.pgd`` (as installed)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("attacks", "models"):
        parts = ["robust"] + parts
    return ".".join(p for p in parts if p != "__init__")


def _import_graph() -> dict[str, set[str]]:
    """Each module's imports of other robust modules, function-level imports included."""
    paths = {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}
    graph = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("robust"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("robust")}
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def test_no_import_cycle_outside_the_cli_registration():
    """Modules depend one way (issue 21: training and adversarial imported each other). The one allowed
    cycle is click's: robust.cli imports its command modules, which register on its `main` group."""
    graph = _import_graph()
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(path)
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    outside = [" -> ".join(c + [c[0]]) for c in cycles if not all(m.startswith("robust.cli") for m in c)]
    assert not outside, "import cycles: " + "; ".join(sorted(outside)[:5])
