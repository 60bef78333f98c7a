"""Detector files: a detector network plus what it needs to featurize raw traffic, saved without pickle.

A detector folder holds ``detector.safetensors`` (the network's parameters) and
``detector.json`` (model config, fitted feature state, feature columns, window, class
names, the step size and number of steps used to adapt it, provenance, and the name of its
traffic kind: ``"can"`` or ``"eth"``, looked up in :mod:`fastmaml.apps.ids.registry`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastmaml.apps.ids.config import ModelConfig
from fastmaml.apps.ids.evidence import Calibration, Evidence
from fastmaml.apps.ids.models import build_model
from fastmaml.apps.ids.registry import TRAFFIC, detector_traffic
from fastmaml.apps.ids.traffic import Traffic
from fastmaml.config import from_dict
from fastmaml.errors import DataError
from fastmaml.fileio import atomic_write_bytes, atomic_write_text

FORMAT = "fastmaml.ids.Detector"
WEIGHTS, META = "detector.safetensors", "detector.json"


@dataclass
class Detector:
    """A binary (benign vs attack) detector network plus everything needed to featurize raw traffic."""

    model: dict[str, Any]  # ModelConfig as a dict
    params: dict[str, torch.Tensor]
    feature_state: dict[str, Any]  # the traffic kind's fitted feature state, to_dict()
    feature_names: list[str]  # columns of the traffic's features the network reads, in order
    window: int | None
    stride: int | None
    label_rule: str
    class_names: list[str]  # [benign, attack name]
    inner_lr: float  # step size for few-shot adaptation
    adapt_steps: int
    threshold: float = 0.5  # p(attack) above which a sample is flagged
    meta: dict[str, Any] = field(default_factory=dict)
    traffic: str = "can"  # its traffic kind's registry name (files from before Ethernet have none: CAN)
    # How frame log-odds become alerts (evidence.Evidence fields) and, once calibrated on clean traffic,
    # "calibration" (evidence.Calibration.to_dict()); empty: not calibrated (files from before it have none).
    evidence: dict[str, Any] = field(default_factory=dict)

    def alarm(self) -> Evidence | None:
        """The CUSUM alert setting with its calibrated threshold, or None when the detector was never calibrated."""
        if "threshold" not in self.evidence:
            return None
        return Evidence.from_dict(self.evidence)

    def calibration(self) -> Calibration | None:
        c = self.evidence.get("calibration")
        return Calibration.from_dict(c) if c else None

    def kind(self) -> Traffic:
        """The traffic kind this detector reads (DataError when this version has no such kind)."""
        return detector_traffic(self.traffic)

    def module(self) -> nn.Module:
        """The network with this detector's parameters loaded."""
        net = build_model(from_dict(ModelConfig, dict(self.model), "model"), len(self.feature_names), self.window)
        try:
            net.load_state_dict(self.params)
        except RuntimeError as e:
            raise DataError(f"detector weights do not fit its model config {self.model} ({e}); re-save the detector") from e
        return net.eval()

    def all_features(self) -> list[str]:
        """Every column the featurizer of this detector's traffic computes."""
        return self.kind().feature_names(self.state())

    def columns(self) -> list[int]:
        valid = self.all_features()
        unknown = [n for n in self.feature_names if n not in valid]
        if unknown:
            raise DataError(f"detector uses features {unknown} that this version does not compute; valid: {valid}")
        return [valid.index(n) for n in self.feature_names]

    def state(self) -> Any:
        """The fitted feature state (CAN ``FeatureState``, Ethernet ``EthFeatureState``, ...)."""
        return self.kind().load_state(self.feature_state, "detector feature_state")


def save_detector(det: Detector, path: str | Path) -> Path:
    """Write ``path/detector.safetensors`` + ``path/detector.json`` atomically; returns the folder."""
    from safetensors.torch import save

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS, save({k: v.detach().contiguous().cpu() for k, v in det.params.items()}))
    meta = {"format": FORMAT, "version": 1, **{k: v for k, v in det.__dict__.items() if k != "params"}}
    atomic_write_text(folder / META, json.dumps(meta, indent=1) + "\n")
    return folder


def load_detector(path: str | Path) -> Detector:
    """Read a detector folder (or its ``detector.json``) written by :func:`save_detector`."""
    from safetensors.torch import load_file

    p = Path(path)
    folder = p.parent if p.name == META else p
    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise DataError(f"{folder} is not a detector folder (needs {META} and {WEIGHTS}); "
                        "create one with `fastmaml ids train` or `fastmaml ids adapt`")
    try:
        meta = json.loads((folder / META).read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{folder / META} is not valid JSON ({e}); re-save the detector") from e
    if meta.get("format") != FORMAT:
        raise DataError(f"{folder / META} is not a fastmaml IDS detector (format={meta.get('format')!r})")
    try:
        params = load_file(str(folder / WEIGHTS))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise DataError(f"{folder / WEIGHTS} is truncated or corrupt ({e}); re-save the detector") from e
    fields = {f for f in Detector.__dataclass_fields__ if f != "params"}
    missing = sorted(fields - set(meta) - {"threshold", "meta", "traffic", "evidence"})
    if missing:
        raise DataError(f"{folder / META} lacks {missing}; re-save the detector")
    det = Detector(params=params, **{k: meta[k] for k in fields if k in meta})
    det.module()  # fail now, with a clear message, if weights and config disagree
    return det


def check_capture(det: Detector, capture: str | Path) -> None:
    """DataError when ``capture`` is missing or not of the detector's traffic kind (e.g. a pcap for a CAN detector)."""
    if not Path(capture).is_file():
        raise DataError(f"capture {capture} not found; check the path")
    own = det.kind()
    problem = own.capture_problem(capture)
    if problem is None:
        other = next((t for t in TRAFFIC.values() if t is not own and t.claims(capture)), None)
        if other is not None:
            problem = (f"{capture} is {other.capture_name}, but this detector was trained on {own.description}; "
                       f"{other.train_hint}")
    if problem:
        raise DataError(problem)


def predict_logits(net: nn.Module, x: torch.Tensor, batch_size: int = 16384) -> torch.Tensor:
    """The network's two-class logits ``[N, 2]`` (benign, attack)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(net(x[i: i + batch_size]))
    return torch.cat(out) if out else torch.zeros(0, 2)


def predict_proba(net: nn.Module, x: torch.Tensor, batch_size: int = 16384) -> torch.Tensor:
    """p(attack) per sample."""
    return torch.softmax(predict_logits(net, x, batch_size), -1)[:, 1]


def log_odds(logits: torch.Tensor) -> np.ndarray:
    """``logit[attack] - logit[benign]`` per sample, in float64: the score evidence sums (a probability saturates at
    1). One definition, so a threshold calibrated in one place means the same in detect, judge and monitor."""
    z = logits.double()
    return (z[:, 1] - z[:, 0]).numpy()
