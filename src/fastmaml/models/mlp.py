"""Fully connected networks of the MAML paper: the sinusoid regressor and the non-convolutional classifier."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


def init_truncated_normal_(module: nn.Module, std: float = 0.01) -> None:
    """Finn et al.'s fully connected initialisation: weights ~ N(0, std) truncated at 2 std, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(m.bias)


class MLP(nn.Module):
    """Plain MLP; the paper's sinusoid regressor is ``MLP(1, (40, 40), 1)`` with ReLU.

    ``init``: ``"torch"`` keeps PyTorch's default (Kaiming-uniform) initialisation, which trains
    faster with few inner steps; ``"paper"`` uses truncated normal std 0.01 as Finn's code.
    Input ``[B, in_features]``; output ``[B, out_features]``.
    """

    def __init__(
        self,
        in_features: int = 1,
        hidden: Sequence[int] = (40, 40),
        out_features: int = 1,
        activation: Callable[[], nn.Module] = nn.ReLU,
        init: str = "torch",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), activation()]
            d = h
        layers.append(nn.Linear(d, out_features))
        self.net = nn.Sequential(*layers)
        if init == "paper":
            init_truncated_normal_(self)
        elif init != "torch":
            raise ValueError(f"unknown init {init!r}; use 'torch' or 'paper'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NonConvNet(nn.Module):
    """The paper's non-convolutional classifier: 256-128-64-64 units, each Linear + BatchNorm1d + ReLU.

    Batch norm uses batch statistics only (``track_running_stats=False``), as MAML does.
    Inputs of any shape ``[B, ...]`` are flattened to ``[B, in_features]`` (e.g. 784 for 28x28
    Omniglot). Weights use the paper's truncated normal (std 0.01) unless ``init="torch"``.
    """

    def __init__(
        self,
        in_features: int,
        n_way: int,
        hidden: Sequence[int] = (256, 128, 64, 64),
        init: str = "paper",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.BatchNorm1d(h, track_running_stats=False), nn.ReLU()]
            d = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(d, n_way)
        self.in_features = in_features
        if init == "paper":
            init_truncated_normal_(self)
        elif init != "torch":
            raise ValueError(f"unknown init {init!r}; use 'torch' or 'paper'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.flatten(1)))
