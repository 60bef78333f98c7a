"""A capture scored frame by frame (log-odds per frame, rules' flags beside them): what calibration, adaptation on
clean traffic and ``ids judge`` read, and the stable stream keys streaming detection shares."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fastmaml.apps.ids.detect.detector import Detector, check_capture, log_odds, predict_logits
from fastmaml.apps.ids.evidence import rule_frame_scores
from fastmaml.apps.ids.traffic import ReadOptions
from fastmaml.errors import DataError


class KeyIndex:
    """Integers for a traffic's stream keys (CAN IDs as they are, other keys such as protocol names by a checksum of
    their text): the same key gets the same integer in every capture, so what calibration fitted per key on the
    clean capture (a key's own drift) applies to the same key in the next one."""

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        if keys.dtype.kind in "iu":
            return keys.astype(np.int64)
        return np.array([self.ids.setdefault(k, zlib.crc32(str(k).encode())) for k in keys.tolist()], np.int64)


@dataclass
class ScoredCapture:
    """A capture scored frame by frame: log-odds, time, stream key (int), 0/1 truth (None: unlabelled), the
    detector's feature columns when asked for, and each rule's flags (+1 flagged, -1/4 not) when rules were given."""

    log_odds: np.ndarray
    clock: np.ndarray
    key: np.ndarray
    truth: np.ndarray | None
    x: np.ndarray | None = None
    rule_scores: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return float(self.clock[-1] - self.clock[0]) if len(self.clock) > 1 else 0.0


def score_capture(det: Detector, capture: str | Path, labels: str | Path | None = None,
                  options: ReadOptions = ReadOptions(), keep_features: bool = False,
                  rules: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None) -> ScoredCapture:
    """Every frame of ``capture`` scored by ``det`` (frame detectors: evidence accumulates per frame and stream).

    ``rules``: name -> flags of a chunk's rows (every feature column), e.g. ``Traffic.stream_rules``; each
    rule's frames score +1 when flagged, -1/4 otherwise, so rules go down the detector's evidence path.
    """
    if det.window is not None:
        raise DataError("evidence over time (calibration, CUSUM alerts) needs a frame-level detector; this one "
                        f"reads windows of {det.window} frames: retrain it with features.window=null")
    check_capture(det, capture)
    net, cols = det.module(), det.columns()
    keys = KeyIndex()
    rules = rules or {}
    parts: dict[str, list[np.ndarray]] = {"s": [], "t": [], "k": [], "y": [], "x": []}
    flags: dict[str, list[np.ndarray]] = {r: [] for r in rules}
    labelled = True
    with torch.inference_mode():
        for r in det.kind().row_stream(det.state(), capture, labels, options).rows:
            x = np.ascontiguousarray(r.x[:, cols])
            parts["s"].append(log_odds(predict_logits(net, torch.from_numpy(x))))
            parts["t"].append(np.asarray(r.ts, np.float64))
            parts["k"].append(keys(np.asarray(r.key)))
            labelled = labelled and r.truth is not None
            parts["y"].append(np.asarray(r.truth if r.truth is not None else np.zeros(len(x)), bool))
            if keep_features:
                parts["x"].append(x)
            for name, fn in rules.items():
                flags[name].append(rule_frame_scores(fn(r.x)))
    if not parts["s"]:
        raise DataError(f"{capture} holds no frames")
    cat = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    if np.isnan(cat["t"]).any():
        raise DataError(f"{capture} has no timestamps: evidence over time needs them")
    return ScoredCapture(cat["s"], cat["t"], cat["k"], cat["y"] if labelled else None, cat["x"],
                         {r: np.concatenate(v) for r, v in flags.items()})
