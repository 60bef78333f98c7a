"""Small float64 MAML-RL setups shared by the RL tests."""

from __future__ import annotations

import torch

from fastmaml.apps.rl.config import PGConfig
from fastmaml.apps.rl.envs.nav2d import Nav2D
from fastmaml.apps.rl.losses import reinforce_loss
from fastmaml.apps.rl.policy import GaussianMLPPolicy
from fastmaml.apps.rl.sampler import sample_meta_batch
from fastmaml.core.maml import MAML
from fastmaml.core.step_size import from_config


class Nav2D64(Nav2D):
    """Nav2D with float64 goals (so every rollout tensor is float64)."""

    def sample_tasks(self, n, generator):
        return super().sample_tasks(n, generator).double()


def tiny_learner(hidden=(4,), activation="tanh", inner_lr=0.5, seed=0, inner_steps=1, loss=reinforce_loss,
                 step_size="fixed") -> MAML:
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2, hidden, activation).double()
    return MAML(policy, loss, inner_lr=from_config(step_size, inner_lr), inner_steps=inner_steps)


def tiny_batch(learner: MAML, tasks: int = 3, trajectories: int = 4, horizon: int = 12, seed: int = 0):
    pg = PGConfig(trajectories=trajectories)
    return sample_meta_batch(learner, Nav2D64(horizon=horizon), tasks, pg, torch.Generator().manual_seed(seed))
