"""A batch of few-shot tasks (episodes), each with a support and a query set.

The engine's input type, so it lives in core: the algorithm must not import the task samplers
above it (``fastmaml.tasks.batch`` re-exports it for existing imports).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastmaml.errors import DataError


@dataclass
class TaskBatch:
    """``T`` tasks stacked along a leading dimension.

    Attributes:
        support_x: ``[T, S, *features]`` inputs used for the inner-loop adaptation.
        support_y: ``[T, S]`` int64 class labels (or ``[T, S, *targets]`` float targets for regression).
        query_x: ``[T, Q, *features]`` inputs on which the adapted model is evaluated.
        query_y: ``[T, Q]`` labels or ``[T, Q, *targets]`` targets.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of tasks ``T`` (the leading dimension)."""
        return int(self.support_x.shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the support inputs."""
        return self.support_x.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TaskBatch":
        """Return a copy with all four tensors moved to ``device``."""
        return TaskBatch(
            self.support_x.to(device, non_blocking=non_blocking),
            self.support_y.to(device, non_blocking=non_blocking),
            self.query_x.to(device, non_blocking=non_blocking),
            self.query_y.to(device, non_blocking=non_blocking),
        )

    def tasks(self, start: int, stop: int) -> "TaskBatch":
        """Tasks ``start`` to ``stop - 1`` as a batch (views, no copy)."""
        s = slice(start, stop)
        return TaskBatch(self.support_x[s], self.support_y[s], self.query_x[s], self.query_y[s])

    def task(self, i: int) -> "TaskBatch":
        """The ``i``-th task as a batch of one (keeps the leading dim)."""
        return self.tasks(i, i + 1)

    def validate(self) -> "TaskBatch":
        """Check shapes are consistent; raise :class:`DataError` naming the problem. Returns ``self``."""
        names = ("support_x", "support_y", "query_x", "query_y")
        tensors = (self.support_x, self.support_y, self.query_x, self.query_y)
        for name, t in zip(names, tensors):
            if not isinstance(t, torch.Tensor):
                raise DataError(f"TaskBatch.{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() < 2:
                raise DataError(
                    f"TaskBatch.{name} has shape {tuple(t.shape)}; expected a leading task dim and an "
                    "example dim, e.g. [T, N*K, ...]. Add a task dim with .unsqueeze(0) for a single task."
                )
        leading = {name: int(t.shape[0]) for name, t in zip(names, tensors)}
        if len(set(leading.values())) != 1:
            raise DataError(f"TaskBatch tensors disagree on the number of tasks (leading dim): {leading}")
        if self.support_x.shape[1] == 0:
            raise DataError("TaskBatch has an empty support set (0 examples per task); use K >= 1 shots")
        if self.support_x.shape[1] != self.support_y.shape[1]:
            raise DataError(
                f"support_x has {self.support_x.shape[1]} examples per task but support_y has "
                f"{self.support_y.shape[1]} labels"
            )
        if self.query_x.shape[1] != self.query_y.shape[1]:
            raise DataError(
                f"query_x has {self.query_x.shape[1]} examples per task but query_y has "
                f"{self.query_y.shape[1]} labels"
            )
        if self.support_x.shape[2:] != self.query_x.shape[2:]:
            raise DataError(
                f"support and query inputs have different feature shapes: {tuple(self.support_x.shape[2:])} "
                f"vs {tuple(self.query_x.shape[2:])}"
            )
        if self.support_y.shape[2:] != self.query_y.shape[2:]:
            raise DataError(
                f"support and query targets have different shapes: {tuple(self.support_y.shape[2:])} "
                f"vs {tuple(self.query_y.shape[2:])}"
            )
        return self
