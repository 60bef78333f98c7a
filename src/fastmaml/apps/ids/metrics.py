"""Detection metrics, per episode (vectorized, for the adaptation curves) and per capture.

Frame/window metrics (F1, detection rate = recall, false-positive rate) say how well samples
are classified; they are judged against chance with informedness (detection rate − FPR, 0 for
a detector that flags at random whatever its F1) and the Matthews correlation coefficient.
Operational metrics of a whole capture (false alerts per hour, time to first alert) are in
:mod:`fastmaml.apps.ids.alerts`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from fastmaml.errors import DataError

METRIC_NAMES = ("f1", "recall", "fpr", "accuracy", "informedness", "mcc")


def rates(pred_attack: torch.Tensor, true_attack: torch.Tensor) -> dict[str, torch.Tensor]:
    """F1, recall (detection rate), FPR, accuracy, informedness and MCC along the last dim (vmap-friendly)."""
    p, t = pred_attack.bool(), true_attack.bool()
    tp = (p & t).sum(-1).float()
    fp = (p & ~t).sum(-1).float()
    fn = (~p & t).sum(-1).float()
    tn = (~p & ~t).sum(-1).float()
    recall = tp / (tp + fn).clamp_min(1.0)
    fpr = fp / (fp + tn).clamp_min(1.0)
    # MCC is 0 when a row or column of the confusion matrix is empty (e.g. nothing flagged).
    denom = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)).clamp_min(1.0).sqrt()
    return {
        "f1": 2 * tp / (2 * tp + fp + fn).clamp_min(1.0),
        "recall": recall,
        "fpr": fpr,
        "accuracy": (tp + tn) / (tp + fp + fn + tn).clamp_min(1.0),
        "informedness": recall - fpr,
        "mcc": (tp * tn - fp * fn) / denom,
    }


def _metric(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda logits, y: rates(logits.argmax(-1) == 1, y == 1)[name]


# metric(logits [.., n, 2], labels [.., n]) -> [..]: what MAML.adaptation_curve records after each step
CURVE_METRICS = {name: _metric(name) for name in METRIC_NAMES}


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
