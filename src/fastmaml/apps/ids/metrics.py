"""Detection metrics, per episode (vectorized, for the adaptation curves) and per capture.

Frame/window metrics (F1, detection rate = recall, false-positive rate) say how well samples
are classified; they are judged against chance with informedness (detection rate − FPR, 0 for
a detector that flags at random whatever its F1) and the Matthews correlation coefficient.
Operational metrics of a whole capture (false alerts per hour, time to first alert) are in
:mod:`fastmaml.apps.ids.alerts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fastmaml.errors import DataError


@dataclass(frozen=True)
class Counts:
    """Confusion counts along the last dim (attack = positive), as floats."""

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    tn: torch.Tensor


@dataclass(frozen=True)
class Metric:
    """A per-episode detection metric: its value from the confusion counts (vmap-friendly), and the label of
    its row in the report's per-attack tables (None: results.json only)."""

    name: str
    value: Callable[[Counts], torch.Tensor]
    label: str | None = None


def _recall(c: Counts) -> torch.Tensor:
    return c.tp / (c.tp + c.fn).clamp_min(1.0)


def _fpr(c: Counts) -> torch.Tensor:
    return c.fp / (c.fp + c.tn).clamp_min(1.0)


def _mcc(c: Counts) -> torch.Tensor:
    # MCC is 0 when a row or column of the confusion matrix is empty (e.g. nothing flagged).
    denom = ((c.tp + c.fp) * (c.tp + c.fn) * (c.tn + c.fp) * (c.tn + c.fn)).clamp_min(1.0).sqrt()
    return (c.tp * c.tn - c.fp * c.fn) / denom


# The one list of per-episode metrics, in results.json order. An entry here is computed for every method
# after every fine-tuning step and for every rule, written to results.json and, with a label, reported.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("f1", lambda c: 2 * c.tp / (2 * c.tp + c.fp + c.fn).clamp_min(1.0), "F1"),
    Metric("recall", _recall, "detection rate"),
    Metric("fpr", _fpr, "FPR"),
    Metric("accuracy", lambda c: (c.tp + c.tn) / (c.tp + c.fp + c.fn + c.tn).clamp_min(1.0)),
    Metric("informedness", lambda c: _recall(c) - _fpr(c), "detection rate − FPR"),
    Metric("mcc", _mcc, "MCC"),
)}


def rates(pred_attack: torch.Tensor, true_attack: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of :data:`METRICS` (F1, recall = detection rate, FPR, ...) along the last dim (vmap-friendly)."""
    p, t = pred_attack.bool(), true_attack.bool()
    c = Counts((p & t).sum(-1).float(), (p & ~t).sum(-1).float(), (~p & t).sum(-1).float(),
               (~p & ~t).sum(-1).float())
    return {name: m.value(c) for name, m in METRICS.items()}


def _metric(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda logits, y: rates(logits.argmax(-1) == 1, y == 1)[name]


def curve_metrics() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """What MAML.adaptation_curve records after each step: per metric, (logits [.., n, 2], labels [.., n]) -> [..]."""
    return {name: _metric(name) for name in METRICS}


def detection_metrics(pred_attack: np.ndarray | torch.Tensor, true_attack: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Attack-vs-benign precision, recall, F1, false-positive rate and accuracy."""
    p = np.asarray(pred_attack, bool)
    t = np.asarray(true_attack, bool)
    if p.shape != t.shape:
        raise DataError(f"detection_metrics: prediction shape {p.shape} vs truth shape {t.shape}")
    tp, fp = int((p & t).sum()), int((p & ~t).sum())
    fn, tn = int((~p & t).sum()), int((~p & ~t).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {
        "precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "fpr": fp / (fp + tn) if fp + tn else 0.0, "accuracy": (tp + tn) / max(len(t), 1),
        "informedness": rec - (fp / (fp + tn) if fp + tn else 0.0),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }
