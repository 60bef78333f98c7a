"""Meta-RL experiments: train (MAML, pretrained, oracle) with the one training loop, evaluate, reproduce.

* ``maml``: MAML-TRPO — ``maml.inner_steps`` policy-gradient inner steps per task (1 in the paper), each on
  fresh rollouts of the policy it starts from; TRPO outer step (:mod:`.trpo`).
* ``pretrained``: the same TRPO machinery with 0 inner steps on the mixed task distribution
  (one policy for all goals), then fine-tuned at test time by the same inner steps.
* ``random``: the untrained policy MAML started from, fine-tuned the same way.
* ``oracle``: 0 inner steps, the goal appended to the observation; not adapted.

Evaluation: ``eval.num_tasks`` test tasks drawn from ``eval.seed``; for 0..``eval.steps``
policy-gradient steps, the mean return of ``eval.trajectories`` episodes per task; mean ±
95% CI over tasks (:func:`fastmaml.eval.stats.summarize`). Each trained policy is evaluated at
its last checkpoint, or with ``train.validate_every`` at the one that scored best on the
validation tasks (``eval.validation_seed``) by the same protocol.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from fastmaml.apps.rl.config import RLConfig, test_later_step_scale, validate
from fastmaml.apps.rl.envs import TaskDistribution, make_tasks
from fastmaml.apps.rl.losses import INNER_LOSSES
from fastmaml.apps.rl.policy import GaussianMLPPolicy
from fastmaml.apps.rl.report import figure_learning_curves, figure_returns, markdown
from fastmaml.apps.rl.rollout import Trajectories, per_task_actor, rollout
from fastmaml.apps.rl.sampler import RLBatch, adapt_tasks, detached, process, sample_meta_batch
from fastmaml.apps.rl.trpo import TRPOStep, learned_step_sizes
from fastmaml.config import to_dict
from fastmaml.core.maml import MAML, Params
from fastmaml.core.step_size import PerLayerStep
from fastmaml.errors import ConfigError
from fastmaml.eval.environment import environment
from fastmaml.eval.stats import summarize
from fastmaml.fileio import atomic_write_text
from fastmaml.train.checkpoint import RunDir, checkpoint_meta, load_run_into
from fastmaml.train.loop import meta_train

KINDS = ("maml", "pretrained", "oracle")  # the trained policies; "random" needs no training


def task_distribution(cfg: RLConfig, oracle: bool = False) -> TaskDistribution:
    return make_tasks(cfg.env.name, oracle=oracle, horizon=cfg.env.horizon)


def build_learner(cfg: RLConfig, kind: str = "maml") -> MAML:
    """The policy inside the MAML engine; ``pretrained``/``oracle`` take 0 inner steps in training (fixed α).

    Initialised from ``train.seed``, so ``random`` is exactly the policy MAML starts from.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; choose from {list(KINDS)}")
    validate(cfg)
    if cfg.train.device != "cpu":
        raise ConfigError("the RL application samples environments on the CPU; use train.device=cpu")
    dist = task_distribution(cfg, oracle=kind == "oracle")
    torch.manual_seed(cfg.train.seed)
    policy = GaussianMLPPolicy(dist.obs_dim, dist.act_dim, cfg.policy.hidden, cfg.policy.activation, cfg.policy.init_std)
    # The baselines take no inner step in training, so they learn no step sizes: a fixed α, whatever MAML's mode.
    maml = cfg.maml if kind == "maml" else dataclasses.replace(cfg.maml, inner_steps=0, step_size="fixed")
    return maml.build(policy, INNER_LOSSES[cfg.pg.inner_loss])


def train_config(cfg: RLConfig, kind: str):
    if kind == "maml":
        return cfg.train
    return dataclasses.replace(cfg.train, iterations=cfg.baseline_train.iterations,
                               max_minutes=cfg.baseline_train.max_minutes)


