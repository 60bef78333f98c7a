"""README.md's commands exist: every ``fastmaml ...`` (and ``python benchmarks/... | scripts/...``) line of its
bash blocks names a real (sub)command, each ``--flag`` it uses is in that command's ``--help``, and each
``--preset NAME`` is one the help lists."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from fastmaml import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def bash_blocks(text: str) -> list[str]:
    """The bodies of the ```bash fenced blocks."""
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def commands(text: str) -> list[list[str]]:
    """Each command of the bash blocks as tokens (comments dropped, ``a && b`` / ``a; b`` split)."""
    out = []
    for block in bash_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            cmd: list[str] = []
            for t in tokens + ["&&"]:
                if t in ("&&", ";", "||"):
                    if cmd:
                        out.append(cmd)
                    cmd = []
                else:
                    cmd.append(t)
    return out


def fastmaml_args(cmd: list[str]) -> list[str] | None:
    """What follows ``fastmaml`` / ``.venv/bin/fastmaml`` / ``-m fastmaml.cli`` in a command, else None."""
    for i, t in enumerate(cmd):
        if Path(t).name == "fastmaml":
            return cmd[i + 1:]
        if t == "-m" and i + 1 < len(cmd) and cmd[i + 1] == "fastmaml.cli":
            return cmd[i + 2:]
    return None


def script_args(cmd: list[str]) -> tuple[str, list[str]] | None:
    """``(script, args)`` of a ``python benchmarks/x.py ...`` or ``python scripts/x.py ...`` command, else None."""
    for i, t in enumerate(cmd[:-1]):
        if Path(t).name.startswith("python") and re.match(r"(benchmarks|scripts)/[\w-]+\.py$", cmd[i + 1]):
            return cmd[i + 1], cmd[i + 2:]
    return None


def flags(args: list[str]) -> list[str]:
    """``--flag`` tokens (also inside ``[--flag value]``), without ``=value``."""
    out = []
    for a in args:
        a = a.strip("[]")
        if re.match(r"--[a-z]", a):
            out.append(a.split("=", 1)[0])
    return out


def subcommand_path(args: list[str]) -> list[str]:
    """The leading tokens that name (sub)commands; fails on a name the parser does not know."""
    parser: argparse.ArgumentParser = cli.build_parser()
    path: list[str] = []
    for a in args:
        subs = [x for x in parser._actions if isinstance(x, argparse._SubParsersAction)]
        if not subs:
            break
        choices = subs[0].choices
        assert a in choices, f"`fastmaml {' '.join(path + [a])}`: no such command; choose from {sorted(choices)}"
        path.append(a)
        parser = choices[a]
    else:
        subs = [x for x in parser._actions if isinstance(x, argparse._SubParsersAction)]
        assert not subs, f"`fastmaml {' '.join(path)}` needs a subcommand"
    return path


def help_text(run, *args: str) -> str:
    """stdout of ``run(*args, '--help')``, which must exit with status 0."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        run(*args)
    assert e.value.code in (0, None), f"{args} --help exited with {e.value.code}"
    return buf.getvalue()


def check_flags(what: str, used: list[str], text: str) -> None:
    missing = [f for f in used if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, f"README's `{what}` uses {missing}, which its --help does not list"


README_TEXT = README.read_text(encoding="utf-8")
FASTMAML = [a for a in map(fastmaml_args, commands(README_TEXT)) if a is not None]
SCRIPTS = [s for s in map(script_args, commands(README_TEXT)) if s is not None]


def test_readme_has_commands() -> None:
    assert len(FASTMAML) >= 10, "README's bash blocks should show the fastmaml commands"
    assert any(a[:2] == ["sinusoid", "reproduce"] for a in FASTMAML), "the main job is in the README"


@pytest.mark.parametrize("args", FASTMAML, ids=lambda a: " ".join(a)[:60])
def test_readme_fastmaml_command_exists(args: list[str]) -> None:
    path = subcommand_path(args)
    text = help_text(lambda *a: cli.main(list(a)), *path, "--help")
    what = "fastmaml " + " ".join(path)
    check_flags(what, flags(args[len(path):]), text)
    presets = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--preset"]
    if presets:
        listed = re.search(r"preset name \(([^)]*)\)", " ".join(text.split()))
        assert listed, f"`{what} --help` lists no presets"
        names = {n.strip() for n in listed.group(1).split(",")}
        unknown = [p for p in presets if p not in names]
        assert not unknown, f"README's `{what}` uses preset(s) {unknown}; --help lists {sorted(names)}"


@pytest.mark.parametrize("script,args", SCRIPTS, ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_readme_script_command_exists(script: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / script
    assert path.is_file(), f"README runs {script}, which does not exist"
    monkeypatch.setattr(sys, "path", list(sys.path))  # a script may insert its folder

    def run(*argv: str) -> None:
        monkeypatch.setattr(sys, "argv", [str(path), *argv])
        runpy.run_path(str(path), run_name="__main__")

    check_flags(script, flags(args), help_text(run, "--help"))


def test_command_parser_of_this_test() -> None:
    """The parsing above on a sample: comments, ``&&``, ``[--flag]``, ``a|b`` values, quoted arguments."""
    text = ("```bash\n# a comment\nbash x.sh && .venv/bin/fastmaml sinusoid train --kind maml|oracle [--resume]  # note\n"
            "fastmaml ids compare 'source.captures=[{path: a b}]' --out o\npython benchmarks/b.py [--n 3]\n```\n")
    cmds = commands(text)
    assert [fastmaml_args(c) for c in cmds] == [
        None, ["sinusoid", "train", "--kind", "maml|oracle", "[--resume]"],
        ["ids", "compare", "source.captures=[{path: a b}]", "--out", "o"], None]
    assert script_args(cmds[-1]) == ("benchmarks/b.py", ["[--n", "3]"])
    assert flags(["--kind", "maml|oracle", "[--resume]", "--a=1"]) == ["--kind", "--resume", "--a"]
    with pytest.raises(AssertionError, match="no such command"):
        subcommand_path(["sinusoid", "nonexistent"])
