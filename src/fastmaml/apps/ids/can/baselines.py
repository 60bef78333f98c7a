"""Rule baselines a reviewer expects beside the learned detectors.

* ``AllowListRule``: flags IDs never seen in benign training traffic.
* ``TimingRule``: flags a frame arriving much sooner than its ID's learned period
  (inter-arrival < ``factor`` x period).
* ``PayloadRangeRule``: flags a payload byte outside the per-ID range seen in benign traffic.
* ``SignalRangeRule`` (with signal features): flags a frame when one of its signals
  (:mod:`~fastmaml.apps.ids.can.signals`) leaves the range seen in benign traffic.
* ``PlausibilityRule`` (with signal features): flags a frame when one of its signals disagrees
  with the prediction from its partners on other IDs by more than ``factor`` x the benign 99.9%
  residual: the plausibility check an ECU runs on redundant signals.
* ``AnyOfRules``: several fitted rules as one, a frame flagged when any flags it (``plausibility_timing``: the
  plausibility and timing rules, what a vehicle would run beside a detector).

Each rule is fitted on benign frames and predicts per frame (``predict(FrameBatch)``) or per
sample of a SampleSet built by ``features.build_sample_set`` (``predict_samples``; a window is
flagged when any of its frames is). ``detection_metrics`` turns predictions into
precision/recall/F1/FPR for attack-vs-benign.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from fastmaml.apps.ids.can.features import FRAME_FEATURES, FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.states import LONG_DRIVE_S
from fastmaml.apps.ids.samples import SampleSet, unlabelled_rows
from fastmaml.errors import DataError


def _batches(frames: Iterable[FrameBatch] | FrameBatch) -> Iterable[FrameBatch]:
    return [frames] if isinstance(frames, FrameBatch) else frames


def _col(s: SampleSet, name: str) -> torch.Tensor:
    if name not in s.feature_names:
        raise DataError(f"SampleSet lacks feature {name!r}; build it with features.build_sample_set")
    return s.features[..., s.feature_names.index(name)]


def _sample_ids(s: SampleSet) -> torch.Tensor:
    """CAN IDs back from the scaled feature (exact for 11-bit IDs; float32 rounds 29-bit ones)."""
    ext = _col(s, "is_extended") > 0.5
    scaled = _col(s, "id_scaled").double()
    return torch.where(ext, scaled * 0x1FFFFFFF, scaled * 0x7FF).round().long()


def _any_in_window(flags: torch.Tensor) -> torch.Tensor:
    return flags.any(dim=1) if flags.dim() == 2 else flags


class AllowListRule:
    """Flags frames whose ID was not seen in benign training traffic."""

    def __init__(self) -> None:
        self.allowed: np.ndarray = np.zeros(0, np.int64)

    def fit(self, frames: Iterable[FrameBatch] | FrameBatch) -> AllowListRule:
        """Learn the allowed IDs from benign (or unlabelled) frames."""
        ids = [np.unique(b.can_id[~b.is_attack()]) for b in _batches(frames)]
        self.allowed = np.unique(np.concatenate(ids)).astype(np.int64) if ids else np.zeros(0, np.int64)
        return self

    def predict(self, frames: FrameBatch) -> np.ndarray:
        """Bool [N]: True = attack."""
        return ~np.isin(frames.can_id.astype(np.int64), self.allowed)

    def predict_samples(self, s: SampleSet) -> torch.Tensor:
        """Bool [N] for a frame- or window-level SampleSet."""
        ids = _sample_ids(s)
        flags = ~torch.isin(ids, torch.from_numpy(self.allowed))
        return _any_in_window(flags)


class TimingRule:
    """Flags frames arriving sooner than ``factor`` x their ID's learned period.

    Frames of IDs unseen in training are judged against the median period; an ID's first
    frame is never flagged.
    """

    def __init__(self, factor: float = 0.5) -> None:
        if not 0 < factor < 1:
            raise DataError(f"TimingRule factor must be in (0, 1), got {factor}")
        self.factor = factor
        self.state: FeatureState | None = None

    def fit(self, frames: Iterable[FrameBatch] | FrameBatch | FeatureState) -> TimingRule:
        """Learn periods from benign frames (or reuse a fitted FeatureState)."""
        self.state = frames if isinstance(frames, FeatureState) else FeatureState.fit(frames)
        return self

    def _threshold(self) -> float:
        return float(np.log2(self.factor) / 4.0)  # same scale as the dt_log_ratio feature

    def predict(self, frames: FrameBatch) -> np.ndarray:
        """Bool [N] for one whole capture."""
        if self.state is None:
            raise DataError("TimingRule: call fit() first")
        x = FrameFeaturizer(self.state).transform(frames)
        return x[:, FRAME_FEATURES.index("dt_log_ratio")] < self._threshold()

    def predict_samples(self, s: SampleSet) -> torch.Tensor:
        """Bool [N] from the ``dt_log_ratio`` feature."""
        return _any_in_window(_col(s, "dt_log_ratio") < self._threshold())


# What each signal-feature check means, as alerts name it.
CHECKS = {"sig_residual": "disagrees with its partners", "sig_state": "state unlikely in (or against) its context",
          "sig_range": "outside its clean range", "sig_leap": "changed faster than in clean driving",
          "sig_full": "leapt to full scale"}


class _SignalFeatureRule:
    """Thresholds on signal-feature columns, a frame flagged when any is exceeded (no fitting: the FeatureState's
    signals carry the clean statistics). ``columns``: ``(column, threshold)`` pairs."""

    columns: tuple[tuple[str, float], ...] = ()

    def fit(self, frames: object = None) -> _SignalFeatureRule:
        return self

    def checks(self, feature_names: list[str], rows: np.ndarray) -> list[list[str]]:
        """Per frame row (every feature column), the checks it fails: :data:`CHECKS` names of the columns above
        their thresholds (an alert says why: an engineer looks at a partner, a state or a rate limit)."""
        failed = [(CHECKS.get(c, c), rows[:, feature_names.index(c)] > t) for c, t in self.columns if c in feature_names]
        return [[name for name, f in failed if f[i]] for i in range(len(rows))]

    def predict_samples(self, s: SampleSet) -> torch.Tensor:
        """Bool [N]: a column above its threshold (samples without those columns: never)."""
        flags = torch.zeros(s.features.shape[:-1], dtype=torch.bool)
        for column, threshold in self.columns:
            if column in s.feature_names:
                flags |= _col(s, column) > threshold
        return _any_in_window(flags)


class SignalRangeRule(_SignalFeatureRule):
    """A signal of the frame outside its benign range (``sig_range`` > 0)."""

    columns = (("sig_range", 0.0),)


# sig_state above this: a state value less than 1 in 1,000 likely next to its context in clean driving, or a flag
# contradicting the states it follows (a short drive; states.py)
STATE_RULE_THRESHOLD = 0.6


# A signal this far outside its clean range (a fraction of the clean span) is implausible on its own, with no partner
# to say so (a coolant temperature at full scale): judged only where the clean drive was long enough to show the
# range (LONG_DRIVE_S), since a short one has not seen the motorway or the warm engine.
GROSS_RANGE_MARGIN = 0.5


# A signal changing more than this x the most it changed over as many frames in clean driving (sig_leap) has left
# what the quantity can do: judged, as the gross range, only after a long clean drive has shown the limits.
LEAP_FACTOR = 2.0


class PlausibilityRule(_SignalFeatureRule):
    """The frame disagrees with clean driving: a signal more than ``factor`` x its benign 99.9% residual away from
    its partners' prediction, a flag or state whose value is less than 1 in 1,000 likely next to its context
    (``sig_state``, where the state has it), a slow signal that leapt to its field's full scale (``sig_full``);
    with ``range_margin``, a signal more than that fraction of its clean span outside its clean range
    (``sig_range``); with ``leap_factor``, a signal whose change over the last 1-256 frames is more than that x the
    largest clean change over as many frames (``sig_leap``)."""

    def __init__(self, factor: float = 2.0, range_margin: float | None = None,
                 leap_factor: float | None = None) -> None:
        if factor <= 0:
            raise DataError(f"PlausibilityRule factor must be > 0, got {factor}")
        if range_margin is not None and range_margin <= 0:
            raise DataError(f"PlausibilityRule range_margin must be > 0 or None, got {range_margin}")
        if leap_factor is not None and leap_factor <= 1:
            raise DataError(f"PlausibilityRule leap_factor must be > 1 or None, got {leap_factor}")
        self.range_margin = range_margin
        self.leap_factor = leap_factor
        columns = [("sig_residual", float(np.log2(1.0 + factor) / 4.0)),  # the sig_residual scale
                   ("sig_state", STATE_RULE_THRESHOLD), ("sig_full", 0.5)]
        if range_margin is not None:
            columns.append(("sig_range", float(min(np.log2(1.0 + 16.0 * range_margin) / 4.0, 0.999))))  # its scale
        if leap_factor is not None:
            columns.append(("sig_leap", float(min(np.log2(leap_factor) / 4.0, 0.999))))  # log2(1 + (ratio - 1)) / 4
        self.columns = tuple(columns)

    @staticmethod
    def for_state(state: FeatureState, factor: float = 2.0) -> PlausibilityRule:
        """The rule for a fitted FeatureState: the gross range and leap checks only after a long clean drive."""
        long_drive = state.clean_seconds >= LONG_DRIVE_S
        return PlausibilityRule(factor, GROSS_RANGE_MARGIN if long_drive else None,
                                LEAP_FACTOR if long_drive else None)


# What a rule without named checks says when it flags a frame inside AnyOfRules.
RULE_CHECKS = {"timing": "arrived sooner than half its ID's period"}


class AnyOfRules:
    """Fitted rules as one (``rules``: name -> rule): a frame is flagged when any of them flags it, and says which.

    Why: the plausibility rule sees falsified values, the timing rule added frames; a vehicle runs both, and judged
    as one channel beside a detector (``eval.evidence_union``, ``ids adapt --union``) they share one alert budget.
    """

    def __init__(self, rules: dict[str, object]) -> None:
        if not rules:
            raise DataError("AnyOfRules needs at least one rule")
        self.rules = dict(rules)

    def fit(self, frames: object = None) -> AnyOfRules:
        return self  # its rules come fitted

    def predict_samples(self, s: SampleSet) -> torch.Tensor:
        """Bool [N]: any rule's flag."""
        flags = [r.predict_samples(s) for r in self.rules.values()]  # type: ignore[attr-defined]
        return torch.stack(flags).any(0)

    def checks(self, feature_names: list[str], rows: np.ndarray) -> list[list[str]]:
        """Per frame row, the failed checks of each rule that names them, and the names of the others that flag it."""
        out: list[list[str]] = [[] for _ in range(len(rows))]
        s = unlabelled_rows(rows, feature_names)
        for name, rule in self.rules.items():
            if hasattr(rule, "checks"):
                per = rule.checks(feature_names, rows)
            else:
                flagged = rule.predict_samples(s).numpy()  # type: ignore[attr-defined]
                per = [[RULE_CHECKS.get(name, name)] if f else [] for f in flagged]
            for o, c in zip(out, per):
                o.extend(c)
        return out


