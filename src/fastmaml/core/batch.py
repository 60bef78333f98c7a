"""A batch of few-shot tasks (episodes), each with a support and a query set, and how the engine
goes through one (:class:`TaskBatching`).

The engine's input type, so it lives in core: the algorithm must not import the task samplers
above it (``fastmaml.tasks.batch`` re-exports it for existing imports).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

import torch

from fastmaml.errors import ConfigError, DataError

BatchingMode = Literal["vmap", "loop"]


@dataclass(frozen=True)
class TaskBatching:
    """How :class:`~fastmaml.core.maml.MAML` goes through the tasks of a batch.

    Args:
        mode: ``"vmap"`` processes all tasks in one vectorized call (``torch.func.vmap``); ``"loop"``
            runs them one by one (same gradients; for models vmap cannot handle). Config key ``maml.vectorize``.
        chunk_size: tasks per pass (``None``: all at once). :meth:`MAML.meta_backward` runs forward
            and backward one chunk at a time, freeing each chunk's graph; in :meth:`MAML.forward` it is
            vmap's ``chunk_size`` (the whole graph is kept). Conv nets on a CPU run faster with chunks
            whose activations stay in cache. Config key ``maml.chunk_size``.
    """

    mode: BatchingMode = "vmap"
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("vmap", "loop"):
            raise ConfigError(f"unknown task batching mode {self.mode!r} (config key maml.vectorize): use 'vmap' "
                              "(all tasks in one vectorized call) or 'loop' (one task at a time, for models vmap "
                              "cannot handle)")
        size = self.chunk_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1):
            raise ConfigError(f"task batching chunk_size must be a positive number of tasks or None (all at once), "
                              f"got {size!r} (config key maml.chunk_size)")


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
