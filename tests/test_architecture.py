"""The import graph keeps the layers one-way, and the core imports no optional extra."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "datasetflow"
LAYERS = [
    "errors",
    "data",
    "costs",
    "solvers",
    "distances",
    "functionals",
    "flows",
    "models",
    "viz",
    "cli",
    "experiments",
]


def _layer(module_path: Path) -> str:
    rel = module_path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _internal_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    targets: set[str] = set()
    depth = len(path.relative_to(PACKAGE).parts) - 1
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = (
                path.relative_to(PACKAGE).parts[: depth - (node.level - 1)]
                if node.level > 1
                else path.relative_to(PACKAGE).parts[:depth]
            )
            module = list(parts) + (node.module.split(".") if node.module else [])
            if module:
                targets.add(module[0].removesuffix(".py"))
            else:
                targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("datasetflow."):
            targets.add(node.module.split(".")[1])
    return targets


def test_layers_import_one_way():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        layer = _layer(path)
        if layer not in LAYERS:
            continue
        for target in _internal_imports(path):
            if target in LAYERS and LAYERS.index(target) > LAYERS.index(layer):
                violations.append(f"{path.relative_to(PACKAGE)} ({layer}) imports {target}")
    assert not violations, "upward imports:\n" + "\n".join(violations)


def test_core_import_loads_no_optional_dependency():
    """Importing datasetflow loads no extra beyond what torch, numpy and POT load themselves."""
    code = (
        "import sys, torch, numpy, ot\n"
        "before = set(sys.modules)\n"
        "import datasetflow\n"
        "extras = ('matplotlib', 'click', 'tqdm', 'sklearn', 'rich', 'yaml')\n"
        "print(','.join(m for m in extras if m in sys.modules and m not in before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
