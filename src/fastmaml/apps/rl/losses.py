"""The three losses of MAML-TRPO as ``loss(policy_output, targets)`` functions the MAML engine can call.

Rollouts become a :class:`~fastmaml.tasks.batch.TaskBatch`: inputs are observations
``[T, N·H, obs_dim]`` and targets pack, per step, ``[action (A), advantage, mask,
sampling policy's mean (A), log_std (A)]`` (:func:`pack`). Every loss is a mean over the
valid (unmasked) steps of a task, as the original code's ``reduce_mean`` over its samples.
"""

from __future__ import annotations

import torch

from fastmaml.apps.rl.advantages import advantages
from fastmaml.apps.rl.policy import kl, log_prob
from fastmaml.apps.rl.rollout import Trajectories


def pack(traj: Trajectories, adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs ``[T, N·H, obs_dim]``, targets ``[T, N·H, 3A + 2]``) of a task batch."""
    y = torch.cat([traj.actions, adv.unsqueeze(-1), traj.mask.unsqueeze(-1), traj.dists], dim=-1)
    return traj.obs.flatten(1, 2), y.flatten(1, 2)


def to_task_data(traj: Trajectories, discount: float, gae_lambda: float, center: bool = True,
                 reg: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages (per-task linear baseline) and :func:`pack` in one call."""
    return pack(traj, advantages(traj, discount, gae_lambda, center, reg))


def unpack(y: torch.Tensor, act_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """targets -> (actions, advantages, mask, old policy output [mean, log_std])."""
    a = act_dim
    return y[..., :a], y[..., a], y[..., a + 1], y[..., a + 2:]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def reinforce_loss(dist: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The inner step's loss: −mean log π(a|s)·A. Its gradient is the REINFORCE estimate."""
    actions, adv, mask, _ = unpack(y, dist.shape[-1] // 2)
    return -_masked_mean(log_prob(dist, actions) * adv, mask)


def surrogate_loss(dist: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TRPO's outer loss: −mean π(a|s)/π_old(a|s)·A (its gradient at π = π_old is the policy gradient)."""
    actions, adv, mask, old = unpack(y, dist.shape[-1] // 2)
    ratio = torch.exp(log_prob(dist, actions) - log_prob(old, actions))
    return -_masked_mean(ratio * adv, mask)


def lvc_loss(dist: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The inner step's loss as ProMP's low-variance curvature (LVC) estimator: −mean π(a|s)/π_old(a|s)·A.

    At the sampling policy (π = π_old) its value and gradient are :func:`reinforce_loss`'s, so the
    inner step is the same step; its Hessian is −mean (∇²log π + ∇log π ∇log πᵀ)·A, the extra term
    being how θ's own sampling distribution shapes the inner gradient. ``log π·A`` has no such term,
    so the original MAML-RL meta-gradient gives the pre-update policy no credit for exploring
    (Rothfuss et al., "ProMP", ICLR 2019). Away from π_old it is the importance-weighted gradient.
    """
    return surrogate_loss(dist, y)


INNER_LOSSES = {"reinforce": reinforce_loss, "lvc": lvc_loss}


def mean_kl(dist: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TRPO's constraint: mean KL(π_old(·|s) ‖ π(·|s)) over the sampled states."""
    _, _, mask, old = unpack(y, dist.shape[-1] // 2)
    return _masked_mean(kl(old, dist), mask)
