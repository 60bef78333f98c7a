"""One judgement for every detector and every rule, as a vehicle would run them (``fastmaml ids judge``).

Each scorer, adapted detector or rule baseline, goes down the same path: a score per frame
(a detector's log-odds; a rule's +1 flagged / -1/4 not), evidence summed per CAN ID
(:mod:`fastmaml.apps.ids.evidence`), an alert when the sum crosses a threshold set on the
vehicle's clean capture for the false-alert budget. Judged per attack capture: the attack
occurrences (per attacked ID) caught, the median time to detect, false alerts per hour of its
benign traffic; on the clean capture: its alerts (zero by construction: the threshold was set
there) and, out of sample, the alerts on each half of the clean capture at a threshold set on
the other half.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fastmaml.apps.ids.detect.detector import Detector
from fastmaml.apps.ids.detect.scores import ScoredCapture, score_capture
from fastmaml.apps.ids.detect.union import resolve_union
from fastmaml.apps.ids.evidence import (Calibration, Evidence, calibrate, count_alerts, cusum_alerts, judge,
                                        merge_alerts, rule_alarm)
from fastmaml.apps.ids.traffic import ReadOptions
from fastmaml.errors import DataError



@dataclass
class CaptureResult:
    """One scorer on one attack capture."""

    capture: str
    caught: int
    occurrences: int
    median_delay_s: float
    false_alerts: int
    false_alerts_per_hour: float
    per_occurrence: list[dict[str, Any]]


@dataclass
class ScorerResult:
    """One scorer: its calibration on the clean capture and its result on every attack capture."""

    name: str
    kind: str  # "detector", "rule" or "union" (a detector and a rule as one IDS)
    calibration: Calibration
    clean_alerts: int  # on the whole clean capture, at the threshold set on it
    heldout_clean_alerts: int  # on each half of the clean capture at the threshold set on the other, summed
    captures: list[CaptureResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["calibration"] = self.calibration.to_dict()
        return d


def _heldout_alerts(s: np.ndarray, clock: np.ndarray, key: np.ndarray, budget: float, ev: Evidence) -> int:
    """Alerts on each half of the clean capture at the threshold calibrated on the other half."""
    mid = int(np.searchsorted(clock, (clock[0] + clock[-1]) / 2))
    total = 0
    for fit, test in ((slice(0, mid), slice(mid, None)), (slice(mid, None), slice(0, mid))):
        cal = calibrate(s[fit], clock[fit], key[fit], budget, ev, bootstrap=0)
        total += count_alerts(s[test], clock[test], key[test], ev.calibrated(cal))
    return total


def _union_result(name: str, channels: list[tuple[np.ndarray, list[np.ndarray], Evidence]], sc: ScoredCapture,
                  attacks: list[tuple[str, ScoredCapture]], budget: float, gap_s: float,
                  partners: dict[int, set[int]]) -> ScorerResult:
    """Several alert channels as one IDS: each (clean scores, per-capture scores, evidence) calibrated on the clean
    capture for an equal share of the budget, their alerts judged together."""
    share = budget / len(channels)
    cals = [calibrate(s, sc.clock, sc.key, share, ev) for s, _, ev in channels]
    thrs = [ev.calibrated(c) for (_, _, ev), c in zip(channels, cals)]
    res = ScorerResult(name, "union", cals[0], sum(count_alerts(s, sc.clock, sc.key, t)
                                                   for (s, _, _), t in zip(channels, thrs)),
                       sum(_heldout_alerts(s, sc.clock, sc.key, share, ev) for s, _, ev in channels))
    for i, (cname, a) in enumerate(attacks):
        alerts = merge_alerts(*(cusum_alerts(per[i], a.clock, a.key, t)[0] for (_, per, _), t in zip(channels, thrs)))
        j = judge(alerts, a.truth, a.clock, a.key, gap_s, partners)
        res.captures.append(CaptureResult(cname, j.caught, len(j.occurrences), j.median_delay_s, j.false_alerts,
                                          j.false_alerts_per_hour, [asdict(o) for o in j.occurrences]))
    return res


def judge_scorers(detectors: dict[str, Detector], clean: str | Path, captures: Sequence[str | Path], *,
                  labels: Sequence[str | Path | None] | None = None, alerts_per_hour: float = 10.0,
                  rules: bool = True, evidence: Evidence = Evidence(),
                  gap_s: float = 0.05, options: ReadOptions = ReadOptions(),
                  recalibrate: bool = True, union: str = "auto") -> list[ScorerResult]:
    """Judge every detector (already adapted) and, with ``rules``, the traffic's rule baselines, on one path.

    ``recalibrate``: set every detector's threshold here on ``clean`` (the same budget and evidence
    setting for all); otherwise use the threshold saved in the detector (``ids adapt --clean``).
    ``union``: a rule judged beside each detector as one IDS ("NAME + RULE", each at half the budget, the
    detector recalibrated for it); ``auto``: the one ``ids adapt`` deploys for the first detector (CAN with signal
    features: plausibility_timing); "", ``none`` or a rule the traffic cannot fit here: none. ``labels``: a side
    label file per capture (None where the capture carries its labels).
    """
    if not detectors:
        raise DataError("ids judge needs at least one --detector NAME=FOLDER")
    first = next(iter(detectors.values()))
    union = resolve_union(first, union)
    if union and union not in first.kind().rules:
        raise DataError(f"--union {union!r} is not a rule of {first.kind().description}; choose one of "
                        f"{sorted(first.kind().rules)} (or none)")
    rule_fns = first.kind().stream_rules(first.state(), clean, options) if rules else {}
    out: list[ScorerResult] = []
    union_rule: tuple[np.ndarray, list[np.ndarray], Evidence] | None = None
    for i, (name, det) in enumerate(detectors.items()):
        use_rules = rule_fns if i == 0 else {}  # judged once, on the first detector's features (fitted on clean)
        sc = score_capture(det, clean, options=options, rules=use_rules)
        if sc.truth is not None and sc.truth.any():
            raise DataError(f"{clean}: holds {int(sc.truth.sum())} attack frames; --clean must be clean driving")
        attacks = [(str(c), score_capture(det, c, lab, options=options, rules=use_rules))
                   for c, lab in zip(captures, labels or [None] * len(captures))]
        if i == 0 and union in sc.rule_scores:  # the rule's frame scores do not depend on the detector
            rule_ev = rule_alarm(evidence.holdoff_s, evidence.per_key)
            union_rule = (sc.rule_scores[union], [a.rule_scores[union] for _, a in attacks], rule_ev)
        partners = det.kind().partners(det.state())
        for scorer in ["detector"] + list(use_rules):
            s = sc.log_odds if scorer == "detector" else sc.rule_scores[scorer]
            if scorer != "detector":
                ev = rule_alarm(evidence.holdoff_s, evidence.per_key)
                cal = calibrate(s, sc.clock, sc.key, alerts_per_hour, ev)
            elif not recalibrate and det.alarm() is not None and det.calibration() is not None:
                ev, cal = det.alarm(), det.calibration()
            else:
                ev = evidence
                cal = calibrate(s, sc.clock, sc.key, alerts_per_hour, ev)
            thr = ev.calibrated(cal)
            res = ScorerResult(name if scorer == "detector" else f"rule: {scorer}",
                               "detector" if scorer == "detector" else "rule", cal,
                               count_alerts(s, sc.clock, sc.key, thr),
                               _heldout_alerts(s, sc.clock, sc.key, alerts_per_hour, ev))
            for cname, a in attacks:
                if a.truth is None:
                    raise DataError(f"{cname} carries no labels: judging needs labelled attack captures "
                                    "(inline label columns, a capture format with labels, or --labels FILE)")
                alerts, _ = cusum_alerts(a.log_odds if scorer == "detector" else a.rule_scores[scorer], a.clock,
                                         a.key, thr)
                j = judge(alerts, a.truth, a.clock, a.key, gap_s, partners)
                res.captures.append(CaptureResult(cname, j.caught, len(j.occurrences), j.median_delay_s,
                                                  j.false_alerts, j.false_alerts_per_hour,
                                                  [asdict(o) for o in j.occurrences]))
            out.append(res)
        if union_rule is not None:
            out.append(_union_result(f"{name} + {union}", [(sc.log_odds, [a.log_odds for _, a in attacks], evidence),
                                                            union_rule], sc, attacks, alerts_per_hour, gap_s, partners))
    return out


def _group(name: str) -> str:
    """``maml-s2`` -> ``maml``, ``maml-s2 + plausibility`` -> ``maml + plausibility``: seeds are summed."""
    m = re.match(r"^(.*)-s\d+( \+ .*)?$", name)
    return m.group(1) + (m.group(2) or "") if m else name


def summary_table(results: Sequence[ScorerResult]) -> list[str]:
    """One row per method (its seeds pooled) and attack capture: occurrences caught, delay, false alerts."""
    groups: dict[tuple[str, str], list[tuple[ScorerResult, CaptureResult]]] = {}
    for r in results:
        for cap in r.captures:
            groups.setdefault((_group(r.name), cap.capture), []).append((r, cap))
    lines = ["| scorer | capture | runs | occurrences caught | median time to detect | false alerts on the attack "
             "capture | alerts on the clean capture: in sample / held-out half |",
             "|---|---|---:|---:|---:|---:|---|"]
    for (name, capture), rows in groups.items():
        caught = sum(c.caught for _, c in rows)
        occ = sum(c.occurrences for _, c in rows)
        delays = [o["delay_s"] for _, c in rows for o in c.per_occurrence if o["alerted"]]
        delay = f"{float(np.median(delays)):.2f} s" if delays else "-"
        fa = sum(c.false_alerts for _, c in rows)
        lines.append(f"| {name} | {Path(capture).name[:40]} | {len(rows)} | {caught}/{occ} | {delay} | {fa} | "
                     f"{sum(r.clean_alerts for r, _ in rows)} / {sum(r.heldout_clean_alerts for r, _ in rows)} |")
    return lines


def markdown_table(results: Sequence[ScorerResult]) -> list[str]:
    """The judgement as one Markdown table: a row per scorer and attack capture."""
    lines = ["| scorer | capture | occurrences caught | median time to detect | false alerts (per hour) | "
             "clean: alerts / held-out alerts | threshold (tail-fit rate at it, 95%) |",
             "|---|---|---|---:|---:|---|---|"]
    for r in results:
        c = r.calibration
        tail = (f"{c.extrapolated_per_hour:.2g}/h ({c.extrapolated_ci95[0]:.2g}-{c.extrapolated_ci95[1]:.2g})"
                if c.extrapolated_per_hour == c.extrapolated_per_hour else "no tail fit")
        for cap in r.captures:
            occ = ", ".join(f"0x{o['key']:x} {'caught' if o['alerted'] else 'missed'}" for o in cap.per_occurrence)
            delay = f"{cap.median_delay_s:.2f} s" if cap.median_delay_s == cap.median_delay_s else "-"
            lines.append(f"| {r.name} | {Path(cap.capture).name[:40]} | {cap.caught}/{cap.occurrences} ({occ}) | "
                         f"{delay} | {cap.false_alerts} ({cap.false_alerts_per_hour:.0f}/h) | {r.clean_alerts} / "
                         f"{r.heldout_clean_alerts} | {c.threshold:.1f} ({tail}) |")
    return lines
