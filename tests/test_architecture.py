"""The import graph follows the layer order of docs/architecture.md: imports run one way, the sibling layers
do not import each other, no private name crosses a package, and the core imports no optional extra."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "datasetflow"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _read_layers() -> tuple[dict[str, int], dict[str, str]]:
    """``module -> order`` and ``module -> layer`` from the table between the layer markers."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    table = text.split("<!-- layers:start -->")[1].split("<!-- layers:end -->")[0]
    order, layer_of = {}, {}
    for row in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        rank, layer, modules = int(cells[0]), cells[1], re.findall(r"`([a-z_]+)/?`", cells[2])
        for module in modules:
            order[module], layer_of[module] = rank, layer
    return order, layer_of


ORDER, LAYER_OF = _read_layers()


def _module_parts(path: Path) -> list[str]:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path) -> list[tuple[list[str], list[str]]]:
    """``(target module parts, imported names)`` of every import of a datasetflow module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_parts(path)
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "datasetflow":
                target = node.module.split(".")[1:]
            else:
                continue
            names = [alias.name for alias in node.names]
            if not node.module and node.level:  # from . import x: x may be a module
                out.extend((target + [name], []) for name in names)
            else:
                out.append((target, names))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "datasetflow":
                    out.append((parts[1:], []))
    return out


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if _module_parts(p) and _module_parts(p)[0] in ORDER)


def test_every_package_module_has_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    missing = sorted(tops - set(ORDER) - {"__init__", "__main__"})
    assert not missing, f"modules without a layer in docs/architecture.md: {missing}"


def test_layers_import_one_way_and_siblings_stay_apart():
    violations = []
    for path in _sources():
        source = _module_parts(path)[0]
        for target, _ in _imports(path):
            if not target or target[0] not in ORDER or LAYER_OF[target[0]] == LAYER_OF[source]:
                continue
            if ORDER[target[0]] > ORDER[source]:
                violations.append(
                    f"{path.relative_to(PACKAGE)} ({LAYER_OF[source]}) imports the lower layer {target[0]}"
                )
            elif ORDER[target[0]] == ORDER[source]:
                violations.append(f"{path.relative_to(PACKAGE)} ({LAYER_OF[source]}) imports its sibling {target[0]}")
    assert not violations, "layering violations:\n" + "\n".join(violations)


def test_no_private_name_crosses_a_package():
    violations = []
    for path in _sources():
        source = _module_parts(path)[0]
        for target, names in _imports(path):
            if not target or target[0] == source:
                continue
            private = [part for part in target if part.startswith("_")] + [n for n in names if n.startswith("_")]
            if private:
                where = ".".join(target)
                violations.append(f"{path.relative_to(PACKAGE)} imports private {private} from {where}")
    assert not violations, "private names imported across packages:\n" + "\n".join(violations)


def test_the_order_is_written_in_one_place():
    """The package docstring points at docs/architecture.md instead of restating the order."""
    init = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    assert "docs/architecture.md" in init and "->" not in init.split('"""')[1]
    assert ORDER["errors"] == 0 and ORDER["cli"] == max(ORDER.values())
    assert ORDER["models"] == ORDER["viz"], "models and viz are siblings"


def test_core_import_loads_no_optional_dependency():
    """Importing datasetflow loads no extra beyond what torch, numpy and POT load themselves."""
    code = (
        "import sys, torch, numpy, ot\n"
        "before = set(sys.modules)\n"
        "import datasetflow\n"
        "extras = ('matplotlib', 'click', 'tqdm', 'sklearn', 'rich', 'yaml', 'umap', 'geomloss')\n"
        "print(','.join(m for m in extras if m in sys.modules and m not in before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
