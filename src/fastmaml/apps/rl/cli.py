"""``fastmaml rl ...``: MAML-TRPO meta-reinforcement learning (paper section 5.3).

Task distributions (``env.name``): 2D navigation to a random goal (``nav2d*`` presets) and the
half-cheetah running at a goal velocity or in a goal direction (``cheetah_vel``, ``cheetah_dir``;
``pip install 'fastmaml[rl]'``). Every preset in ``presets/`` is listed by ``--help``.

    fastmaml rl reproduce --preset nav2d_lvc_lslr --out runs/rl_nav2d [--resume] [key=value ...]
    fastmaml rl reproduce --preset cheetah_vel --out runs/rl_cheetah_vel
    fastmaml rl train --preset nav2d --run-dir runs/rl_maml --kind maml|pretrained|oracle [--resume]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastmaml.cliargs import add_common, command_line, config_overrides, preset_names, preset_path

PRESETS = Path(__file__).parent / "presets"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``rl`` subcommand (called by ``fastmaml.cli``)."""
    presets = preset_names(PRESETS, "rl")
    what = "MAML-TRPO meta-RL (paper section 5.3): 2D navigation, half-cheetah goal velocity and direction"
    p = sub.add_parser("rl", help=what, description=f"{what}. Presets: {', '.join(presets)} (half-cheetah needs "
                                                    "pip install 'fastmaml[rl]').")
    acts = p.add_subparsers(dest="action", required=True)
    r = acts.add_parser("reproduce", help="train MAML + pretrained + oracle, evaluate with random, write report")
    add_common(r, "nav2d", presets)
    r.add_argument("--out", type=Path, default=Path("runs/rl_nav2d"))
    r.add_argument("--resume", action="store_true", help="reuse finished runs in OUT and resume unfinished ones")
    t = acts.add_parser("train", help="meta-train one policy (MAML, or a baseline with --kind)")
    add_common(t, "nav2d", presets)
    t.add_argument("--run-dir", type=Path, required=True)
    t.add_argument("--kind", choices=["maml", "pretrained", "oracle"], default="maml")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> None:
    from fastmaml.apps.rl import experiment as E
    from fastmaml.apps.rl.config import RLConfig, validate
    from fastmaml.config import load_config

    cfg = validate(load_config(RLConfig, preset_path(args.preset, PRESETS, "rl", "rl"), config_overrides(args)))
    if args.action == "train":
        print(json.dumps(E.train(cfg, args.run_dir, args.kind, resume=args.resume)))
    else:
        report = E.reproduce(cfg, args.out, resume=args.resume, command=command_line())
        print((args.out / "results.md").read_text())
        print(f"results: {args.out / 'results.json'}  ({report['total_seconds']:.0f} s)")
