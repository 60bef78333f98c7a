"""Few-shot adaptation of a saved detector to a new attack, from K labelled samples per class of a capture."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fastmaml.apps.ids.detect.detector import Detector, check_capture, log_odds, predict_logits, predict_proba
from fastmaml.apps.ids.detect.scores import ScoredCapture, score_capture
from fastmaml.apps.ids.detect.union import calibrate_rule, resolve_union, rule_function, union_setting
from fastmaml.apps.ids.evidence import DETECTOR_REFERENCE, Calibration, Evidence, calibrate
from fastmaml.apps.ids.metrics import detection_metrics
from fastmaml.apps.ids.samples import BENIGN, key_balanced_rows, same_key_rows
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
    benign_support: int = 0  # benign samples in the support set (K, or those drawn from the clean capture)
    calibration: Calibration | None = None  # the evidence threshold set on the clean capture


def balanced_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with each present class weighing the same, whatever its count.

    K attack frames beside thousands of clean ones then pull as hard as in the balanced K/K
    episodes the detector was meta-trained on (on a balanced set it equals plain cross-entropy),
    while the benign side of the gradient comes from all of the clean traffic instead of K frames.
    """
    per = F.cross_entropy(logits, y, reduction="none")
    classes = [per[y == c].mean() for c in (0, 1) if bool((y == c).any())]
    return torch.stack(classes).mean()


def adapt_detector(det: Detector, capture: str | Path, k: int, *, labels: str | Path | None = None,
                   attack: str | None = None, steps: int | None = None, format: str = "auto", seed: int = 0,
                   max_samples: int = 200_000, columns: Sequence[str] | dict[str, Any] | None = None,
                   bad_id: str = "error", label_column: int = 1, clean: str | Path | None = None,
                   clean_format: str = "auto",
                   benign_frames: int = 4096, same_id: float = 0.0, benign_per_id: bool | None = None,
                   alerts_per_hour: float | None = 10.0, evidence: Evidence | None = None,
                   union: str = "") -> tuple[Detector, AdaptInfo]:
    """Adapt ``det`` to a new attack from K labelled attack samples of a capture.

    Without ``clean`` the support set is K benign + K attack samples of the capture. With
    ``clean`` (a capture of the vehicle's clean driving, which a vehicle has in abundance) the
    benign side is up to ``benign_frames`` frames drawn from it, the loss weighs both classes
    equally (:func:`balanced_cross_entropy`), a share ``same_id`` of it from the attack shots' own stream keys
    (CAN IDs; :func:`~fastmaml.apps.ids.samples.same_key_rows`), every CAN ID of the clean capture drawn equally
    often (``benign_per_id``, None: whenever there is ``clean``; False: drawn by frame, as before it;
    :func:`~fastmaml.apps.ids.samples.key_balanced_rows`), and with ``alerts_per_hour`` the evidence threshold
    for that false-alert budget is calibrated on the whole clean capture and saved in the detector
    (:mod:`fastmaml.apps.ids.evidence`; ``evidence`` sets clip, drift and hold-off; ``union`` a rule raising
    alerts beside the detector, each at half the budget, ``auto`` the traffic's deployed one:
    :func:`calibrate_detector`).
    ``attack`` picks one attack class of the capture (default: every non-benign label is the
    attack). The other samples of the capture (up to ``max_samples`` per class) score the
    adapted detector. ``columns`` (format ``csv``): the column map of a labelled CSV export
    (``key=value`` strings or a dict); ``bad_id``: what to do with out-of-range IDs (error, skip, keep).
    """
    if k < 1:
        raise DataError(f"--shots must be >= 1 labelled sample per class, got {k}")
    if benign_per_id and clean is None:
        raise DataError("--benign-per-id draws the benign frames from --clean; give --clean")
    benign_per_id = clean is not None and benign_per_id is not False
    if not 0.0 <= same_id <= 1.0 or (same_id > 0 and clean is None):
        raise DataError(f"--same-id {same_id} must be a share in [0, 1] of the benign frames drawn from --clean "
                        "(it needs --clean)")
    check_capture(det, capture)
    union = resolve_union(det, union)
    s = det.kind().labelled_samples(det.state(), capture, labels, window=det.window, stride=det.stride,
                                    label_rule=det.label_rule, max_per_class=max_samples, seed=seed,
                                    options=ReadOptions(format=format, columns=columns, bad_id=bad_id,
                                                        label_column=label_column))
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
    sx, sy = x[support], y[support]
    clean_scores, n_same_id = None, 0
    if clean is not None:
        if benign_frames < 1:
            raise DataError(f"--benign-frames must be >= 1 clean frame, got {benign_frames}")
        # With a union rule its flags come along, so calibration need not read the clean capture again.
        rules = {union: rule_function(det, union, clean, ReadOptions(format=clean_format))} if union else None
        clean_scores = score_capture(det, clean, options=ReadOptions(format=clean_format), keep_features=True,
                                     rules=rules)
        if clean_scores.truth is not None and clean_scores.truth.any():
            raise DataError(f"{clean}: holds {int(clean_scores.truth.sum())} attack frames; give a clean capture")
        cx = torch.from_numpy(clean_scores.x)
        if benign_per_id:
            benign = cx[key_balanced_rows(clean_scores.key, benign_frames, g)]
        else:
            benign = cx[torch.randperm(len(cx), generator=g)[:benign_frames]]
        if same_id > 0:
            shot_keys = _shot_keys(det, s, keep, picks[1])
            own = same_key_rows(clean_scores.key, shot_keys, int(same_id * len(benign)), g)
            benign, n_same_id = torch.cat([benign[: len(benign) - len(own)], cx[own]]), len(own)
        sx = torch.cat([benign, x[picks[1]]])
        sy = torch.cat([torch.zeros(len(benign), dtype=torch.long), torch.ones(len(picks[1]), dtype=torch.long)])
    net = det.module()
    loss = balanced_cross_entropy if clean is not None else F.cross_entropy
    learner = MAML(net, loss, inner_lr=det.inner_lr, inner_steps=1)
    steps = det.adapt_steps if steps is None else steps
    params = learner.adapt(sx, sy, steps=steps)
    name = "+".join(chosen) if chosen else "attack"
    new = replace(det, params={n: p.detach().clone() for n, p in params.items()}, class_names=[BENIGN, name],
                  meta={**det.meta, "adapted_to": name, "shots": k, "adapt_steps_used": steps,
                        "adapt_capture": str(capture), "benign_support": int((sy == 0).sum()),
                        "benign_from": str(clean) if clean is not None else "capture",
                        **({"benign_same_id": n_same_id} if same_id > 0 else {}),
                        **({"benign_per_id": benign_per_id} if clean is not None else {})},
                  evidence={})  # a threshold set for the old weights does not hold for the new ones
    calibration = None
    if clean is not None and alerts_per_hour is not None:
        new, calibration = calibrate_detector(new, clean, alerts_per_hour, evidence=evidence, clean_format=clean_format,
                                              union=union,
                                              scored=clean_scores)
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[support] = False
    metrics = None
    if bool(rest.any()):
        p = predict_proba(new.module(), x[rest])
        metrics = detection_metrics((p > new.threshold).numpy(), (y[rest] == 1).numpy())
    return new, AdaptInfo(k, name, available, metrics, int((sy == 0).sum()), calibration)


