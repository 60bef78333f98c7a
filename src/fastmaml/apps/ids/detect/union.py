"""A detector and a rule baseline run as one IDS: the rule's alerts beside the detector's.

The judgements (``ids compare``'s first table, ``ids judge --union``) show a detector and a rule (the
partner-plausibility rule, or it and the timing rule as one), each calibrated for half the false-alert budget,
catching what either catches. ``ids adapt/detect --clean C`` calibrates both on the clean capture and stores the
rule's setting in the detector folder (``detector.json``: ``evidence.union``); ``ids detect`` and ``ids monitor``
then raise both channels' alerts. The rule is the traffic's deployed one (``--union auto``, the default: CAN with
signal features, plausibility + timing), or the one ``--union RULE`` names (``--union none``: the detector alone). The
rules that need the clean frames (the ID allow-list, payload ranges) are fitted again on the same clean capture when
the detector is used, so for them the clean capture has to stay where it was; the deployed ones (timing, plausibility)
are defined by the detector's feature state alone and travel with its folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from fastmaml.apps.ids.detect.detector import Detector
from fastmaml.apps.ids.evidence import (Alerts, Calibration, CusumState, Evidence, calibrate, cusum_alerts,
                                        rule_alarm, rule_frame_scores)
from fastmaml.apps.ids.traffic import ReadOptions
from fastmaml.errors import DataError


# --union values that are not a rule's name: the traffic's deployed rule for the detector, and no rule.
AUTO = "auto"
NONE = ("", "none")


def resolve_union(det: Detector, union: str) -> str:
    """The rule ``--union`` names for ``det``: ``auto`` -> its traffic's deployed rule (CAN with signal features:
    plausibility_timing; '' where there is none), ``none`` or '' -> '', else ``union`` itself."""
    if union == AUTO:
        return det.kind().deployed_rule(det.state())
    return "" if union in NONE else union


def rule_function(det: Detector, rule: str, clean: str | Path,
                  options: ReadOptions = ReadOptions()) -> Callable[[np.ndarray], np.ndarray]:
    """The traffic's rule ``rule`` for the detector: feature rows (every column) -> bool flags. A rule its feature
    state alone defines (CAN: timing, plausibility, plausibility_timing) needs no clean frames, so a detector folder
    moved to the vehicle runs it without its clean capture; the others are fitted on the clean capture."""
    kind = det.kind()
    if rule not in kind.rules:
        raise DataError(f"--union {rule!r} is not a rule of {kind.description}; choose one of {sorted(kind.rules)}")
    own = kind.stream_rules(det.state(), None, options)
    if rule in own:
        return own[rule]
    if not Path(clean).is_file():
        raise DataError(f"the union rule {rule!r} is fitted on the clean capture {clean}, which is not there; pass "
                        "--clean CAPTURE to ids detect to recalibrate, or put the file back")
    fns = kind.stream_rules(det.state(), clean, options)
    if rule not in fns:
        raise DataError(f"rule {rule!r} cannot be fitted for this detector (it needs the signal features: train with "
                        f"features.signals=true); available: {sorted(fns)}")
    return fns[rule]


def union_setting(rule: str, clean: str | Path, cal: Calibration, holdoff_s: float) -> dict[str, Any]:
    """The JSON block ``detector.json`` keeps under ``evidence.union``."""
    return {"rule": rule, "clean_capture": str(clean), **rule_alarm(holdoff_s).calibrated(cal).to_dict(),
            "calibration": cal.to_dict()}


def calibrate_rule(scores: np.ndarray, clock: np.ndarray, key: np.ndarray, budget: float,
                   holdoff_s: float) -> Calibration:
    """The rule channel's threshold for ``budget`` false alerts per hour on the clean capture's rule frame scores."""
    return calibrate(scores, clock, key, budget, rule_alarm(holdoff_s))


class RuleChannel:
    """The union rule of a detector, streamed: rows in (every feature column), its CUSUM alerts out.

    Carries its own CUSUM state across chunks, as the detector's channel does.
    """

    def __init__(self, det: Detector) -> None:
        u = det.evidence.get("union")
        if not u:
            raise DataError("this detector has no union rule (ids adapt/detect --clean C --union RULE)")
        self.rule = str(u["rule"])
        self.fn = rule_function(det, self.rule, u["clean_capture"])
        self.ev = Evidence.from_dict(u)
        self.state = CusumState()

    def explain(self, rows: np.ndarray) -> list[list[str]]:
        """Per alerting row, the checks of the rule it fails (empty lists for a rule that has no named checks)."""
        checks = getattr(self.fn, "checks", None)
        return checks(rows) if checks is not None and len(rows) else [[] for _ in range(len(rows))]

    def __call__(self, rows: np.ndarray, clock: np.ndarray, key: np.ndarray) -> Alerts:
        score = rule_frame_scores(self.fn(rows))
        alerts, self.state = cusum_alerts(score, clock, key, self.ev, self.state)
        return alerts


def rule_channel(det: Detector) -> RuleChannel | None:
    """The detector's union rule channel, or None when it has none."""
    return RuleChannel(det) if det.evidence.get("union") else None