def train(cfg: RLConfig, run_dir: Path, kind: str = "maml", resume: bool = False) -> dict[str, Any]:
    """Meta-train one policy with TRPO in the project's training loop (checkpoints, resume, metrics.jsonl)."""
    learner = build_learner(cfg, kind)
    dist = task_distribution(cfg, oracle=kind == "oracle")
    trpo = TRPOStep(learner, cfg.trpo)

    def sample(generator: torch.Generator) -> RLBatch:
        return sample_meta_batch(learner, dist, cfg.train.meta_batch_size, cfg.pg, generator)

    def meta_step(batch: RLBatch, iteration: int) -> dict[str, float]:
        out = trpo(batch, iteration)
        steps = {} if batch.step_returns is None or batch.step_returns.shape[1] <= 2 else {
            f"return_step{s}": float(batch.step_returns[:, s].mean()) for s in range(1, batch.step_returns.shape[1] - 1)}
        return {**out, "return_pre": float(batch.pre_return.mean()), "return_post": float(batch.post_return.mean()), **steps}

    def validate(learner: MAML) -> dict[str, float]:
        return validation_scores(cfg, learner, kind)

    return meta_train(learner, sample, train_config(cfg, kind), run_dir, resume=resume, meta_step=meta_step,
                      validate=validate if cfg.train.validate_every else None, select_metric="return",
                      select_mode="max", run_config={"experiment": "rl", "kind": kind, **to_dict(cfg)})


def load_learner(cfg: RLConfig, run_dir: Path, kind: str = "maml") -> MAML:
    """The run's best checkpoint where it validated (``train.validate_every``), else its last."""
    return load_run_into(build_learner(cfg, kind), run_dir, which="best")


def test_tasks(cfg: RLConfig) -> torch.Tensor:
    return task_distribution(cfg).sample_tasks(cfg.eval.num_tasks, torch.Generator().manual_seed(cfg.eval.seed))


def validation_tasks(cfg: RLConfig) -> torch.Tensor:
    generator = torch.Generator().manual_seed(cfg.eval.validation_seed)
    return task_distribution(cfg).sample_tasks(cfg.eval.validation_tasks, generator)


def validation_scores(cfg: RLConfig, learner: MAML, kind: str) -> dict[str, float]:
    """Mean return on the validation goals after 0..``eval.steps`` test-time steps, by the test protocol.

    ``return``, the score that picks the best checkpoint: the mean over steps 1..``eval.steps`` (the
    whole adaptation curve, not one step of it), or step 0 for the oracle, which is not adapted.
    """
    oracle = kind == "oracle"
    steps = 0 if oracle else cfg.eval.steps
    r = adaptation_returns(learner, task_distribution(cfg, oracle=oracle), validation_tasks(cfg), steps,
                           cfg.eval.trajectories, cfg, seed=cfg.eval.validation_seed + 1, kind=kind).mean(0)
    return {"return": float(r[1:].mean() if steps else r[0]), **{f"return_step{s}": float(v) for s, v in enumerate(r)}}


def learned_rates(learner: MAML, kind: str) -> bool:
    """Whether ``kind``'s policy adapts with step sizes it meta-learned (MAML with a learning ``maml.step_size``);
    the baselines learned none and are fine-tuned with the fixed protocol."""
    return kind == "maml" and bool(learned_step_sizes(learner))


def rate_summary(learner: MAML) -> dict[str, Any]:
    """MAML's learned step sizes for the report: per parameter tensor, the rate of each inner step
    (``per_layer_step``) or the mean, min and max of its per-element rates (Meta-SGD); {} for a fixed α."""
    out: dict[str, Any] = {}
    for key, rate in learned_step_sizes(learner).items():
        r = rate.detach().double()
        name = key.replace("__", ".")
        out[name] = r.tolist() if isinstance(learner.inner_lr, PerLayerStep) else {
            "mean": float(r.mean()), "min": float(r.min()), "max": float(r.max())}
    return out


def adapted_rollouts(learner: MAML, dist: TaskDistribution, tasks: torch.Tensor, steps: int, trajectories: int,
                     cfg: RLConfig, seed: int, kind: str = "maml") -> Iterator[tuple[Trajectories, Params]]:
    """The episodes of the policies after 0..``steps`` policy-gradient steps, each with its per-task parameters.

    Every step samples fresh episodes from the current (adapted) policies and takes the
    engine's inner step on them — the same inner step as in meta-training (α, then α·scale;
    or the learned step sizes, see :func:`learned_rates`).
    """
    learned = learned_rates(learner, kind)
    generator = torch.Generator().manual_seed(seed)
    n = tasks.shape[0]
    params = {k: v.expand(n, *v.shape) for k, v in detached(learner).items()}
    actor = per_task_actor(learner.model, params)
    for step in range(steps + 1):
        traj = rollout(dist, tasks, trajectories, actor, generator, params)
        yield traj, params
        if step < steps:
            x, y = process(traj, cfg.pg)
            lr = None if learned else cfg.maml.inner_lr * (1.0 if step == 0 else test_later_step_scale(cfg))
            params = adapt_tasks(learner, params, x, y, step=step, per_task=True, lr=lr)


