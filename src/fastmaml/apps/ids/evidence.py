"""Evidence over time: a CUSUM per stream on per-frame log-odds, its alerts, and the threshold for a false-alert budget.

A vehicle cannot alert on every frame a detector finds odd: at ~1,600 frames a second a 0.1%
false-positive rate is 5,800 false alerts an hour. What separates a masquerade from a lone odd
frame is that it lasts. So each stream (a CAN ID) keeps a one-sided CUSUM of its frames' scores

    S_t = max(0, S_{t-1} + clip(score_t, -clip, clip) - drift)

and alerts when S_t exceeds a threshold h; S restarts at 0 after the alert and the stream stays
quiet for ``holdoff`` seconds (one incident, one alert). The score is the detector's log-odds
``logit_attack - logit_benign`` (never a probability, which saturates at 1.0 and cannot be
thresholded at a low rate), clipped so no single frame carries more than ``clip`` of evidence;
for a rule it is +1 for a flagged frame and -1/4 otherwise (:func:`rule_frame_scores`), so rules
and detectors are judged on the same path.

:func:`calibrate` sets h on clean driving for a budget of false alerts per hour. A clean capture
of 30 s cannot show a rate of 10 an hour: where it holds enough CUSUM excursions, the tail of
their peaks is fitted with a generalized Pareto distribution (peaks over a threshold) to
extrapolate the rate, with a bootstrap interval; the calibration always states how much clean
driving it rests on and how much would *verify* the budget (no alert in 3 / budget hours: the
rule of three, 95%).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from fastmaml.errors import DataError


# The reference quantile detectors use unless told otherwise (eval.evidence_reference, --reference; rules, whose
# frame scores are +1 or -1/4, always 0). Off: on DAGA-generated masquerades 0.999 lifted the partnered masquerades caught
# (maximum 0.62 -> 0.82, offset 0.70 -> 0.95; K = 5, 2 seeds, identity-free detectors), but on the CrySyS sample it
# cut MAML's DOUBLE occurrences from 5/6 to 2/6: one ID whose clean frames an adapted detector scores high sets a
# global quantile that silences every ID.
DETECTOR_REFERENCE = 0.0


# Each key's own reference (Evidence.per_key): a key whose clean frames score, on average, above -m (m: KEY_MARGIN or
# KEY_SPREAD of the spread of its clean scores, whichever is larger) gets a drift that brings its clean mean step
# down to -m, the textbook CUSUM reference for a shift of two m. A real bus has IDs whose timing or values a detector
# or rule cannot judge (on ROAD's captures the timing rule flags some IDs' clean frames so often that their sums grow
# without bound): one global threshold above such an ID's clean excursions silenced every other ID (the reverse-light
# fabrication, 99.5% of its frames flagged, caught at 0; results/ids/road_real). Keys whose clean frames score well
# below it keep drift 0.
KEY_MARGIN = 0.125
KEY_SPREAD = 0.5
MIN_KEY_FRAMES = 20  # fewer clean frames of a key: no mean worth trusting, no per-key drift


# Each key's own threshold (Evidence.key_scaled): one threshold for every key makes a slow ID's attack unreachable
# when fast IDs set it. A 10 Hz ID gives 10 frames a second, at most ``clip`` each: on the CrySyS sample 0x410's 6 s
# offset could sum to 360 at most, and the threshold 100 Hz IDs' clean excursions set for one seed was 364. A CUSUM of
# steps with mean -mu and variance var has excursion peaks with an exponential tail of scale var / (2 mu) (the
# Brownian approximation): each key's threshold is the calibrated one times its scale over the keys' median, so a key
# whose clean frames score far below 0 with little spread alerts after little evidence and a noisy key needs more.
# The calibration pools the keys' peaks divided by their scales, so the budget still covers all keys together.


# A gap between two frames longer than this is no traffic (the bus was off, or calibration pieces of one drive, or
# several drives laid end to end): clean time counts only the gaps up to it.
MAX_TRAFFIC_GAP_S = 10.0


def traffic_seconds(clock: np.ndarray) -> float:
    """Seconds of traffic in a capture-order ``clock``: its steps forward of at most :data:`MAX_TRAFFIC_GAP_S`."""
    d = np.diff(np.asarray(clock, np.float64))
    return float(d[(d > 0) & (d <= MAX_TRAFFIC_GAP_S)].sum())


@dataclass(frozen=True)
class Evidence:
    """How frame scores become alerts: clip each score, subtract ``drift``, sum per stream; alert above ``threshold``.

    ``reference`` (0 < q < 1): calibration raises ``drift`` to the q-quantile of the clipped scores of the clean
    traffic (never below ``drift``), the CUSUM's reference value: a detector adapted on a few attack frames often
    scores clean frames near 0 rather than far below it, and summing those near-zero scores would let clean
    driving pile up as much evidence as an attack. With the reference only frames scored above what clean
    traffic almost never shows add evidence. 0: ``drift`` as given.
    """

    threshold: float = math.inf
    clip: float = 6.0
    drift: float = 0.0
    holdoff_s: float = 1.0
    reference: float = 0.0
    per_key: bool = True  # calibration fits each key's own drift (KEY_MARGIN, KEY_SPREAD) on top of ``drift``
    key_drift: tuple[tuple[int, float], ...] = ()  # (key, its extra drift): what calibration fitted
    key_scaled: bool = False  # calibration fits each key's threshold scale (see KEY_MARGIN's neighbours above)
    key_scale: tuple[tuple[int, float], ...] = ()  # (key, its threshold / ``threshold``): what calibration fitted

    def __post_init__(self) -> None:
        if not self.clip > 0:
            raise DataError(f"evidence clip must be > 0, got {self.clip}")
        if self.holdoff_s < 0:
            raise DataError(f"evidence hold-off must be >= 0 s, got {self.holdoff_s}")
        if not 0.0 <= self.reference < 1.0:
            raise DataError(f"evidence reference must be a quantile in [0, 1) (0: off), got {self.reference}")
        if math.isnan(self.threshold):
            raise DataError("evidence threshold is NaN; calibrate it on clean traffic (--clean) or pass --threshold")

    def with_threshold(self, threshold: float) -> Evidence:
        return replace(self, threshold=threshold)

    def fitted(self, clean_score: np.ndarray, clean_key: np.ndarray | None = None) -> Evidence:
        """The drifts this setting uses on traffic like ``clean_score``: ``reference``, its clipped quantile; with
        ``per_key`` and the frames' keys, each key's own (:data:`KEY_MARGIN`, :data:`KEY_SPREAD`)."""
        if not len(clean_score):
            return self
        x = np.clip(np.asarray(clean_score, np.float64), -self.clip, self.clip)
        drift = max(self.drift, float(np.quantile(x, self.reference))) if self.reference else self.drift
        key_drift: tuple[tuple[int, float], ...] = ()
        key_scale: tuple[tuple[int, float], ...] = ()
        if (self.per_key or self.key_scaled) and clean_key is not None:
            # Each key's clean mean step and spread, read by both its drift and its threshold scale.
            keys, inverse, counts = np.unique(np.asarray(clean_key, np.int64), return_inverse=True, return_counts=True)
            mean = np.bincount(inverse, weights=x - drift) / counts
            var = np.maximum(np.bincount(inverse, weights=(x - drift) ** 2) / counts - mean ** 2, 0.0)
            extra = np.zeros(len(keys))
            if self.per_key:
                extra = mean + np.maximum(KEY_MARGIN, KEY_SPREAD * np.sqrt(var))
                extra = np.where((extra > 0) & (counts >= MIN_KEY_FRAMES), extra, 0.0)
                key_drift = tuple((int(k), float(e)) for k, e in zip(keys, extra) if e > 0)
            if self.key_scaled:
                mu = extra - mean  # minus the mean step after the key's drift
                ok = (counts >= MIN_KEY_FRAMES) & (mu > 0)
                raw = np.maximum(var, 1e-12)[ok] / (2.0 * mu[ok])
                if len(raw):
                    key_scale = tuple((int(k), float(v)) for k, v in zip(keys[ok], raw / np.median(raw)))
        return replace(self, drift=drift, key_drift=key_drift, key_scale=key_scale)

    def key_thresholds(self) -> dict[int, float]:
        """Each scaled key's threshold (never below ``clip``: one frame alone never alerts); others: ``threshold``."""
        return {k: max(self.threshold * v, self.clip) for k, v in self.key_scale}

    def calibrated(self, cal: Calibration) -> Evidence:
        """The alarm a calibration set: its threshold and the drifts it was set with."""
        return replace(self, threshold=cal.threshold, drift=cal.drift,
                       key_drift=tuple((int(k), float(d)) for k, d in cal.key_drift),
                       key_scale=tuple((int(k), float(v)) for k, v in cal.key_scale))

    def key_drifts(self) -> dict[int, float]:
        return dict(self.key_drift)

    def to_dict(self) -> dict[str, Any]:
        """The setting a detector folder keeps (``detector.json``, ``evidence``)."""
        return {"threshold": self.threshold, "clip": self.clip, "drift": self.drift, "holdoff_s": self.holdoff_s,
                "reference": self.reference, "per_key": self.per_key, "key_drift": [list(p) for p in self.key_drift],
                "key_scaled": self.key_scaled, "key_scale": [list(p) for p in self.key_scale]}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Evidence:
        """A saved setting; one saved before per-key drifts (no ``per_key``) keeps its single drift, one saved before
        per-key thresholds its single threshold."""
        return Evidence(float(d["threshold"]), float(d.get("clip", 6.0)), float(d.get("drift", 0.0)),
                        float(d.get("holdoff_s", 1.0)), float(d.get("reference", 0.0)), bool(d.get("per_key", False)),
                        tuple((int(k), float(v)) for k, v in d.get("key_drift", [])), bool(d.get("key_scaled", False)),
                        tuple((int(k), float(v)) for k, v in d.get("key_scale", [])))


