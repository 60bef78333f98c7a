"""What every ``fastmaml`` command line shares: ``--preset``, ``key=value`` overrides, ``--device``, ``--data-root``.

Each experiment (sinusoid, fewshot, ids, rl) registers its subcommands with :func:`add_common`
and turns the parsed arguments into config overrides with :func:`config_overrides`, so the
flags mean the same everywhere.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from fastmaml.errors import ConfigError


def add_common(p: argparse.ArgumentParser, default_preset: str | None, presets: Sequence[str] = (), *,
               data_root: bool = False, device: bool = True, precision: str | None = None) -> None:
    """``--preset``, positional ``key=value`` overrides, and optionally ``--device``, ``--data-root`` and
    ``--precision`` (``precision``: the config key it sets, ``train.precision`` or ``eval.precision``).

    ``presets``: the names the help lists, normally :func:`preset_names` of the experiment's folder.
    """
    names = ", ".join(presets)
    p.add_argument("--preset", default=default_preset,
                   help=f"preset name{f' ({names})' if names else ''} or a YAML file (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.iterations=1000")
    if device:
        p.add_argument("--device", default=None, help="cpu or cuda (overrides train.device)")
    if data_root:
        p.add_argument("--data-root", default=None, help="folder holding the data set(s) (see README, Data)")
    if precision:
        choices = ["auto", "fp32", "bf16"] + (["trained"] if precision.startswith("eval.") else [])
        p.add_argument("--precision", default=None, choices=choices,
                       help=f"matmuls and convolutions in bf16 or fp32; auto: bf16 where it pays (CPU with AMX, "
                            f"CUDA with bf16){'; trained: as the run trained' if 'trained' in choices else ''} "
                            f"(overrides {precision})")
        p.set_defaults(precision_key=precision)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, but ``key=value`` overrides may come anywhere among the options.

    argparse fills the ``overrides`` positional (``nargs='*'``) from the first run of positional
    words only, so ``--preset X --out DIR a=1`` or ``a=1 --out DIR b=2`` left ``a=1`` / ``b=2``
    "unrecognized". Those words are collected here and appended in command-line order (a later
    override of the same key still wins). ``parse_intermixed_args`` cannot do this: it refuses
    parsers with subcommands.
    """
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    return args


def config_overrides(args: argparse.Namespace, data_root_key: str | None = None) -> list[str]:
    """The ``key=value`` overrides plus those the shared flags stand for (device, data root)."""
    out = list(getattr(args, "overrides", []) or [])
    if getattr(args, "device", None):
        out.append(f"train.device={args.device}")
    if data_root_key and getattr(args, "data_root", None):
        out.append(f"{data_root_key}={args.data_root}")
    if getattr(args, "precision", None):
        out.append(f"{args.precision_key}={args.precision}")
    return out


def preset_names(folder: Path, prefix: str) -> list[str]:
    """The presets in ``folder`` by name, sorted: ``<prefix>_<name>.yaml`` -> ``name``."""
    return sorted(f.stem[len(prefix) + 1:] for f in folder.glob(f"{prefix}_*.yaml"))


def preset_path(name: str | Path | None, folder: Path, prefix: str, label: str = "") -> Path | None:
    """A preset by name (``paper`` -> ``folder/<prefix>_paper.yaml``) or by YAML path; ConfigError naming the choices."""
    if name is None:
        return None
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"preset file {p} not found")
        return p
    candidate = folder / f"{prefix}_{name}.yaml"
    if not candidate.is_file():
        known = preset_names(folder, prefix)
        raise ConfigError(f"unknown {label or prefix} preset {str(name)!r}; choose from {known} or give a YAML file path")
    return candidate


def command_line() -> str:
    """The command as typed, for run records and reports."""
    return "fastmaml " + " ".join(shlex.quote(a) for a in sys.argv[1:])
