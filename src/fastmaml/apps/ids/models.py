"""Small IDS classifiers as plain ``nn.Module``s.

They are written for the MAML engine, which calls ``torch.func.functional_call`` with its own
parameter dicts and may ``vmap`` over tasks: no in-place ops on parameters, no BatchNorm
(running statistics are buffers mutated in forward), no dropout (randomness under vmap).
``nn.GRU`` was checked to work under ``vmap(grad(functional_call(...)))`` on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fastmaml.errors import ConfigError, DataError


def _check(x: torch.Tensor, dims: int, features: int, who: str) -> None:
    if x.dim() != dims or x.shape[-1] != features:
        want = "[B, F]" if dims == 2 else "[B, W, F]"
        raise DataError(f"{who}: expected input {want} with F={features}, got shape {tuple(x.shape)}")


class FrameMLP(nn.Module):
    """MLP on frame-level features [B, F] -> logits [B, n_classes]."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (64, 64), n_classes: int = 2) -> None:
        super().__init__()
        self.in_features = in_features
        layers: list[nn.Module] = []
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, 2, self.in_features, "FrameMLP")
        return self.net(x)


class WindowCNN1d(nn.Module):
    """1-D convolutions over time on windows [B, W, F] -> logits; mean+max pooled over time."""

    def __init__(self, in_features: int, window: int, n_classes: int = 2, channels: Sequence[int] = (32, 32),
                 kernel_size: int = 3) -> None:
        super().__init__()
        if window < kernel_size:
            raise DataError(f"WindowCNN1d: window {window} shorter than kernel_size {kernel_size}")
        self.in_features, self.window = in_features, window
        convs: list[nn.Module] = []
        c = in_features
        for ch in channels:
            convs += [nn.Conv1d(c, ch, kernel_size, padding=kernel_size // 2), nn.ReLU()]
            c = ch
        self.convs = nn.Sequential(*convs)
        self.head = nn.Linear(2 * c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, 3, self.in_features, "WindowCNN1d")
        h = self.convs(x.transpose(1, 2))  # [B, C, W]
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], dim=-1))


class WindowGRU(nn.Module):
    """GRU over the window [B, W, F]; the last hidden state feeds a linear head."""

    def __init__(self, in_features: int, hidden: int = 64, n_classes: int = 2, num_layers: int = 1) -> None:
        super().__init__()
        self.in_features = in_features
        self.gru = nn.GRU(in_features, hidden, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, 3, self.in_features, "WindowGRU")
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def build_model(mc: Any, n_features: int, window: int | None) -> nn.Module:
    """The detector network for samples ``[B, F]`` or ``[B, W, F]`` -> logits ``[B, 2]``.

    ``mc`` is a :class:`~fastmaml.apps.ids.config.ModelConfig` (``name``: ``mlp`` on frames or
    flattened windows, ``cnn`` or ``gru`` on windows; ``hidden``, ``channels``, ``kernel_size``).
    """
    if mc.name == "mlp":
        if window:
            return nn.Sequential(nn.Flatten(), FrameMLP(window * n_features, mc.hidden, 2))
        return FrameMLP(n_features, mc.hidden, 2)
    if mc.name not in ("cnn", "gru"):
        raise ConfigError(f"model.name {mc.name!r} unknown; use mlp, cnn or gru")
    if not window:
        raise ConfigError(f"model.name={mc.name} needs window samples; set features.window (e.g. 16)")
    if mc.name == "cnn":
        return WindowCNN1d(n_features, window, 2, mc.channels, mc.kernel_size)
    return WindowGRU(n_features, mc.hidden[0] if mc.hidden else 64, 2)
