"""One meta-batch of MAML-RL: tasks, rollouts before each inner step, the inner steps, post-update rollouts.

For each of ``T`` tasks and each of the ``S`` inner steps: ``N`` episodes with the current
parameters (θ for the first step), then one policy-gradient step by the MAML engine
(``learner.inner_step``, vmapped over tasks). Every step needs episodes of the policy it
starts from — a policy-gradient step cannot reuse another policy's samples — so the support
set of a task is ``S`` sets of rollouts, ``support_x [T, S, N·H, obs]``. After the last step,
``N`` episodes with θ'ᵢ are the query set. The outer step (TRPO) differentiates the query loss
through all ``S`` inner steps again, each on its own rollouts. Whether it credits θ for the rollouts
its policies sampled is the inner loss's business (``pg.inner_loss``: ``reinforce`` does not, as the
original code; ``lvc`` does, through the curvature of the inner step). With 0 inner steps
(pretraining, oracle) only the query rollouts are drawn and the support set is the query set.
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
    step_returns: torch.Tensor | None = None  # [T, S + 1]: after 0..S inner steps

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "RLBatch":
        b = super().to(device, non_blocking)
        return RLBatch(b.support_x, b.support_y, b.query_x, b.query_y, self.pre_return, self.post_return,
                       self.step_returns)


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
    """Tasks, rollouts before every inner step and after the last, packed as an :class:`RLBatch`."""
    tasks = tasks_dist.sample_tasks(num_tasks, generator)
    params = detached(learner)
    actor, per_task = shared_actor(learner.model, params), False
    xs, ys, returns = [], [], []
    for step in range(learner.inner_steps):
        traj = rollout(tasks_dist, tasks, pg.trajectories, actor, generator, params if per_task else None)
        x, y = process(traj, pg)
        xs.append(x)
        ys.append(y)
        returns.append(traj.returns().mean(1))
        params = adapt_tasks(learner, params, x, y, step=step, per_task=per_task)
        actor, per_task = per_task_actor(learner.model, params), True
    post = rollout(tasks_dist, tasks, pg.trajectories, actor, generator, params if per_task else None)
    qx, qy = process(post, pg)
    returns.append(post.returns().mean(1))
    if learner.inner_steps == 0:
        return RLBatch(qx, qy, qx, qy, returns[0], returns[0], torch.stack(returns, 1))
    return RLBatch(torch.stack(xs, 1), torch.stack(ys, 1), qx, qy, returns[0], returns[-1], torch.stack(returns, 1))