RULE_CLIP = 1.0  # a flagged frame scores +1, the clip: a lone flagged frame never alerts
# What a frame the rule does not flag subtracts. Not -1: a fabrication's forged frames sit between the genuine frames
# of their ID, so at most every other frame of the ID is flagged, and at +1/-1 the sum of the ID never grows (the
# plausibility rule caught no fabrication at all). At -1/4 each flagged-unflagged pair adds 3/4; on clean driving,
# where flags are rare and scattered, the sum still falls back to 0 between them (the threshold is calibrated there).
RULE_MISS = 0.25


def rule_frame_scores(flags: np.ndarray) -> np.ndarray:
    """A rule's per-frame evidence: +1 where it flags the frame, -RULE_MISS where it does not."""
    return np.where(np.asarray(flags, bool), RULE_CLIP, -RULE_MISS)


def rule_alarm(holdoff_s: float = 1.0, per_key: bool = True) -> Evidence:
    """The evidence setting of a rule baseline's frame scores (no drift, no reference: before calibration)."""
    return Evidence(math.inf, RULE_CLIP, 0.0, holdoff_s, per_key=per_key)


@dataclass
class CusumState:
    """What a stream carries from one chunk to the next: each key's sum, its quiet-until time and excursion start."""

    level: dict[int, float] = field(default_factory=dict)
    quiet_until: dict[int, float] = field(default_factory=dict)
    start: dict[int, float] = field(default_factory=dict)  # time the key's current excursion left 0


