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
