"""Every command's ``--help`` lists the presets its folder holds (read from the folder, never a hand-kept list)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from fastmaml import cli
from fastmaml.cliargs import preset_names

SRC = Path(cli.__file__).parent
CASES = [
    (["sinusoid", "train"], SRC / "experiments" / "presets", "sinusoid"),
    (["sinusoid", "reproduce"], SRC / "experiments" / "presets", "sinusoid"),
    (["fewshot", "train"], SRC / "experiments" / "presets", "fewshot"),
    (["fewshot", "evaluate"], SRC / "experiments" / "presets", "fewshot"),
    (["rl", "reproduce"], SRC / "apps" / "rl" / "presets", "rl"),
    (["rl", "train"], SRC / "apps" / "rl" / "presets", "rl"),
    (["ids", "compare"], SRC / "apps" / "ids" / "presets", "ids"),
    (["ids", "train"], SRC / "apps" / "ids" / "presets", "ids"),
]


def _help(*args: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        cli.main([*args, "--help"])
    assert e.value.code == 0
    return " ".join(buf.getvalue().split())


@pytest.mark.parametrize("path,folder,prefix", CASES, ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_help_lists_every_preset_file(path: list[str], folder: Path, prefix: str) -> None:
    files = sorted(f.stem[len(prefix) + 1:] for f in folder.glob(f"{prefix}_*.yaml"))
    assert files and preset_names(folder, prefix) == files
    listed = re.search(r"preset name \(([^)]*)\)", _help(*path))
    assert listed, f"fastmaml {' '.join(path)} --help lists no presets"
    assert [n.strip() for n in listed.group(1).split(",")] == files


def test_rl_help_names_its_tasks() -> None:
    text = _help("rl")
    assert "2D navigation" in text and "half-cheetah" in text