@dataclass
class Alerts:
    """Alerts of one pass: frame index, time, key, and when the excursion that raised each began."""

    index: np.ndarray
    time: np.ndarray
    key: np.ndarray
    onset: np.ndarray  # time the CUSUM of that key last left 0 before the alert: the evidence's start
    level: np.ndarray | None = None  # the sum that crossed the threshold (cusum_alerts fills it; monitor reports it)

    @staticmethod
    def empty() -> Alerts:
        return Alerts(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))


def merge_alerts(*parts: Alerts) -> Alerts:
    """The alerts of several alert channels on one stream, in frame order (a vehicle's IDS raises each)."""
    parts = tuple(p for p in parts if len(p.index))
    if not parts:
        return Alerts.empty()
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in ("index", "time", "key", "onset")}
    level = np.concatenate([p.level if p.level is not None else np.full(len(p.index), np.nan) for p in parts])
    order = np.argsort(cat["index"], kind="stable")
    return Alerts(*(cat[f][order] for f in ("index", "time", "key", "onset")), level[order])


def _groups(keys: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(keys, kind="stable")  # each key's frames in capture order
    return [g for g in np.split(order, np.flatnonzero(np.diff(keys[order])) + 1) if len(g)]


def _cusum_run(x: np.ndarray, s0: float) -> np.ndarray:
    """S_t = max(0, S_{t-1} + x_t) from S_0 = s0, vectorized (Lindley): S_t = C_t - min(-s0, min_{j<=t} C_j)."""
    c = np.cumsum(x)
    return c - np.minimum(-s0, np.minimum.accumulate(c))


_BLOCK = 4096


def cusum_alerts(score: np.ndarray, clock: np.ndarray, key: np.ndarray, ev: Evidence,
                 state: CusumState | None = None) -> tuple[Alerts, CusumState]:
    """Alerts of the per-key CUSUM on ``score`` (frames in capture order); ``state`` carries a stream across chunks.

    Any chunking of a capture gives the alerts of one pass (tested).
    """
    score, clock, key = np.asarray(score, np.float64), np.asarray(clock, np.float64), np.asarray(key, np.int64)
    if not (score.shape == clock.shape == key.shape):
        raise DataError(f"evidence: {len(score)} scores, {len(clock)} times and {len(key)} keys differ in length")
    if np.isnan(score).any():
        raise DataError("evidence: a frame score is NaN (the detector's output); check the detector's weights")
    state = state or CusumState()
    x = np.clip(score, -ev.clip, ev.clip) - ev.drift
    extra = ev.key_drifts()
    thresholds = ev.key_thresholds()
    out: list[tuple[int, float, int, float, float]] = []
    for g in _groups(key):
        k = int(key[g[0]])
        xs, ts = x[g] - extra.get(k, 0.0), clock[g]
        h = thresholds.get(k, max(ev.threshold, ev.clip) if thresholds else ev.threshold)
        s0, quiet, onset = state.level.get(k, 0.0), state.quiet_until.get(k, -math.inf), state.start.get(k, math.nan)
        pos = int(np.searchsorted(ts, quiet, side="left"))  # frames inside a hold-off add nothing
        if pos > 0:
            s0 = 0.0
        # Blocks bound the work after each alert (the sums restart there), so many alerts cost no more than a pass.
        while pos < len(xs):
            end = min(pos + _BLOCK, len(xs))
            s = _cusum_run(xs[pos:end], s0)
            zero = np.flatnonzero(s <= 0)
            over = np.flatnonzero(s > h)
            if not len(over):
                onset = _onset(ts[pos:end], s, zero, onset, s0)
                s0, pos = float(s[-1]), end
                continue
            a = int(over[0])
            before = zero[zero < a]
            if len(before):
                start = float(ts[pos + before[-1] + 1])
            else:
                start = onset if (s0 > 0 and onset == onset) else float(ts[pos])
            out.append((int(g[pos + a]), float(ts[pos + a]), k, start, float(s[a])))
            quiet = float(ts[pos + a]) + ev.holdoff_s
            pos = int(np.searchsorted(ts, quiet, side="left"))
            s0, onset = 0.0, math.nan
        state.level[k], state.quiet_until[k], state.start[k] = s0, quiet, onset
    if not out:
        return Alerts.empty(), state
    out.sort()
    idx, t, kk, on, lv = (np.array(v) for v in zip(*out))
    return Alerts(idx.astype(np.int64), t.astype(np.float64), kk.astype(np.int64), on.astype(np.float64),
                  lv.astype(np.float64)), state


def _onset(ts: np.ndarray, s: np.ndarray, zero: np.ndarray, onset: float, s0: float) -> float:
    """When the excursion still open at the end of ``s`` began (NaN when S ended at 0)."""
    if s[-1] <= 0:
        return math.nan
    if len(zero):
        return float(ts[zero[-1] + 1])
    return onset if (s0 > 0 and onset == onset) else float(ts[0])


def excursion_peaks(score: np.ndarray, key: np.ndarray, ev: Evidence) -> np.ndarray:
    """The peak of every CUSUM excursion (a run of S > 0) of every key, with no threshold: the tail calibration fits;
    divided by the key's threshold scale where it has one (``Evidence.key_scale``)."""
    x = np.clip(np.asarray(score, np.float64), -ev.clip, ev.clip) - ev.drift
    key = np.asarray(key, np.int64)
    extra = ev.key_drifts()
    scale = dict(ev.key_scale)
    peaks = []
    for g in _groups(key):
        k = int(key[g[0]])
        s = _cusum_run(x[g] - extra.get(k, 0.0), 0.0) / scale.get(k, 1.0)
        pos = s > 0
        if not pos.any():
            continue
        edges = np.flatnonzero(np.diff(np.r_[0, pos.astype(np.int8), 0]))
        peaks.extend(float(s[a:b].max()) for a, b in zip(edges[::2], edges[1::2]))
    return np.sort(np.array(peaks, np.float64))


# ====================================================================== calibration
@dataclass
class Calibration:
    """The threshold for a false-alert budget, and what it rests on."""

    budget_per_hour: float
    threshold: float
    clean_seconds: float
    clean_alerts: int  # at the threshold, on the clean traffic it was set on
    excursions: int  # CUSUM excursions on that traffic (the sample the tail fit sees)
    method: str  # "empirical" (the clean traffic holds the budget's count), "tail" (GPD extrapolation), "max" (too few)
    extrapolated_per_hour: float = math.nan  # the tail fit's false-alert rate at the threshold
    extrapolated_ci95: tuple[float, float] = (math.nan, math.nan)
    upper_bound_per_hour: float = math.nan  # what the clean traffic alone bounds (95%): (alerts + 3) / hours, roughly
    verify_hours: float = math.nan  # clean driving without an alert that would verify the budget (95%)
    tail_shape: float = math.nan
    tail_scale: float = math.nan
    drift: float = 0.0  # the evidence drift the threshold was set with (Evidence.reference fits it on the clean traffic)
    key_drift: list[list[float]] = field(default_factory=list)  # [key, extra drift] pairs (Evidence.per_key)
    key_scale: list[list[float]] = field(default_factory=list)  # [key, threshold scale] pairs (Evidence.key_scaled)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extrapolated_ci95"] = list(self.extrapolated_ci95)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Calibration:
        d = dict(d)
        d["extrapolated_ci95"] = tuple(d.get("extrapolated_ci95", (math.nan, math.nan)))
        return Calibration(**d)

    def summary(self) -> str:
        hours = self.clean_seconds / 3600.0
        line = (f"threshold {self.threshold:.2f} for <= {self.budget_per_hour:g} false alerts/h, set on "
                f"{self.clean_seconds:.0f} s of clean traffic ({self.clean_alerts} alerts there, "
                f"{self.excursions} excursions); ")
        if self.extrapolated_per_hour == self.extrapolated_per_hour:
            lo, hi = self.extrapolated_ci95
            line += (f"{'set by the tail fit of the excursion peaks' if self.method == 'tail' else 'above the clean maximum'}"
                     f": {self.extrapolated_per_hour:.2g} false alerts/h extrapolated at it (95% {lo:.2g}-{hi:.2g}/h); ")
        else:
            line += f"too few excursions for a tail fit (< {MIN_TAIL_EXCURSIONS}); "
        line += (f"the clean traffic alone bounds the rate below {self.upper_bound_per_hour:.0f}/h (95%); "
                 f"verifying <= {self.budget_per_hour:g}/h needs {self.verify_hours:.2g} h "
                 f"({self.verify_hours * 60:.0f} min) of clean driving without an alert")
        if hours >= self.verify_hours and self.clean_alerts == 0:
            line += " (this clean traffic is that long)"
        if self.key_drift:
            line += (f"; {len(self.key_drift)} stream(s) scored high on clean driving sum only what they score above "
                     f"their own reference (largest {max(d for _, d in self.key_drift):.2f})")
        if self.key_scale:
            scales = [v for _, v in self.key_scale]
            line += (f"; each stream's threshold scaled by its clean excursion scale ({len(scales)} streams: "
                     f"{self.threshold * min(scales):.3g}-{self.threshold * max(scales):.3g} before the floor of one "
                     f"frame's evidence)")
        return line


def gpd_fit(y: np.ndarray) -> tuple[float, float]:
    """Shape ξ and scale σ of a generalized Pareto distribution fitted to exceedances ``y >= 0``.

    Probability-weighted moments (Hosking & Wallis 1987): closed form, stable on the few dozen
    exceedances a short clean capture gives, where maximum likelihood often fails to converge.
    """
    y = np.sort(np.asarray(y, np.float64))
    n = len(y)
    if n < 3:
        raise DataError(f"a tail fit needs >= 3 exceedances, got {n}")
    a0 = y.mean()
    a1 = float(np.sum((n - np.arange(1, n + 1)) / (n - 1) * y) / n)
    if a0 <= 0 or a0 - 2 * a1 <= 0:
        return 0.0, max(a0, 1e-12)
    k = a0 / (a0 - 2 * a1) - 2.0  # Hosking's k = -ξ
    sigma = 2 * a0 * a1 / (a0 - 2 * a1)
    xi = float(np.clip(-k, -0.5, 0.9))
    return xi, float(max(sigma, 1e-12))


def gpd_survival(y: np.ndarray | float, xi: float, sigma: float) -> np.ndarray:
    y = np.maximum(np.asarray(y, np.float64), 0.0)
    if abs(xi) < 1e-9:
        return np.exp(-y / sigma)
    base = 1.0 + xi * y / sigma
    return np.where(base > 0, np.power(np.maximum(base, 1e-300), -1.0 / xi), 0.0)


def _tail_rate(peaks: np.ndarray, hours: float, threshold: float, m: int) -> tuple[float, float, float]:
    """False alerts per hour at ``threshold`` from the ``m`` highest excursion peaks (rate above u times GPD survival)."""
    top = np.sort(peaks)[-(m + 1):]
    u = float(top[0])
    xi, sigma = gpd_fit(top[1:] - u)
    rate_u = m / hours
    return float(rate_u * gpd_survival(threshold - u, xi, sigma)), xi, sigma


def _tail_threshold(peaks: np.ndarray, hours: float, budget: float, m: int) -> float:
    top = np.sort(peaks)[-(m + 1):]
    u = float(top[0])
    xi, sigma = gpd_fit(top[1:] - u)
    ratio = budget / (m / hours)  # survival the threshold must reach
    if ratio >= 1.0:
        return u
    if abs(xi) < 1e-9:
        return u - sigma * math.log(ratio)
    return u + sigma / xi * (ratio ** (-xi) - 1.0)


def count_alerts(score: np.ndarray, clock: np.ndarray, key: np.ndarray, ev: Evidence) -> int:
    return len(cusum_alerts(score, clock, key, ev)[0].index)


MIN_TAIL_EXCURSIONS = 10


def calibrate(score: np.ndarray, clock: np.ndarray, key: np.ndarray, budget_per_hour: float,
              ev: Evidence = Evidence(), *, bootstrap: int = 200, seed: int = 0) -> Calibration:
    """The CUSUM threshold for at most ``budget_per_hour`` false alerts per hour, set on clean traffic.

    Empirically it is the lowest threshold at which the clean traffic raises at most
    ``floor(budget * hours)`` alerts; with >= 10 excursions a generalized Pareto fit to the top
    excursion peaks extrapolates the rate beyond what the clean traffic can show, and the
    threshold is the higher of the two. With fewer, the threshold sits just above the highest
    clean peak, and the calibration says that is all the data supports. Never below ``clip``: no
    single frame raises an alert on its own. With ``ev.reference`` the drift is first fitted on ``score``
    (:meth:`Evidence.fitted`); ``Calibration.drift`` records it and :meth:`Evidence.calibrated` applies both.
    """
    ev = ev.fitted(score, key)
    if budget_per_hour <= 0:
        raise DataError(f"false-alert budget must be > 0 alerts per hour, got {budget_per_hour}")
    clock = np.asarray(clock, np.float64)
    if len(clock) < 2 or not np.isfinite(clock).all():
        raise DataError("calibration needs a clean capture with timestamps (at least 2 frames)")
    seconds = traffic_seconds(clock)
    if seconds <= 0:
        raise DataError("calibration: the clean capture spans 0 s; give a longer clean capture")
    hours = seconds / 3600.0
    peaks = excursion_peaks(score, key, ev)
    allowed = int(math.floor(budget_per_hour * hours + 1e-9))
    # Empirical: bisection over the observed peaks (a threshold between two peaks changes nothing).
    cand = np.unique(np.r_[0.0, peaks])
    lo, hi = 0, len(cand) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if count_alerts(score, clock, key, ev.with_threshold(float(cand[mid]))) <= allowed:
            hi = mid
        else:
            lo = mid + 1
    h = float(cand[lo])
    if count_alerts(score, clock, key, ev.with_threshold(h)) > allowed:  # unreachable: the top peak alerts on nothing
        h = float(cand[-1])
    cal = Calibration(budget_per_hour, h, seconds, 0, len(peaks), "empirical", verify_hours=3.0 / budget_per_hour,
                      drift=ev.drift, key_drift=[[k, d] for k, d in ev.key_drift],
                      key_scale=[[k, v] for k, v in ev.key_scale])
    if len(peaks) >= MIN_TAIL_EXCURSIONS:
        m = min(max(len(peaks) // 2, MIN_TAIL_EXCURSIONS - 1), 100)
        h_tail = _tail_threshold(peaks, hours, budget_per_hour, m)
        if h_tail > h:
            cal.threshold, cal.method = float(h_tail), "tail"
        rate, cal.tail_shape, cal.tail_scale = _tail_rate(peaks, hours, cal.threshold, m)
        cal.extrapolated_per_hour = rate
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(bootstrap):
            # Excursions arrive as a Poisson process: resample how many, then which.
            n = max(int(rng.poisson(len(peaks))), m + 1)
            boots.append(_tail_rate(rng.choice(peaks, n, replace=True), hours, cal.threshold, m)[0])
        if boots:
            cal.extrapolated_ci95 = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
    elif allowed == 0:
        cal.method = "max"
    # One frame alone never alerts: a lone odd frame is what clean driving shows (scaled keys: each key's floor).
    if cal.threshold < ev.clip and not ev.key_scale:
        cal.threshold = ev.clip
    cal.clean_alerts = count_alerts(score, clock, key, ev.with_threshold(cal.threshold))
    cal.upper_bound_per_hour = (cal.clean_alerts + 3.0) / hours  # ~95% upper bound for small counts (3 at zero)
    return cal


# ====================================================================== judgement
@dataclass
class Occurrence:
    """One attack occurrence on one key: its frames' span and whether (and how soon) it was alerted."""

    key: int
    start: float
    end: float
    frames: int
    alerted: bool = False
    delay_s: float = math.nan


@dataclass
class Judgement:
    """Alerts against labels: occurrences (per attacked key) caught, delays, false alerts per hour of benign traffic."""

    alerts: int
    false_alerts: int
    benign_hours: float
    occurrences: list[Occurrence]

    @property
    def false_alerts_per_hour(self) -> float:
        return self.false_alerts / self.benign_hours if self.benign_hours > 0 else math.nan

    @property
    def caught(self) -> int:
        return sum(o.alerted for o in self.occurrences)

    @property
    def caught_rate(self) -> float:
        return self.caught / len(self.occurrences) if self.occurrences else math.nan

    @property
    def median_delay_s(self) -> float:
        d = [o.delay_s for o in self.occurrences if o.alerted]
        return float(np.median(d)) if d else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"alerts": self.alerts, "false_alerts": self.false_alerts, "benign_hours": self.benign_hours,
                "false_alerts_per_hour": self.false_alerts_per_hour, "caught": self.caught,
                "occurrences": len(self.occurrences), "caught_rate": self.caught_rate,
                "median_delay_s": self.median_delay_s, "per_occurrence": [asdict(o) for o in self.occurrences]}


def key_gaps(clock: np.ndarray, key: np.ndarray, gap_s: float, periods: float = 5.0) -> dict[int, float]:
    """Per key, the gap that separates two occurrences: ``gap_s`` or ``periods`` x its median period, the larger.

    A fixed gap counts a 10 Hz and a 100 Hz ID differently (at 0.05 s every frame of the 10 Hz
    ID would be an occurrence of its own).
    """
    out = {}
    for g in _groups(np.asarray(key, np.int64)):
        dt = np.diff(np.asarray(clock, np.float64)[g])
        period = float(np.median(dt)) if len(dt) else 0.0
        out[int(key[g[0]])] = max(gap_s, periods * period)
    return out


def occurrences(truth: np.ndarray, clock: np.ndarray, key: np.ndarray, gaps: dict[int, float]) -> list[Occurrence]:
    """Runs of attack frames per key, split where one is further than that key's gap from the next."""
    truth = np.asarray(truth, bool)
    out = []
    for g in _groups(np.asarray(key, np.int64)):
        t = np.asarray(clock, np.float64)[g][truth[g]]
        if not len(t):
            continue
        k = int(key[g[0]])
        cut = np.flatnonzero(np.diff(t) > gaps.get(k, 0.0)) + 1
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(t)]):
            out.append(Occurrence(k, float(t[a]), float(t[b - 1]), int(b - a)))
    return sorted(out, key=lambda o: (o.start, o.key))


