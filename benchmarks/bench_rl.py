"""Where the time of one MAML-RL meta-iteration goes: sampling, inner step, TRPO (gradient, KL graph, CG/HVP), line search.

    python benchmarks/bench_rl.py                         # the nav2d preset: 20 tasks × 20 trajectories × 100 steps
    python benchmarks/bench_rl.py --iterations 3 --threads 1 trpo.hvp_tasks=5 pg.trajectories=10

Each phase is timed over ``--iterations`` meta-iterations (after one warm-up) and printed in
seconds per iteration and as a share of the total.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fastmaml.apps.rl import experiment as E
from fastmaml.apps.rl.config import RLConfig, validate
from fastmaml.apps.rl.rollout import rollout, shared_actor
from fastmaml.apps.rl.sampler import adapt_tasks, detached, process
from fastmaml.apps.rl.trpo import TRPOStep
from fastmaml.config import load_config
from fastmaml.train.loop import iteration_generator
from fastmaml.train.memory import keep_freed_memory

PRESETS = Path(__file__).resolve().parents[1] / "src" / "fastmaml" / "apps" / "rl" / "presets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="nav2d")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    cfg = validate(load_config(RLConfig, PRESETS / f"rl_{args.preset}.yaml", args.overrides))
    learner = E.build_learner(cfg)
    dist = E.task_distribution(cfg)
    trpo = TRPOStep(learner, cfg.trpo)
    if learner.inner_steps != 1:
        raise SystemExit("bench_rl.py times the paper's 1-step meta-iteration phase by phase; use maml.inner_steps=1")
    times: dict[str, float] = {}

    def tick(name: str, since: float) -> float:
        now = time.perf_counter()
        times[name] = times.get(name, 0.0) + now - since
        return now

    from fastmaml.apps.rl.rollout import per_task_actor
    from fastmaml.apps.rl.sampler import RLBatch

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
    n = args.iterations
    phases = dict(times)
    names = {"gradient": "TRPO: surrogate + KL through inner step, surrogate gradient",
             "kl_graph": "TRPO: KL gradient with create_graph",
             "cg_hvp": f"TRPO: CG ({cfg.trpo.cg_iters} iterations) + HVPs",
             "line_search": "TRPO: line search"}
    phases.update({names[k]: v for k, v in trpo.timings.items()})
    total = sum(phases.values())
    rows = cfg.train.meta_batch_size * cfg.pg.trajectories * cfg.env.horizon
    print(f"MAML-RL {cfg.env.name}: {cfg.train.meta_batch_size} tasks × {cfg.pg.trajectories} trajectories × "
          f"{cfg.env.horizon} steps ({rows} steps per rollout set), policy {cfg.policy.hidden} {cfg.policy.activation}, "
          f"hvp_tasks={cfg.trpo.hvp_tasks}, {torch.get_num_threads()} thread(s), mean of {n} iterations")
    for name, sec in phases.items():
        print(f"  {name:<62s} {sec / n:7.3f} s  {100 * sec / total:5.1f}%")
    print(f"  {'total per meta-iteration':<62s} {total / n:7.3f} s")


if __name__ == "__main__":
    main()