class PayloadRangeRule:
    """Flags a frame when any payload byte leaves the [min - margin, max + margin] seen for its ID.

    Frames of IDs unseen in training are flagged too (no range known).
    """

    def __init__(self, margin: int = 0) -> None:
        self.margin = margin
        self.ids = np.zeros(0, np.int64)
        self.lo = np.zeros((0, 8), np.int64)
        self.hi = np.zeros((0, 8), np.int64)

    def fit(self, frames: Iterable[FrameBatch] | FrameBatch) -> PayloadRangeRule:
        """Learn per-ID byte ranges from benign frames."""
        lo: dict[int, np.ndarray] = {}
        hi: dict[int, np.ndarray] = {}
        for b in _batches(frames):
            keep = ~b.is_attack()
            ids, data = b.can_id[keep].astype(np.int64), b.data[keep, :8].astype(np.int64)
            for cid in np.unique(ids).tolist():
                d = data[ids == cid]
                lo[cid] = np.minimum(lo.get(cid, d.min(0)), d.min(0))
                hi[cid] = np.maximum(hi.get(cid, d.max(0)), d.max(0))
        self.ids = np.array(sorted(lo), np.int64)
        self.lo = np.array([lo[i] for i in self.ids.tolist()], np.int64).reshape(-1, 8) - self.margin
        self.hi = np.array([hi[i] for i in self.ids.tolist()], np.int64).reshape(-1, 8) + self.margin
        return self

    def _flag(self, ids: np.ndarray, data: np.ndarray) -> np.ndarray:
        if not len(self.ids):
            return np.ones(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        known = self.ids[pos] == ids
        out = (data < self.lo[pos]) | (data > self.hi[pos])
        return ~known | out.any(1)

    def predict(self, frames: FrameBatch) -> np.ndarray:
        """Bool [N]: True = attack."""
        return self._flag(frames.can_id.astype(np.int64), frames.data[:, :8].astype(np.int64))

    def predict_samples(self, s: SampleSet) -> torch.Tensor:
        """Bool [N] from the id and byte features."""
        ids = _sample_ids(s).reshape(-1).numpy()
        cols = [s.feature_names.index(f"b{i}") for i in range(8)]
        data = (s.features[..., cols].reshape(-1, 8) * 255).round().long().numpy()
        flags = torch.from_numpy(self._flag(ids, data)).reshape(s.features.shape[:-1])
        return _any_in_window(flags)