def _shot_keys(det: Detector, s: Any, keep: torch.Tensor, picked: torch.Tensor) -> np.ndarray:
    """The stream keys (CAN IDs) of the picked attack shots, read back from their feature rows."""
    keys_of = det.kind().sample_keys(s.feature_names)
    if keys_of is None or s.features.dim() != 2:
        raise DataError("--same-id needs frame samples whose features name the ID (id_scaled, is_extended); this "
                        "detector's samples do not")
    return keys_of(s.features[keep][picked].numpy())


def calibrate_detector(det: Detector, clean: str | Path, alerts_per_hour: float, *, evidence: Evidence | None = None,
                       clean_format: str = "auto", scored: ScoredCapture | None = None,
                       union: str = "") -> tuple[Detector, Calibration]:
    """``det`` with its evidence threshold set on the clean capture for ``alerts_per_hour`` false alerts an hour.

    ``scored``: that capture already read with its features kept (adaptation read it for its benign frames);
    its frames are then scored by ``det`` without reading and featurizing the file again. ``union``: a rule
    baseline run beside the detector as one IDS (:mod:`.union`): each channel calibrated for half the budget,
    the rule's setting stored under ``evidence.union`` (``auto``: the traffic's deployed rule,
    :func:`~fastmaml.apps.ids.detect.union.resolve_union`); without it a stored union is dropped.
    """
    ev = evidence or det.alarm() or Evidence(reference=DETECTOR_REFERENCE)
    union = resolve_union(det, union)
    union_block = None
    if union:
        if scored is None or scored.x is None or union not in scored.rule_scores:
            fn = rule_function(det, union, clean, ReadOptions(format=clean_format))
            scored = score_capture(det, clean, options=ReadOptions(format=clean_format), keep_features=True,
                                   rules={union: fn})
        alerts_per_hour = alerts_per_hour / 2
        rule_cal = calibrate_rule(scored.rule_scores[union], scored.clock, scored.key, alerts_per_hour, ev.holdoff_s)
        union_block = union_setting(union, clean, rule_cal, ev.holdoff_s)
    if scored is not None and scored.x is not None:
        sc, scores = scored, log_odds(predict_logits(det.module(), torch.from_numpy(scored.x)))
    else:
        sc = score_capture(det, clean, options=ReadOptions(format=clean_format))
        scores = sc.log_odds
    if sc.truth is not None and sc.truth.any():
        raise DataError(f"{clean}: holds {int(sc.truth.sum())} attack frames; calibrate on a clean capture")
    cal = calibrate(scores, sc.clock, sc.key, alerts_per_hour, ev)
    setting = {**ev.calibrated(cal).to_dict(), "calibration": cal.to_dict(), "clean_capture": str(clean),
               **({"union": union_block} if union_block else {})}
    return replace(det, evidence=setting), cal
