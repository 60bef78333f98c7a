"""Where the time of one MAML-RL meta-iteration goes: sampling, inner step, TRPO (gradient, KL graph, CG/HVP), line search.

    python benchmarks/bench_rl.py                         # the nav2d preset: 20 tasks × 20 trajectories × 100 steps
    python benchmarks/bench_rl.py --iterations 3 --threads 1 trpo.hvp_tasks=5 pg.trajectories=10
    python benchmarks/bench_rl.py --iterations 2 --threads 1 --compare-ref 426c802   # old vs this tree, one run

Each phase is timed over ``--iterations`` meta-iterations (after one warm-up) and printed in
seconds per iteration and as a share of the total.

``--compare-ref REV``: the same benchmark on the code of commit ``REV`` (``git archive`` of its
``src/`` into a temporary directory) and on this tree's, each in its own process (two versions of
``fastmaml`` cannot share one), each with its own preset file (today's code with today's settings against the
old code with the old ones), alternating for ``--rounds`` rounds so that both see the same load;
prints both seconds per meta-iteration (median over rounds), their ratio, and how far the two runs'
returns and final parameters (same seeds) are apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_phases(args: argparse.Namespace) -> dict:
    """The benchmark itself (on whichever ``fastmaml`` is importable): phase seconds, returns, final θ."""
    from fastmaml.apps.rl import experiment as E
    from fastmaml.apps.rl.config import RLConfig, validate
    from fastmaml.apps.rl.rollout import per_task_actor, rollout, shared_actor
    from fastmaml.apps.rl.sampler import RLBatch, adapt_tasks, detached, process
    from fastmaml.apps.rl.trpo import TRPOStep
    from fastmaml.config import load_config
    from fastmaml.train.loop import iteration_generator
    from fastmaml.train.memory import keep_freed_memory

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(getattr(torch, args.dtype))  # goals, policy and so every rollout tensor
    keep_freed_memory()
    # The preset of the code being timed: with --compare-ref, the old side runs the old commit's preset as it was.
    presets = Path(E.__file__).resolve().parent / "presets"
    cfg = validate(load_config(RLConfig, presets / f"rl_{args.preset}.yaml", args.overrides))
    learner = E.build_learner(cfg)
    dist = E.task_distribution(cfg)
    trpo = TRPOStep(learner, cfg.trpo)
    if learner.inner_steps != 1:
        raise SystemExit("bench_rl.py times the paper's 1-step meta-iteration phase by phase; use maml.inner_steps=1")
    times: dict[str, float] = {}
    returns: list[list[float]] = []

    def tick(name: str, since: float) -> float:
        now = time.perf_counter()
        times[name] = times.get(name, 0.0) + now - since
        return now

    for it in range(args.iterations + 1):
        if it == 1:  # the first iteration warms up allocations; not counted
            times.clear()
            trpo.timings.clear()
        g = iteration_generator(cfg.train.seed, it)
        t = time.perf_counter()
        tasks = dist.sample_tasks(cfg.train.meta_batch_size, g)
        params = detached(learner)
        pre = rollout(dist, tasks, cfg.pg.trajectories, shared_actor(learner.model, params), g)
        t = tick("sample: rollouts before adaptation", t)
        sx, sy = process(pre, cfg.pg)
        t = tick("sample: baseline + advantages", t)
        adapted = adapt_tasks(learner, params, sx, sy)
        t = tick("inner step (engine, vmapped)", t)
        post = rollout(dist, tasks, cfg.pg.trajectories, per_task_actor(learner.model, adapted), g, adapted)
        t = tick("sample: rollouts after adaptation", t)
        qx, qy = process(post, cfg.pg)
        t = tick("sample: baseline + advantages", t)
        batch = RLBatch(sx.unsqueeze(1), sy.unsqueeze(1), qx, qy, pre.returns().mean(1), post.returns().mean(1))
        trpo(batch, it)
        returns.append([float(pre.returns().mean()), float(post.returns().mean())])
    names = {"gradient": "TRPO: surrogate + KL through inner step (forward, gradient)",
             "kl_graph": "TRPO: KL curvature graph (and gradient)",
             "cg_hvp": f"TRPO: CG ({cfg.trpo.cg_iters} iterations) + HVPs",
             "line_search": "TRPO: line search"}
    times.update({names.get(k, k): v for k, v in trpo.timings.items()})
    rows = cfg.train.meta_batch_size * cfg.pg.trajectories * cfg.env.horizon
    header = (f"MAML-RL {cfg.env.name}: {cfg.train.meta_batch_size} tasks × {cfg.pg.trajectories} trajectories × "
              f"{cfg.env.horizon} steps ({rows} steps per rollout set), policy {cfg.policy.hidden} "
              f"{cfg.policy.activation}, hvp_tasks={cfg.trpo.hvp_tasks}, {args.dtype}, "
              f"{torch.get_num_threads()} thread(s), "
              f"mean of {args.iterations} iterations")
    theta = [float(x) for p in learner.params().values() for x in p.detach().reshape(-1)]
    return {"header": header, "phases": times, "returns": returns, "theta": theta}


def print_phases(result: dict, iterations: int) -> None:
    phases = result["phases"]
    total = sum(phases.values())
    print(result["header"])
    for name, sec in phases.items():
        print(f"  {name:<62s} {sec / iterations:7.3f} s  {100 * sec / total:5.1f}%")
    print(f"  {'total per meta-iteration':<62s} {total / iterations:7.3f} s")


def compare(args: argparse.Namespace, passthrough: list[str]) -> None:
    """Old (``args.compare_ref``) vs this tree, alternating processes; seconds per iteration and their ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.compare_ref, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        sources = {"old": Path(tmp) / "src", "new": ROOT / "src"}
        per_it: dict[str, list[float]] = {"old": [], "new": []}
        results: dict[str, dict] = {}
        for r in range(args.rounds):
            for label, src in sources.items():
                out = Path(tmp) / f"{label}.json"
                env = {**os.environ, "PYTHONPATH": str(src)}
                subprocess.run([sys.executable, __file__, *passthrough, "--json-out", str(out)], env=env, check=True)
                results[label] = json.loads(out.read_text())
                per_it[label].append(sum(results[label]["phases"].values()) / args.iterations)
                print(f"round {r + 1}/{args.rounds} {label} ({args.compare_ref if label == 'old' else 'this tree'}): "
                      f"{per_it[label][-1]:.3f} s/it", flush=True)
    old, new = statistics.median(per_it["old"]), statistics.median(per_it["new"])
    print(results["new"]["header"].replace(f"mean of {args.iterations}", f"{args.rounds} rounds × {args.iterations}"))
    print(f"  old ({args.compare_ref}): {old:.3f} s/it   new: {new:.3f} s/it   speedup {old / new:.2f}x")
    ret_old, ret_new = torch.tensor(results["old"]["returns"]), torch.tensor(results["new"]["returns"])
    th_old, th_new = torch.tensor(results["old"]["theta"]), torch.tensor(results["new"]["theta"])
    print(f"  same seeds: max |Δ mean return| {float((ret_old - ret_new).abs().max()):.2e} over "
          f"{ret_old.numel()} pre/post returns (|return| ~{float(ret_old.abs().mean()):.1f}); final θ max |Δ| "
          f"{float((th_old - th_new).abs().max()):.2e} (max |θ| {float(th_old.abs().max()):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="nav2d")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="float64: old and new should then agree to ~1e-9 (float32: CG amplifies rounding)")
    ap.add_argument("--compare-ref", metavar="REV", help="also time the code of git commit REV, alternating")
    ap.add_argument("--rounds", type=int, default=3, help="with --compare-ref: alternating runs of each")
    ap.add_argument("--json-out", help=argparse.SUPPRESS)  # a --compare-ref child's result
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.compare_ref:
        compare(args, ["--preset", args.preset, "--iterations", str(args.iterations), "--threads",
                       str(args.threads), "--dtype", args.dtype, *args.overrides])
        return
    result = run_phases(args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result))
        return
    print_phases(result, args.iterations)


if __name__ == "__main__":
    main()
