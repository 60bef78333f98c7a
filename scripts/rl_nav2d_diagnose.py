"""Where a meta-trained 2D-navigation policy loses return after k policy-gradient steps.

After each test-time step on the reproduction's 40 test goals it prints:
  * the return of the adapted (stochastic) policy, as the results table reports it;
  * the return of the same policy acting with its mean (σ → 0): what better aim alone could not fix;
  * σ in environment units, the share of episodes that reach the goal (which ends them), and the mean
    distance to the goal at the horizon (the policy keeps acting after an episode ended; masked out of the return);
  * how far the episodes explore: the median over episodes of the farthest distance from the start (the
    origin). Before adaptation this is what the first step learns from: goals beyond it reveal a direction
    but not a distance;
and once, the *noise floor*: the oracle policy (goal observed, near-perfect aim) run with the
MAML policy's σ — the best return the MAML policy's exploration noise allows.

    python scripts/rl_nav2d_diagnose.py --preset nav2d_2step_all --run runs/rl_nav2d_2step_all [eval.later_step_scale=0.5]

``--run`` is a ``fastmaml rl reproduce --out`` folder (it needs its maml/ and oracle/ runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from fastmaml.apps.rl import experiment
from fastmaml.apps.rl.cli import PRESETS
from fastmaml.apps.rl.config import RLConfig, validate
from fastmaml.apps.rl.rollout import per_task_actor, rollout
from fastmaml.apps.rl.sampler import detached
from fastmaml.cliargs import preset_path
from fastmaml.config import load_config
from fastmaml.errors import ConfigError
from fastmaml.eval.stats import summarize


def fmt(per_task: torch.Tensor) -> str:
    s = summarize(per_task[:, None])
    return f"{s['mean'][0]:7.2f} ± {s['ci95'][0]:.2f}"


def diagnose(cfg: RLConfig, run: Path) -> dict[str, Any]:
    """Per step: per-task returns (stochastic, as the evaluation; mean action), σ, reached share, distance."""
    if cfg.env.name != "nav2d":
        raise ConfigError(f"this diagnosis is for nav2d, the config's env.name is {cfg.env.name!r}")
    learner = experiment.load_learner(cfg, run / "maml", "maml")
    tasks = experiment.test_tasks(cfg)
    dist = experiment.task_distribution(cfg)
    n = tasks.shape[0]
    greedy_generator = torch.Generator().manual_seed(0)  # its own, so the stochastic rollouts stay the evaluation's
    steps = []
    # The evaluation's own rollouts (same seed), so the stochastic returns are the results table's.
    for traj, params in experiment.adapted_rollouts(learner, dist, tasks, cfg.eval.steps, cfg.eval.trajectories,
                                                    cfg, seed=cfg.eval.seed + 1):
        greedy = {k: (torch.full_like(v, -30.0) if k == "log_std" else v) for k, v in params.items()}
        traj_mean = rollout(dist, tasks, 1, per_task_actor(learner.model, greedy), greedy_generator, greedy)
        steps.append({
            "returns": traj.returns().mean(1),
            "mean_action_returns": traj_mean.returns().mean(1),
            "sigma": float((params["log_std"].exp() * dist.max_action).mean()),
            "reached": float(1.0 - traj.mask[..., -1].mean()),
            "distance_at_horizon": float((traj.obs[:, :, -1] - tasks[:, None]).norm(dim=-1).mean()),
            "explored": float(traj.obs.norm(dim=-1).amax(-1).median()),
        })

    oracle = experiment.load_learner(cfg, run / "oracle", "oracle")
    oracle_params = {k: v.expand(n, *v.shape).clone() for k, v in detached(oracle).items()}
    oracle_params["log_std"][:] = detached(learner)["log_std"]
    generator = torch.Generator().manual_seed(cfg.eval.seed + 1)
    traj = rollout(experiment.task_distribution(cfg, oracle=True), tasks, cfg.eval.trajectories,
                   per_task_actor(oracle.model, oracle_params), generator, oracle_params)
    return {"steps": steps, "noise_floor_returns": traj.returns().mean(1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--preset", required=True, help="the nav2d preset the run was made with")
    ap.add_argument("--run", required=True, type=Path, help="the reproduce output folder")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides the run was made with, and e.g. eval.later_step_scale=0.5")
    args = ap.parse_args(argv)
    cfg = validate(load_config(RLConfig, preset_path(args.preset, PRESETS, "rl", "rl"), args.overrides))
    out = diagnose(cfg, args.run)
    print(f"{args.run} ({args.preset}), {cfg.eval.num_tasks} test goals, {cfg.eval.trajectories} trajectories per step")
    print("step  return (stochastic)  return (mean action)  σ env units  reached goal  distance at horizon  explored")
    for step, row in enumerate(out["steps"]):
        print(f"{step:4d}  {fmt(row['returns']):>19}  {fmt(row['mean_action_returns']):>20}  "
              f"{row['sigma']:11.4f}  {row['reached']:11.0%}  {row['distance_at_horizon']:19.3f}  {row['explored']:8.3f}")
    print(f"noise floor (oracle's aim, MAML's initial σ): {fmt(out['noise_floor_returns'])}")


if __name__ == "__main__":
    main()
