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


def summarize(values: torch.Tensor, dim: int = 0) -> dict[str, list]:
    """Mean and 95% CI (JSON-ready) of per-task values along ``dim``.

    Where some tasks diverged (nan/inf), ``mean`` says so (it is not finite) and
    ``nonfinite`` counts them; ``finite_mean``/``finite_ci95`` summarize the rest, so a
    report can show both rather than hide either.
    """
    v = torch.as_tensor(values, dtype=torch.float64).movedim(dim, 0)
    mean, ci = mean_ci(v)
    out: dict[str, list] = {"mean": torch.atleast_1d(mean).tolist(), "ci95": torch.atleast_1d(ci).tolist()}
    finite = torch.isfinite(v)
    if not finite.all():
        bad = (~finite).sum(0)
        out["nonfinite"] = torch.atleast_1d(bad).tolist()
        cols = [mean_ci(col[ok]) if ok.any() else (torch.tensor(float("nan")),) * 2
                for col, ok in zip(v.reshape(v.shape[0], -1).T, finite.reshape(v.shape[0], -1).T)]
        out["finite_mean"] = [float(m) for m, _ in cols]
        out["finite_ci95"] = [float(c) for _, c in cols]
    return out


def fmt_summary(summary: dict[str, list], i: int, digits: int = 3, percent: bool = False) -> str:
    """Cell ``i`` of a :func:`summarize` result; names diverged tasks instead of printing ``inf ± nan``."""
    bad = summary.get("nonfinite", [0] * len(summary["mean"]))[i]
    if not bad:
        return fmt(summary["mean"][i], summary["ci95"][i], digits, percent)
    n = bad  # tasks that diverged at this step
    rest = fmt(summary["finite_mean"][i], summary["finite_ci95"][i], digits, percent)
    return f"diverged on {n} task{'s' if n > 1 else ''} (others: {rest})"


def fmt(mean: float, ci: float, digits: int = 3, percent: bool = False) -> str:
    """``"0.512 ± 0.034"`` (or ``"98.70 ± 0.40%"``)."""
    if percent:
        return f"{100 * mean:.2f} ± {100 * ci:.2f}%"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"
