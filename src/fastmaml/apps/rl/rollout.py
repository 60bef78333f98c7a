"""Sampling: every task × trajectory of a meta-batch stepped together as tensors.

The only Python loop is over time (``horizon`` steps); each step is one policy call on
a ``[T, N, obs_dim]`` tensor — with one shared parameter set (before adaptation) or one
set per task (after it, through ``vmap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from fastmaml.apps.rl.envs.base import TaskDistribution
from fastmaml.apps.rl.policy import split

Params = dict[str, torch.Tensor]
Actor = Callable[[torch.Tensor], torch.Tensor]  # obs [T, N, obs_dim] -> policy output [T, N, 2A]


@dataclass
class Trajectories:
    """``T`` tasks × ``N`` episodes × ``H`` steps. Steps after an episode ended have ``mask`` 0."""

    obs: torch.Tensor  # [T, N, H, obs_dim], observation the action was chosen on
    actions: torch.Tensor  # [T, N, H, A], raw Gaussian samples (before the env clips them)
    rewards: torch.Tensor  # [T, N, H], 0 where masked
    mask: torch.Tensor  # [T, N, H], 1.0 while the episode runs
    dists: torch.Tensor  # [T, N, H, 2A], the sampling policy's [mean, log_std]

    def returns(self) -> torch.Tensor:
        """Undiscounted return of every episode, ``[T, N]``."""
        return self.rewards.sum(-1)


def shared_actor(model: nn.Module, params: Params) -> Actor:
    """One parameter set for every task (the meta-learned initialization)."""
    return lambda obs: functional_call(model, params, (obs,))


def per_task_actor(model: nn.Module, params: Params) -> Actor:
    """Parameters with a leading task dimension (adapted policies), one set per task."""
    return vmap(lambda p, o: functional_call(model, p, (o,)))  # type: ignore[return-value]


@torch.no_grad()
def rollout(tasks_dist: TaskDistribution, tasks: torch.Tensor, trajectories: int, actor: Callable,
            generator: torch.Generator, params: Params | None = None) -> Trajectories:
    """Run ``trajectories`` episodes of each task; actions ~ N(μ, σ²) drawn from ``generator`` only.

    ``actor(obs)`` (or ``actor(params, obs)`` when ``params`` is given, for :func:`per_task_actor`).
    """
    env = tasks_dist.make_env(tasks, trajectories)
    obs = env.reset()
    alive = torch.ones(obs.shape[:2], dtype=obs.dtype)
    rec: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "actions", "rewards", "mask", "dists")}
    for _ in range(tasks_dist.horizon):
        dist = actor(obs) if params is None else actor(params, obs)
        mean, log_std = split(dist)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        action = mean + log_std.exp() * noise
        next_obs, reward, done = env.step(action)
        for key, value in (("obs", obs), ("actions", action), ("rewards", reward * alive), ("mask", alive),
                           ("dists", dist)):
            rec[key].append(value)
        alive = alive * (~done).to(alive.dtype)
        obs = next_obs
    return Trajectories(**{k: torch.stack(v, dim=2) for k, v in rec.items()})
