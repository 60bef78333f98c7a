"""The fine-tuning step size of a baseline (pretrained or random network), chosen on tuning tasks.

Every experiment's baselines are fine-tuned by MAML's own inner loop (``MAML.with_inner_lr``);
which step size they get is chosen here, once for the whole project, on tasks that are not the
test tasks.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from fastmaml.core.maml import MAML, AdaptationCurve, Params
from fastmaml.tasks.batch import TaskBatch

Score = Callable[[AdaptationCurve], tuple[Any, Any]]  # curve -> (sort key: larger is better, what to record)


def final_loss_score(curve: AdaptationCurve) -> tuple[float, float]:
    """Lowest mean query loss after the last step wins; a diverged (NaN) step size never does."""
    final = curve.losses[:, -1].mean().item()
    final = final if final == final else float("inf")
    return -final, final


def tune_inner_lr(learner: MAML, batch: TaskBatch, lrs: Sequence[float], steps: int, score: Score = final_loss_score,
                  metrics: dict[str, Callable] | None = None, params: Params | None = None) -> tuple[float, dict[str, Any]]:
    """The step size in ``lrs`` whose ``steps``-step adaptation curve on ``batch`` scores best, and every record.

    Ties go to the first step size listed.
    """
    keys, records = {}, {}
    for lr in lrs:
        curve = learner.with_inner_lr(lr).adaptation_curve(batch, steps=steps, metrics=metrics, params=params)
        keys[str(lr)], records[str(lr)] = score(curve)
    best = max(keys, key=keys.get)
    return float(best), records
