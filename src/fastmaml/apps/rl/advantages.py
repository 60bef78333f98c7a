"""Advantages for the policy gradient: discounted returns, a linear baseline per task, GAE.

As rllab's ``LinearFeatureBaseline`` (used by the original MAML code): the value of a step
is a ridge regression of its discounted return-to-go on the features
``[obs, obs², t/100, (t/100)², (t/100)³, 1]`` (obs clipped to ±10), fitted separately for
every task on that task's own trajectories. All tasks are fitted at once (batched solve).
"""

from __future__ import annotations

import torch

from fastmaml.apps.rl.rollout import Trajectories


def discount_matrix(horizon: int, factor: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``D[k, t] = factor^(k-t)`` for ``k >= t`` else 0, so ``x @ D`` sums ``x`` forward, discounted."""
    k = torch.arange(horizon, dtype=torch.float64)
    diff = k[:, None] - k[None, :]
    return torch.where(diff >= 0, factor ** diff.clamp_min(0), torch.zeros(())).to(dtype)


def discounted_returns(rewards: torch.Tensor, discount: float) -> torch.Tensor:
    """Return-to-go ``Σ_k γ^k r_{t+k}`` for every step, ``[..., H]``."""
    return rewards @ discount_matrix(rewards.shape[-1], discount, rewards.dtype)


def baseline_features(obs: torch.Tensor) -> torch.Tensor:
    """``[T, N, H, obs_dim]`` -> ``[T, N, H, 2·obs_dim + 4]`` (rllab's linear-baseline features)."""
    o = obs.clamp(-10, 10)
    t = torch.arange(obs.shape[2], dtype=obs.dtype).view(1, 1, -1, 1).expand(*obs.shape[:3], 1) / 100.0
    return torch.cat([o, o * o, t, t * t, t ** 3, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(traj: Trajectories, returns: torch.Tensor, reg: float = 1e-5) -> torch.Tensor:
    """Per-task ridge regression of ``returns [T, N, H]`` on the features; values ``[T, N, H]``.

    Masked steps take no part in the fit. Solved in float64; as rllab, the ridge grows ×10
    (up to 5 times) while the solution is not finite.
    """
    feats = baseline_features(traj.obs).double() * traj.mask.double().unsqueeze(-1)
    x = feats.flatten(1, 2)  # [T, N*H, F]
    y = (returns.double() * traj.mask.double()).flatten(1, 2).unsqueeze(-1)
    gram, rhs = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(x.shape[-1], dtype=torch.float64)
    for attempt in range(5):
        coef = torch.linalg.solve(gram + reg * 10 ** attempt * eye, rhs)
        if torch.isfinite(coef).all():
            break
    return (baseline_features(traj.obs).double() @ coef.unsqueeze(1)).squeeze(-1).to(traj.rewards.dtype)


def advantages(traj: Trajectories, discount: float = 0.99, gae_lambda: float = 1.0, center: bool = True,
               reg: float = 1e-5) -> torch.Tensor:
    """GAE(γ, λ) advantages ``[T, N, H]`` with the per-task linear baseline (0 on masked steps).

    With λ = 1 (the paper) this is return-to-go minus baseline. ``center``: normalise each
    task's advantages to mean 0, std 1 over its valid steps (rllab's ``center_adv``).
    """
    mask = traj.mask
    values = fit_linear_baseline(traj, discounted_returns(traj.rewards, discount), reg) * mask
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = (traj.rewards + discount * next_values - values) * mask
    adv = discounted_returns(deltas, discount * gae_lambda) * mask
    if center:
        n = mask.sum((1, 2), keepdim=True).clamp_min(1)
        mean = adv.sum((1, 2), keepdim=True) / n
        var = ((adv - mean) ** 2 * mask).sum((1, 2), keepdim=True) / n
        adv = (adv - mean) / (var.sqrt() + 1e-8) * mask
    return adv