def adaptation_returns(learner: MAML, dist: TaskDistribution, tasks: torch.Tensor, steps: int, trajectories: int,
                       cfg: RLConfig, seed: int, kind: str = "maml") -> torch.Tensor:
    """Mean episode return per task after 0..``steps`` policy-gradient steps, ``[T, steps + 1]``."""
    rollouts = adapted_rollouts(learner, dist, tasks, steps, trajectories, cfg, seed, kind)
    return torch.stack([traj.returns().mean(1) for traj, _ in rollouts], dim=1)


def evaluate(cfg: RLConfig, learners: dict[str, MAML]) -> dict[str, torch.Tensor]:
    """Per-task returns ``[T, steps + 1]`` of each method on the fixed test tasks (the oracle is not adapted)."""
    tasks = test_tasks(cfg)
    out = {}
    for name, learner in learners.items():
        oracle = name == "oracle"
        dist = task_distribution(cfg, oracle=oracle)
        steps = 0 if oracle else cfg.eval.steps
        r = adaptation_returns(learner, dist, tasks, steps, cfg.eval.trajectories, cfg, seed=cfg.eval.seed + 1,
                               kind=name)
        out[name] = r.expand(-1, cfg.eval.steps + 1) if oracle else r
    return out


def _done_marker(run_dir: Path) -> Path:
    return Path(run_dir) / "done.json"


def reproduce(cfg: RLConfig, out_dir: Path, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Train MAML (+ pretrained, oracle), evaluate all (+ random) on the test tasks, write results and figures.

    Each policy trains in ``out_dir/<kind>``; a finished one (``done.json``: iterations or time budget
    reached) is reused with ``--resume``, an unfinished one continues from its last checkpoint.
    """
    validate(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    kinds = ["maml"] + [k for k in ("pretrained", "oracle") if k in cfg.baselines]
    learners: dict[str, MAML] = {}
    train_seconds: dict[str, float] = {}
    for kind in kinds:
        run_dir = out_dir / kind
        marker = _done_marker(run_dir)
        if not (resume and marker.exists()):
            if marker.exists():
                raise ConfigError(f"{run_dir} holds a finished run; pass --resume to reuse it or choose another --out")
            print(f"[rl] training {kind} -> {run_dir}", file=sys.stderr)
            summary = train(cfg, run_dir, kind, resume=resume)
            atomic_write_text(marker, json.dumps(summary) + "\n")
        train_seconds[kind] = float(json.loads(marker.read_text())["seconds"])
        learners[kind] = load_learner(cfg, run_dir, kind)
    if "random" in cfg.baselines:
        learners["random"] = build_learner(cfg, "maml")
    order = [m for m in ("maml", "pretrained", "random", "oracle") if m in learners]
    per_task = evaluate(cfg, {m: learners[m] for m in order})
    results = {m: summarize(r) for m, r in per_task.items()}

    figure_returns(results, out_dir / "returns_vs_steps.png")
    figure_learning_curves({k: RunDir(out_dir / k).metrics for k in kinds}, out_dir / "learning_curve.png")
    report = {
        "experiment": "rl",
        "env": cfg.env.name,
        "command": command,
        "config": to_dict(cfg),
        "results": results,
        "per_task_returns": {m: r.tolist() for m, r in per_task.items()},
        "test_tasks": test_tasks(cfg).tolist(),
        "train_seconds": train_seconds,
        "iterations": {k: _iterations(out_dir / k) for k in kinds},
        "evaluated_iteration": {k: _iterations(out_dir / k, "best") for k in kinds},
        "learned_inner_lrs": rate_summary(learners["maml"]),
        "total_seconds": time.perf_counter() - t0,
        "environment": environment(),
    }
    atomic_write_text(out_dir / "results.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", markdown(report))
    return report


def _iterations(run_dir: Path, which: str = "last") -> int:
    return int(checkpoint_meta(RunDir(run_dir).checkpoint(which))["iteration"])
