"""Environment families as task distributions. Adding one: a file + one line in ``ENVIRONMENTS``."""

from __future__ import annotations

from typing import Any, Callable

from fastmaml.apps.rl.envs.base import TaskDistribution, VecEnv, WithTaskInObservation
from fastmaml.apps.rl.envs.halfcheetah import CheetahDir, CheetahVel  # needs mujoco only when built
from fastmaml.apps.rl.envs.nav2d import Nav2D
from fastmaml.errors import ConfigError

ENVIRONMENTS: dict[str, Callable[..., Any]] = {"nav2d": Nav2D, "cheetah_vel": CheetahVel, "cheetah_dir": CheetahDir}


def make_tasks(name: str, oracle: bool = False, **options: Any) -> TaskDistribution:
    """The task distribution ``name`` (with the task appended to observations for the oracle)."""
    if name not in ENVIRONMENTS:
        raise ConfigError(f"unknown env {name!r}; choose from {sorted(ENVIRONMENTS)}")
    try:
        dist = ENVIRONMENTS[name](**options)
    except TypeError as e:
        raise ConfigError(f"bad options for env {name!r}: {e}") from e
    return WithTaskInObservation(dist, dist.task_dim) if oracle else dist


__all__ = ["ENVIRONMENTS", "TaskDistribution", "VecEnv", "WithTaskInObservation", "make_tasks"]
