"""2D navigation (Finn et al. 2017, section 5.3): a point robot must reach a goal it cannot see.

* state: position, starting at the origin; observation = position (the goal is unknown,
  so the policy has to learn it from rewards — what the inner gradient step is for);
* task: goal ~ U[-0.5, 0.5]²;
* action: a velocity. As in the original code (rllab's ``normalize`` wrapper around
  ``PointEnvRandGoal``), the policy acts in [-1, 1], scaled to the action box ±0.1, and
  clipped; the policy gradient uses the unclipped sample;
* reward: −(Euclidean distance to the goal) after the move (the paper's text says squared
  distance; the code it was measured with, and this file, use the distance);
* an episode ends after ``horizon`` = 100 steps, or earlier when the robot is within 0.01 of
  the goal in both coordinates (the original ``done``; ``done_radius=0`` turns it off).
"""

from __future__ import annotations

import torch


class Nav2D:
    """The task distribution of 2D navigation."""

    obs_dim = 2
    act_dim = 2
    task_dim = 2

    def __init__(self, horizon: int = 100, goal_low: float = -0.5, goal_high: float = 0.5,
                 max_action: float = 0.1, done_radius: float = 0.01) -> None:
        self.horizon = horizon
        self.goal_low, self.goal_high = goal_low, goal_high
        self.max_action = max_action
        self.done_radius = done_radius

    def sample_tasks(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.goal_low + (self.goal_high - self.goal_low) * torch.rand(n, 2, generator=generator)

    def make_env(self, tasks: torch.Tensor, trajectories: int) -> "Nav2DEnv":
        return Nav2DEnv(self, tasks, trajectories)


class Nav2DEnv:
    """``[T, N]`` point robots, each heading for its task's goal."""

    def __init__(self, spec: Nav2D, goals: torch.Tensor, trajectories: int) -> None:
        self.spec = spec
        self.goals = goals[:, None, :]  # [T, 1, 2], broadcast over trajectories
        self.shape = (goals.shape[0], trajectories)
        self.pos = torch.zeros(*self.shape, 2, dtype=goals.dtype)

    def reset(self) -> torch.Tensor:
        self.pos = torch.zeros(*self.shape, 2, dtype=self.goals.dtype)
        return self.pos.clone()

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.spec.max_action
        self.pos = self.pos + (action * m).clamp(-m, m)
        offset = self.pos - self.goals
        reward = -offset.norm(dim=-1)
        done = (offset.abs() < self.spec.done_radius).all(dim=-1)
        return self.pos.clone(), reward, done
