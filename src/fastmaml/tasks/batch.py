"""``TaskBatch``, re-exported from :mod:`fastmaml.core.batch` where it lives (the engine's input type)."""

from fastmaml.core.batch import TaskBatch

__all__ = ["TaskBatch"]
