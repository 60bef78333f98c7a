"""fastmaml's command line: ``fastmaml <experiment> <action> [options] [key=value ...]``.

Every experiment reads a dataclass config: defaults, then ``--preset`` (a name from
``fastmaml/experiments/presets`` or a YAML path), then ``key.sub=value`` overrides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from fastmaml.cliargs import add_common, command_line, config_overrides, parse_args, preset_names, preset_path
from fastmaml.errors import FastMAMLError

PRESETS = Path(__file__).parent / "experiments" / "presets"


# ---------------------------------------------------------------- sinusoid
def _sinusoid(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sinusoid", help="the paper's sinusoid regression experiment")
    acts = p.add_subparsers(dest="action", required=True)
    presets = preset_names(PRESETS, "sinusoid")
    t = acts.add_parser("train", help="meta-train one model (MAML, or a baseline with --kind)")
    add_common(t, "paper", presets, precision="train.precision")
    t.add_argument("--run-dir", type=Path, required=True)
    t.add_argument("--kind", choices=["maml", "pretrained", "oracle"], default="maml")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    e = acts.add_parser("evaluate", help="evaluate a trained MAML run on the fixed test tasks")
    add_common(e, "paper", presets, precision="eval.precision")
    e.add_argument("--run-dir", type=Path, required=True)
    r = acts.add_parser("reproduce", help="train MAML per K + baselines, evaluate, write tables and figures")
    add_common(r, "paper", presets, precision="train.precision")
    r.add_argument("--out", type=Path, default=Path("runs/sinusoid"))
    r.add_argument("--resume", action="store_true", help="reuse finished sub-runs and resume unfinished ones")
    p.set_defaults(handler=_run_sinusoid)


def _run_sinusoid(args: argparse.Namespace) -> None:
    import json

    from fastmaml.config import load_config
    from fastmaml.eval.stats import fmt_summary
    from fastmaml.experiments import sinusoid as S

    cfg = load_config(S.SinusoidConfig, preset_path(args.preset, PRESETS, "sinusoid"), config_overrides(args))
    if args.action == "train":
        summary = S.train(cfg, args.run_dir, args.kind, resume=args.resume)
        print(json.dumps(summary))
    elif args.action == "evaluate":
        learner = S.load_learner(cfg, args.run_dir)
        for k in cfg.eval.shots:
            r = S.evaluate(cfg, {"maml": learner}, {}, k)["maml"]
            print(f"K={k}: " + ", ".join(f"{s} steps {fmt_summary(r, s)}" for s in (0, 1, cfg.eval.steps)))
    else:
        report = S.reproduce(cfg, args.out, resume=args.resume, command=command_line())
        print((args.out / "results.md").read_text())
        print(f"results: {args.out / 'results.json'}  ({report['total_seconds']:.0f} s)")


# Each entry adds one top-level subcommand. Applications register theirs here.
REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [_sinusoid]


def _optional_registrars() -> list[Callable]:
    out = []
    for module, attr in (("fastmaml.experiments.fewshot_cli", "register"), ("fastmaml.apps.ids.cli", "register"),
                           ("fastmaml.apps.rl.cli", "register")):
        try:
            mod = __import__(module, fromlist=[attr])
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that part of fastmaml is not present in this build
            raise
        out.append(getattr(mod, attr))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmaml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS + _optional_registrars():
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)  # key=value overrides anywhere among the options
    try:
        args.handler(args)
    except FastMAMLError as e:
        print(f"fastmaml: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastmaml: interrupted; resume with --resume", file=sys.stderr)
        return 130
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Under torchrun: wait for every rank, then leave the group cleanly (gloo aborts otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
