"""Summary statistics as the meta-learning literature reports them."""

from __future__ import annotations

import math
from typing import Sequence

import torch

# Two-sided 95% normal quantile: the "± 95% confidence interval" of MAML's tables
# is 1.96 standard errors of the mean over test tasks.
Z95 = 1.959963984540054


def mean_ci(values: torch.Tensor | Sequence[float], dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and half-width of the 95% confidence interval along ``dim`` (over tasks).

    Non-finite values propagate (a diverged method shows as nan/inf, not as a good score).
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    n = v.shape[dim]
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = v.mean(dim=dim)
    if n == 1:
        return mean, torch.zeros_like(mean)
    se = v.std(dim=dim, unbiased=True) / math.sqrt(n)
    return mean, Z95 * se


def summarize(values: torch.Tensor, dim: int = 0) -> dict[str, list[float]]:
    """``{"mean": [...], "ci95": [...]}`` (JSON-ready) of per-task values along ``dim``."""
    mean, ci = mean_ci(values, dim=dim)
    return {"mean": torch.atleast_1d(mean).tolist(), "ci95": torch.atleast_1d(ci).tolist()}


def fmt(mean: float, ci: float, digits: int = 3, percent: bool = False) -> str:
    """``"0.512 ± 0.034"`` (or ``"98.70 ± 0.40%"``)."""
    if percent:
        return f"{100 * mean:.2f} ± {100 * ci:.2f}%"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"
