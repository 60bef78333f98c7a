"""One meta-batch of MAML-RL: tasks, pre-update rollouts, the inner step, post-update rollouts.

For each of ``T`` tasks: ``N`` episodes with the meta-parameters θ (the support set), one
policy-gradient step by the MAML engine (``learner.adapt_params``, vmapped over tasks)
giving θ'ᵢ, then ``N`` episodes with θ'ᵢ (the query set). Both sets become one
:class:`RLBatch`; the outer step (TRPO) differentiates the query loss through the inner step
again. With 0 inner steps (pretraining, oracle) only the query rollouts are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import vmap

from fastmaml.apps.rl.envs.base import TaskDistribution
from fastmaml.apps.rl.losses import to_task_data
from fastmaml.apps.rl.config import PGConfig
from fastmaml.apps.rl.rollout import Trajectories, per_task_actor, rollout, shared_actor
from fastmaml.core.maml import MAML, Params
from fastmaml.tasks.batch import TaskBatch


@dataclass
class RLBatch(TaskBatch):
    """A :class:`TaskBatch` of rollouts plus the mean episode return of each task before/after adaptation."""

    pre_return: torch.Tensor = None  # type: ignore[assignment]  # [T]
    post_return: torch.Tensor = None  # type: ignore[assignment]  # [T]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "RLBatch":
        b = super().to(device, non_blocking)
        return RLBatch(b.support_x, b.support_y, b.query_x, b.query_y, self.pre_return, self.post_return)


def detached(learner: MAML) -> Params:
    return {k: v.detach() for k, v in learner.params().items()}


def adapt_tasks(learner: MAML, params: Params, x: torch.Tensor, y: torch.Tensor, step: int = 0,
                per_task: bool = False, lr: float | None = None) -> Params:
    """One policy-gradient step per task through the engine's inner step, all tasks in one vmap.

    ``params`` shared by all tasks, or (``per_task``) with a leading task dimension.
    """
    runner = learner if lr is None else learner.with_inner_lr(lr)
    with torch.no_grad():
        fn = lambda p, xs, ys: runner.inner_step(p, xs, ys, step, first_order=True)  # noqa: E731
        return vmap(fn, in_dims=(0 if per_task else None, 0, 0))(params, x, y)


def process(traj: Trajectories, pg: PGConfig) -> tuple[torch.Tensor, torch.Tensor]:
    return to_task_data(traj, pg.discount, pg.gae_lambda, pg.center_advantages, pg.baseline_reg)


def sample_meta_batch(learner: MAML, tasks_dist: TaskDistribution, num_tasks: int, pg: PGConfig,
                      generator: torch.Generator) -> RLBatch:
    """Tasks, rollouts before and after the engine's inner step(s), packed as an :class:`RLBatch`."""
    tasks = tasks_dist.sample_tasks(num_tasks, generator)
    params = detached(learner)
    pre = rollout(tasks_dist, tasks, pg.trajectories, shared_actor(learner.model, params), generator)
    sx, sy = process(pre, pg)
    if learner.inner_steps == 0:
        return RLBatch(sx, sy, sx, sy, pre.returns().mean(1), pre.returns().mean(1))
    adapted = adapt_tasks(learner, params, sx, sy)
    post = rollout(tasks_dist, tasks, pg.trajectories, per_task_actor(learner.model, adapted), generator, adapted)
    qx, qy = process(post, pg)
    return RLBatch(sx, sy, qx, qy, pre.returns().mean(1), post.returns().mean(1))
