"""Choosing how the engine goes through a meta-batch's tasks by timing the choices (``train.tune_batching``).

The fastest :class:`~fastmaml.core.batch.TaskBatching` depends on the model, the precision and the hardware:
``vmap`` over all tasks batches per-task weights into grouped convolutions, chunks of a few tasks keep a CPU's
activations in cache, and a plain loop of dense convolutions is what a CPU with AMX runs fastest in bf16
(issue 35: 32 tasks x 80 images through one conv layer, 170 ms fp32 / 70 ms bf16 as a loop against 242 ms for
fp32 vmap). Rather than fix one in the presets, a run with ``train.tune_batching`` times each choice on its
first meta-batch, with the run's precision, and trains with the fastest; ``config.json`` records the choice
and the timings (``train.batching_resolved``), and a resumed run reuses it, so resuming stays exact. Every
choice computes the same meta-gradient (the tests check it); only the speed differs.

The trials leave no trace: parameters, buffers (BatchNorm running statistics) and gradients are restored.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from fastmaml.core.batch import TaskBatching
from fastmaml.core.maml import MAML
from fastmaml.errors import ConfigError
from fastmaml.tasks.batch import TaskBatch

CHUNK_SIZES = (1, 2, 4, 8, 16)  # the chunk sizes tried (those smaller than the meta-batch)


@dataclass(frozen=True)
class BatchingChoice:
    """The batching a run trains with, why, and what each candidate took (seconds per meta-gradient)."""

    batching: TaskBatching
    how: str  # "timed", "recorded" (a resumed run's earlier choice) or "configured"
    seconds: dict[str, float]

    def to_record(self) -> dict[str, Any]:
        """The ``train.batching_resolved`` entry of config.json."""
        return {"mode": self.batching.mode, "chunk_size": self.batching.chunk_size, "how": self.how,
                "seconds": {k: round(v, 4) if math.isfinite(v) else None for k, v in self.seconds.items()}}

    def describe(self) -> str:
        what = describe(self.batching)
        if self.how != "timed":
            return f"{what} ({self.how})"
        times = ", ".join(f"{k} {v:.3g} s" if math.isfinite(v) else f"{k} failed"
                          for k, v in sorted(self.seconds.items(), key=lambda kv: kv[1]))
        return f"{what} (the fastest on the first meta-batch: {times})"


def describe(b: TaskBatching) -> str:
    if b.mode == "loop":
        return "loop"
    return "vmap" if b.chunk_size is None else f"vmap, chunks of {b.chunk_size}"


def candidates(num_tasks: int, configured: TaskBatching) -> list[TaskBatching]:
    """vmap over all tasks, vmap in chunks smaller than the batch, the loop, and the configured batching."""
    out = [TaskBatching("vmap"), *(TaskBatching("vmap", c) for c in CHUNK_SIZES if c < num_tasks),
           TaskBatching("loop"), configured]
    return list(dict.fromkeys(out))  # TaskBatching is frozen (hashable): keep the first of equal ones


def from_record(record: Any, source: str) -> TaskBatching:
    """The batching recorded in a run's config.json (``train.batching_resolved``); ConfigError when malformed."""
    try:
        return TaskBatching(record["mode"], record["chunk_size"])
    except (TypeError, KeyError, ConfigError) as e:
        raise ConfigError(f"{source}: train.batching_resolved is malformed ({e}); delete that entry to time the "
                          "batchings again, or start a new run folder") from e


def _seconds_per_call(learner: MAML, batch: TaskBatch, repeats: int) -> float:
    learner.meta_backward(batch)  # warm-up: allocations, vmap's first trace
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        learner.meta_backward(batch)
        best = min(best, time.perf_counter() - t)
    return best


def time_batchings(learner: MAML, batch: TaskBatch, options: list[TaskBatching], repeats: int = 2
                   ) -> dict[TaskBatching, float]:
    """Seconds per meta-gradient of ``batch`` under each batching (the best of ``repeats`` after a warm-up);
    ``inf`` for one that fails (an op vmap cannot batch, out of memory), unless it is the learner's own batching,
    whose error training would meet anyway.

    The learner comes back as it was: its batching, parameters, buffers and gradients (None).
    """
    if repeats < 1:
        raise ConfigError(f"batching trials need repeats >= 1, got {repeats}")
    state = copy.deepcopy(learner.state_dict())
    kept, rng = learner.batching, torch.get_rng_state()
    out: dict[TaskBatching, float] = {}
    try:
        for b in options:
            learner.batching = b
            try:
                out[b] = _seconds_per_call(learner, batch, repeats)
            except (RuntimeError, NotImplementedError):  # an op vmap cannot batch, out of memory: not a choice
                if b == kept:
                    raise
                out[b] = math.inf
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            learner.load_state_dict(state)
    finally:
        learner.batching = kept
        learner.load_state_dict(state)
        torch.set_rng_state(rng)
        for p in learner.parameters():
            p.grad = None
    return out


def recorded_choice(record: Any, source: str = "config.json") -> BatchingChoice:
    """A resumed run's earlier choice, from its config.json's ``train.batching_resolved``."""
    seconds = {k: math.inf if v is None else float(v) for k, v in dict(record.get("seconds") or {}).items()}
    return BatchingChoice(from_record(record, source), "recorded", seconds)


def choose_batching(learner: MAML, batch: TaskBatch, repeats: int = 2) -> BatchingChoice:
    """The fastest of :func:`candidates` on ``batch``."""
    times = time_batchings(learner, batch, candidates(batch.num_tasks, learner.batching), repeats)
    best = min(times, key=times.__getitem__)
    return BatchingChoice(best, "timed", {describe(b): s for b, s in times.items()})


__all__ = ["BatchingChoice", "CHUNK_SIZES", "candidates", "choose_batching", "describe", "from_record",
           "recorded_choice", "time_batchings"]
