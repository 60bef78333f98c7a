"""The architecture is checked, not hoped for: layer contracts (pyproject.toml) and no import cycles."""

from pathlib import Path

import pytest

importlinter = pytest.importorskip("importlinter", reason="import-linter is a dev dependency (pip install -e .[dev])")
grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parents[1]


def test_layer_contracts_are_kept(monkeypatch):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0, "run `lint-imports` to see the broken contract"


def test_no_import_cycles():
    graph = grimp.build_graph("fastmaml")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} <-> {imported}")
    assert not cycles, "import cycles: " + "; ".join(cycles[:10])
