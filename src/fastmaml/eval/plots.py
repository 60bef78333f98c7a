"""Figures (matplotlib, Agg backend: works without a display)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fastmaml.fileio import atomic_write_bytes  # noqa: E402


def save_figure(fig: "plt.Figure", path: str | Path, dpi: int = 110) -> None:
    """Save ``fig`` as PNG atomically and close it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_curves(
    ax: "plt.Axes",
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    x: Sequence[float] | None = None,
    xlabel: str = "gradient steps",
    ylabel: str = "",
    title: str = "",
    styles: Mapping[str, dict] | None = None,
) -> None:
    """Mean curves with a shaded 95% CI band, one per method: ``{name: (mean, ci)}``."""
    for name, (mean, ci) in curves.items():
        xs = list(x) if x is not None else list(range(len(mean)))
        style = dict((styles or {}).get(name, {}))
        line = ax.plot(xs, mean, label=name, **style)[0]
        lo = [m - c for m, c in zip(mean, ci)]
        hi = [m + c for m, c in zip(mean, ci)]
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
