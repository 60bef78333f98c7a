"""The paper's sinusoid regression tasks: y = A·sin(x + φ), A ∈ [0.1, 5], φ ∈ [0, π], x ∈ U[−5, 5]."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastmaml.errors import ConfigError
from fastmaml.core.batch import TaskBatch


@dataclass
class SinusoidTasks:
    """A distribution over sinusoid regression tasks."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def sample_params(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` amplitudes and phases, each ``[n]``."""
        amp = _uniform(n, self.amplitude, generator)
        phase = _uniform(n, self.phase, generator)
        return amp, phase

    def sample_x(self, n_tasks: int, n_points: int, generator: torch.Generator) -> torch.Tensor:
        return _uniform((n_tasks, n_points, 1), self.x_range, generator)

    def sample(
        self, batch_size: int, generator: torch.Generator, k_support: int = 10, k_query: int = 10
    ) -> tuple[TaskBatch, torch.Tensor, torch.Tensor]:
        """A batch of tasks with ``k_support`` and ``k_query`` points each, plus (amplitude, phase)."""
        if batch_size < 1 or k_support < 1 or k_query < 1:
            raise ConfigError(f"need batch_size, k_support and k_query >= 1, got {batch_size}, {k_support}, {k_query}")
        amp, phase = self.sample_params(batch_size, generator)
        x = self.sample_x(batch_size, k_support + k_query, generator)
        y = target(x, amp, phase)
        batch = TaskBatch(x[:, :k_support], y[:, :k_support], x[:, k_support:], y[:, k_support:])
        return batch, amp, phase


def target(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """y = A·sin(x + φ) with per-task A, φ broadcast over the points of ``x`` ([T, n, 1])."""
    return amplitude.view(-1, 1, 1) * torch.sin(x + phase.view(-1, 1, 1))


def oracle_inputs(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """The oracle baseline's input: x with the task's true A and φ appended ([T, n, 3])."""
    t, n, _ = x.shape
    extra = torch.stack([amplitude, phase], dim=-1).view(t, 1, 2).expand(t, n, 2)
    return torch.cat([x, extra], dim=-1)


def _uniform(shape, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    lo, hi = bounds
    return torch.rand(shape, generator=generator) * (hi - lo) + lo
