"""Operational metrics: how a detector's verdicts would look to a vehicle.

Frame-level rates hide what matters on a bus that carries ~1,600 frames a second: a 1%
false-positive rate is 58,000 false verdicts an hour. A vehicle raises *alerts*, not verdicts:

* :func:`k_of_n_alerts`: an alert when at least ``k`` of the last ``n`` verdicts of the same
  stream (CAN ID, or the whole bus for window samples) are "attack"; after an alert the
  stream is quiet for ``holdoff`` (one incident, one alert). ``k = n = 1`` alerts on every
  flagged sample (with the hold-off only).
* :func:`alert_metrics`: false alerts per hour of benign driving (alerts raised while no
  attack frame is in the last ``n`` samples of that stream), and per attack occurrence whether
  it was alerted on and how long after its first frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fastmaml.apps.ids.evidence import traffic_seconds
from fastmaml.errors import DataError


@dataclass(frozen=True)
class AlertRule:
    """k of the last n verdicts of one stream flagged -> alert; then ``holdoff`` (clock units) of quiet."""

    k: int = 1
    n: int = 1
    holdoff: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise DataError(f"alert rule needs 1 <= k <= n, got k={self.k}, n={self.n}")
        if self.holdoff < 0:
            raise DataError(f"alert hold-off must be >= 0, got {self.holdoff}")

    @property
    def name(self) -> str:
        return f"{self.k}-of-{self.n}"


# What reports and `fastmaml ids detect` show: every flagged sample alerts (at most one alert per
# stream and second), and 2 of the last 4 samples of a stream flagged.
ALERT_RULES = (AlertRule(1, 1, holdoff=1.0), AlertRule(2, 4, holdoff=1.0))


def parse_alert_rule(text: str, holdoff: float = 1.0) -> AlertRule:
    """``"k-of-n"`` (e.g. ``"8-of-16"``) as an AlertRule; DataError naming the text otherwise."""
    try:
        k, n = (int(x) for x in text.split("-of-"))
    except ValueError:
        raise DataError(f"alert rule {text!r} is not 'k-of-n' (e.g. '2-of-4')") from None
    return AlertRule(k, n, holdoff=holdoff)


def _rolling_count(x: np.ndarray, n: int) -> np.ndarray:
    c = np.cumsum(np.concatenate([[0], x.astype(np.int64)]))
    return c[1:] - c[np.maximum(np.arange(1, len(x) + 1) - n, 0)]


def rule_hits(flags: np.ndarray, stream: np.ndarray | None, rule: AlertRule) -> np.ndarray:
    """Bool per sample: at least ``k`` of the last ``n`` verdicts of its stream are "attack" (before any hold-off)."""
    flags = np.asarray(flags, bool)
    keys = np.zeros(len(flags), np.int64) if stream is None else np.asarray(stream, np.int64)
    hit = np.zeros(len(flags), bool)
    order = np.argsort(keys, kind="stable")  # each stream's samples in capture order
    for grp in np.split(order, np.flatnonzero(np.diff(keys[order])) + 1):
        if len(grp):
            hit[grp] = _rolling_count(flags[grp], rule.n) >= rule.k
    return hit


def k_of_n_alerts(flags: np.ndarray, clock: np.ndarray, stream: np.ndarray | None, rule: AlertRule) -> np.ndarray:
    """Indices (sorted) of the samples at which an alert is raised.

    ``flags``: bool verdicts in capture order; ``clock``: their times; ``stream``: the stream key
    per sample (CAN ID) or None for one bus-wide stream.
    """
    flags = np.asarray(flags, bool)
    clock = np.asarray(clock, np.float64)
    if flags.shape != clock.shape:
        raise DataError(f"alerts: {flags.shape[0]} verdicts but {clock.shape[0]} clock values")
    keys = np.zeros(len(flags), np.int64) if stream is None else np.asarray(stream, np.int64)
    hits = np.flatnonzero(rule_hits(flags, keys, rule))
    out = []
    quiet_until: dict[int, float] = {}
    for h in hits.tolist():  # only candidate positions: cheap even on long captures
        t, key = clock[h], int(keys[h])
        if t >= quiet_until.get(key, -np.inf):
            out.append(h)
            quiet_until[key] = t + rule.holdoff
    return np.array(out, np.int64)


def _occurrences(truth: np.ndarray, clock: np.ndarray, gap: float) -> list[tuple[int, int]]:
    idx = np.flatnonzero(truth)
    if not len(idx):
        return []
    starts = np.flatnonzero(np.diff(clock[idx]) > gap) + 1
    return [(int(idx[a]), int(idx[b - 1])) for a, b in zip(np.r_[0, starts], np.r_[starts, len(idx)])]


def alert_metrics(flags: np.ndarray, truth: np.ndarray, clock: np.ndarray, stream: np.ndarray | None,
                  rule: AlertRule, *, occurrence_gap: float = 0.05, clock_unit_s: float = 1.0) -> dict[str, Any]:
    """Alerts of ``rule`` on a labelled capture and what they are worth.

    An alert is *true* when an attack sample lies among the last ``n`` samples of its stream or
    anywhere in the capture within ``occurrence_gap`` before it (an injection on one ID may make
    another ID's frames look odd); otherwise it is a false alert. An attack occurrence (attack
    samples closer than ``occurrence_gap``) counts as detected when the rule fires on a sample that sees
    it, between its first sample and ``occurrence_gap`` after its last, whether or not a hold-off from an
    earlier alert keeps that firing from raising a new alert (the incident is already being alerted);
    the delay runs from its first sample to that firing.
    ``clock_unit_s``: seconds per clock unit (frame-index clocks: pass the mean frame interval).
    """
    flags, truth = np.asarray(flags, bool), np.asarray(truth, bool)
    clock = np.asarray(clock, np.float64)
    alerts = k_of_n_alerts(flags, clock, stream, rule)
    # A sample "sees" an attack if one of the last n samples of its stream, or any attack sample
    # in the last occurrence_gap of the capture, is an attack sample.
    keys = np.zeros(len(flags), np.int64) if stream is None else np.asarray(stream, np.int64)
    recent = rule_hits(truth, keys, AlertRule(1, rule.n))
    att_t = clock[truth]
    if len(att_t):
        pos = np.searchsorted(att_t, clock, side="right") - 1
        near = (pos >= 0) & (clock - att_t[np.maximum(pos, 0)] <= occurrence_gap)
        recent |= near
    true_alert = recent[alerts] if len(alerts) else np.zeros(0, bool)
    false_alerts = int((~true_alert).sum())
    true_hits = np.flatnonzero(rule_hits(flags, keys, rule) & recent)
    duration_h = traffic_seconds(np.asarray(clock, np.float64) * clock_unit_s) / 3600.0
    attack_time = 0.0
    occ = _occurrences(truth, clock, occurrence_gap)
    for a, b in occ:
        attack_time += (clock[b] - clock[a] + occurrence_gap) * clock_unit_s
    benign_h = max(duration_h - attack_time / 3600.0, 0.0)
    t_alerts = clock[true_hits]
    delays = []
    for a, b in occ:
        lo, hi = clock[a], clock[b] + occurrence_gap
        k = np.searchsorted(t_alerts, lo, side="left")
        if k < len(t_alerts) and t_alerts[k] <= hi:
            delays.append((t_alerts[k] - lo) * clock_unit_s)
    return {
        "rule": rule.name,
        "alerts": int(len(alerts)),
        "false_alerts": false_alerts,
        "benign_hours": benign_h,
        "false_alerts_per_hour": false_alerts / benign_h if benign_h > 0 else float("nan"),
        "occurrences": len(occ),
        "occurrences_detected": len(delays),
        "occurrence_detection_rate": len(delays) / len(occ) if occ else float("nan"),
        "median_delay_s": float(np.median(delays)) if delays else float("nan"),
        "max_delay_s": float(np.max(delays)) if delays else float("nan"),
    }
