"""The architecture is checked, not hoped for: layer contracts (pyproject.toml) and no import cycles.

import-linter (and its grimp) is a dev dependency (``bash scripts/install.sh --dev``), as
pytest is: without it these tests fail rather than skip, so CI cannot pass unchecked.
"""

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dev_dependency(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"{name} is missing: it is a dev dependency (bash scripts/install.sh --dev, or "
                    "pip install -e .[dev]); the layer contracts cannot be checked without it", pytrace=False)


def test_layer_contracts_are_kept(monkeypatch):
    lint_imports = _dev_dependency("importlinter.cli").lint_imports
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0, "run `lint-imports` to see the broken contract"


def test_layers_are_written_strictly():
    # ':' siblings may import each other either way, which hides an upward import where the two
    # have an order; every line lists independent modules ('|') or one.
    toml = importlib.import_module("tomllib") if sys.version_info >= (3, 11) else _dev_dependency("tomli")
    contracts = toml.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    loose = [(c["name"], layer) for c in contracts if c["type"] == "layers" for layer in c["layers"] if ":" in layer]
    assert not loose, f"layers with ':' siblings: {loose}"


def test_no_import_cycles():
    grimp = _dev_dependency("grimp")
    graph = grimp.build_graph("fastmaml")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} <-> {imported}")
    assert not cycles, "import cycles: " + "; ".join(cycles[:10])
