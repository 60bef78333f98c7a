"""Few-shot adaptation of a saved detector to a new attack, from K labelled samples per class of a capture."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from fastmaml.apps.ids.detect.detector import Detector, check_capture, predict_proba
from fastmaml.apps.ids.metrics import detection_metrics
from fastmaml.apps.ids.samples import BENIGN
from fastmaml.apps.ids.traffic import ReadOptions
from fastmaml.core.maml import MAML
from fastmaml.errors import DataError


@dataclass
class AdaptInfo:
    """What adaptation used and how the adapted detector scores on the capture's other samples."""

    shots: int
    attack: str
    available: dict[str, int]
    holdout_metrics: dict[str, float] | None


def adapt_detector(det: Detector, capture: str | Path, k: int, *, labels: str | Path | None = None,
                   attack: str | None = None, steps: int | None = None, format: str = "auto", seed: int = 0,
                   max_samples: int = 200_000, columns: Sequence[str] | dict[str, Any] | None = None,
                   bad_id: str = "error") -> tuple[Detector, AdaptInfo]:
    """Adapt ``det`` to a new attack from K labelled benign + K attack samples of a capture.

    ``attack`` picks one attack class of the capture (default: every non-benign label is the
    attack). The other samples of the capture (up to ``max_samples`` per class) score the
    adapted detector. ``columns`` (format ``csv``): the column map of a labelled CSV export
    (``key=value`` strings or a dict); ``bad_id``: what to do with out-of-range IDs (error, skip, keep).
    """
    if k < 1:
        raise DataError(f"--shots must be >= 1 labelled sample per class, got {k}")
    check_capture(det, capture)
    s = det.kind().labelled_samples(det.state(), capture, labels, window=det.window, stride=det.stride,
                                    label_rule=det.label_rule, max_per_class=max_samples, seed=seed,
                                    options=ReadOptions(format=format, columns=columns, bad_id=bad_id))
    attacks = [c for c in s.class_names if c != BENIGN]
    if attack is not None and attack not in attacks:
        raise DataError(f"attack {attack!r} not in {capture}; its labels are {attacks or 'benign only'}")
    chosen = [attack] if attack else attacks
    y = torch.zeros(len(s), dtype=torch.long)
    for c in chosen:
        y[s.labels == s.class_names.index(c)] = 1
    keep = (s.labels == 0) | (y == 1)
    x, y = s.features[keep][..., det.columns()], y[keep]
    available = {BENIGN: int((y == 0).sum()), "+".join(chosen) or "attack": int((y == 1).sum())}
    for name, n in available.items():
        if n < k:
            raise DataError(f"{capture} has {n} {name!r} samples but --shots {k} needs {k} per class; "
                            "lower --shots or give a longer capture")
    g = torch.Generator().manual_seed(seed)
    picks = [torch.nonzero(y == c).squeeze(1) for c in (0, 1)]
    picks = [p[torch.randperm(p.numel(), generator=g)[:k]] for p in picks]
    support = torch.cat(picks)
    net = det.module()
    learner = MAML(net, F.cross_entropy, inner_lr=det.inner_lr, inner_steps=1)
    steps = det.adapt_steps if steps is None else steps
    params = learner.adapt(x[support], y[support], steps=steps)
    name = "+".join(chosen) if chosen else "attack"
    new = replace(det, params={n: p.detach().clone() for n, p in params.items()}, class_names=[BENIGN, name],
                  meta={**det.meta, "adapted_to": name, "shots": k, "adapt_steps_used": steps,
                        "adapt_capture": str(capture)})
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[support] = False
    metrics = None
    if bool(rest.any()):
        p = predict_proba(new.module(), x[rest])
        metrics = detection_metrics((p > new.threshold).numpy(), (y[rest] == 1).numpy())
    return new, AdaptInfo(k, name, available, metrics)
