"""The Gaussian MLP policy of the paper: π(a|s) = N(μθ(s), diag(exp(2·log σ))).

The network outputs the mean and a learned, state-independent log standard deviation (as
rllab's ``GaussianMLPPolicy``, init σ = 1). ``forward`` returns both in one tensor,
``[..., 2·act_dim]`` = [μ, log σ], so that the MAML engine can treat the policy as any other
model: ``loss_fn(model(obs), targets)`` — and log σ is adapted by the inner step too.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn



class MaskReLU(nn.Module):
    """ReLU as ``x · [x > 0]``: nn.ReLU's values and derivatives (of every order, for finite x), computed differently.

    Why: TRPO differentiates the policy's gradient through the inner step again for every CG product,
    and there nn.ReLU's derivative (``threshold_backward``, on vmap's strided gradients) was the largest
    element-wise cost; a multiplication by the saved 0/1 mask made a nav2d TRPO step ~10% faster.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x > 0).to(x.dtype)


ACTIVATIONS = {"relu": MaskReLU, "tanh": nn.Tanh}


class GaussianMLPPolicy(nn.Module):
    """Mean network ``obs -> hidden... -> act_dim`` plus a learned log-std vector.

    Defaults follow the paper (100-100 ReLU); ``activation="tanh"`` with ``hidden=(64, 64)``
    is the common smaller alternative. Weights are Glorot-uniform with zero biases, as rllab.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (100, 100),
                 activation: str = "relu", init_std: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = obs_dim
        for h in hidden:
            layers += [nn.Linear(d, h), ACTIVATIONS[activation]()]
            d = h
        layers.append(nn.Linear(d, act_dim))
        self.mean = nn.Sequential(*layers)
        for m in self.mean:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mean = self.mean(obs)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)


def split(dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., 2A]`` policy output -> (mean, log_std), each ``[..., A]``."""
    a = dist.shape[-1] // 2
    return dist[..., :a], dist[..., a:]


def log_prob(dist: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log N(action; mean, σ²), summed over action dimensions -> ``[...]``."""
    mean, log_std = split(dist)
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std).sum(-1) - 0.5 * action.shape[-1] * math.log(2 * math.pi)


def kl(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """KL(old ‖ new) of two diagonal Gaussians given as policy outputs -> ``[...]``."""
    m0, s0 = split(old)
    m1, s1 = split(new)
    return (s1 - s0 + (torch.exp(2 * s0) + (m0 - m1).pow(2)) / (2 * torch.exp(2 * s1)) - 0.5).sum(-1)