def judge(alerts: Alerts, truth: np.ndarray, clock: np.ndarray, key: np.ndarray, gap_s: float = 0.05,
          partners: dict[int, set[int]] | None = None) -> Judgement:
    """Which alerts are true and which occurrences they catch.

    An alert is *true* when its key is attacked inside the alert's evidence span (its excursion
    began before the occurrence ended) or when its key is a partner of an attacked key
    (``partners``: key -> keys its signals are checked against, either way round) during an
    occurrence: an attack on one signal moves its partners' residuals too. An alert on any other
    key near an attack is false: it did not see the attack. An occurrence is caught by the first
    alert *on its own key* between its first frame and its last frame plus the gap (a partner's
    alert, true as it is, may have been raised by another attacked ID); one alert per occurrence.
    """
    clock, key = np.asarray(clock, np.float64), np.asarray(key, np.int64)
    gaps = key_gaps(clock, key, gap_s)
    occ = occurrences(truth, clock, key, gaps)
    partners = partners or {}
    true = np.zeros(len(alerts.index), bool)
    for i, (t, k, onset) in enumerate(zip(alerts.time.tolist(), alerts.key.tolist(), alerts.onset.tolist())):
        for o in occ:
            related = o.key == k or k in partners.get(o.key, ()) or o.key in partners.get(k, ())
            g = gaps.get(o.key, gap_s)
            if related and o.start <= t <= o.end + g + (0 if o.key == k else g) and onset <= o.end + g:
                true[i] = True
                if o.key == k and not o.alerted:
                    o.alerted, o.delay_s = True, t - o.start
    duration = traffic_seconds(clock)
    # Benign time: the capture less the union of the occurrences (each widened by its key's gap).
    spans = sorted((o.start, o.end + gaps.get(o.key, gap_s)) for o in occ)
    covered, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if cur_b is None or a > cur_b:
            covered += (cur_b - cur_a) if cur_b is not None else 0.0
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    covered += (cur_b - cur_a) if cur_b is not None else 0.0
    benign_h = max(duration - covered, 0.0) / 3600.0
    return Judgement(len(alerts.index), int((~true).sum()), benign_h, occ)
