"""What an environment family must provide to be meta-learned: tasks and a batched environment.

A *task distribution* draws task parameters (a goal, a target velocity, ...) with a
``torch.Generator`` and builds one *vectorized environment* that steps a whole
``[tasks, trajectories]`` grid of episodes at once as tensors. No Python loop runs over
trajectories: that is what makes sampling fast enough on a CPU.

Adding an environment (e.g. half-cheetah on MuJoCo later) is one file implementing
:class:`TaskDistribution` and :class:`VecEnv`, plus one line in ``envs/__init__.py``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class VecEnv(Protocol):
    """``T`` tasks × ``N`` trajectories stepped together; tensors are ``[T, N, ...]``."""

    def reset(self) -> torch.Tensor:
        """First observations ``[T, N, obs_dim]``."""
        ...

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply ``action [T, N, act_dim]`` (the policy's raw sample; the env clips/scales it).

        Returns next observation ``[T, N, obs_dim]``, reward ``[T, N]``, done ``[T, N]`` (bool).
        After ``done`` an episode's later steps are ignored by the sampler (masked).
        """
        ...


@runtime_checkable
class TaskDistribution(Protocol):
    """A family of tasks: sizes, a sampler of task parameters, and a batched environment."""

    obs_dim: int
    act_dim: int
    task_dim: int  # length of one task's parameter vector (the oracle sees it)
    horizon: int

    def sample_tasks(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Parameters of ``n`` tasks, ``[n, task_dim]`` (drawn only from ``generator``)."""
        ...

    def make_env(self, tasks: torch.Tensor, trajectories: int) -> VecEnv:
        """A batched environment running ``trajectories`` episodes of each task in ``tasks``."""
        ...


class WithTaskInObservation:
    """The oracle of the paper: the same tasks, with the task parameters appended to every observation.

    Works for any distribution whose task parameters are a vector per task, so every
    environment gets its oracle baseline for free.
    """

    def __init__(self, base: TaskDistribution, task_dim: int) -> None:
        self.base = base
        self.obs_dim = base.obs_dim + task_dim
        self.act_dim = base.act_dim
        self.task_dim = task_dim
        self.horizon = base.horizon

    def sample_tasks(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.base.sample_tasks(n, generator)

    def make_env(self, tasks: torch.Tensor, trajectories: int) -> VecEnv:
        return _TaskObsEnv(self.base.make_env(tasks, trajectories), tasks, trajectories)


class _TaskObsEnv:
    def __init__(self, env: VecEnv, tasks: torch.Tensor, trajectories: int) -> None:
        self.env = env
        self.extra = tasks[:, None, :].expand(-1, trajectories, -1)

    def _with_task(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.cat([obs, self.extra.to(obs.dtype)], dim=-1)

    def reset(self) -> torch.Tensor:
        return self._with_task(self.env.reset())

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs, reward, done = self.env.step(action)
        return self._with_task(obs), reward, done
