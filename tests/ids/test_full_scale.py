"""A slow signal pinned at its field's full scale (``sig_full``; ROAD's max_engine_coolant_temp masquerade: the coolant
byte, one step in minutes, 0x89 -> 0xFF), judged on a short drive where the clean range (``sig_range``) is not.

The value is the field's width, not anything the drive showed, and the leap is measured against the largest change
the drive showed over 1-256 frames, around the circle: a signed value going from 0 to -1 or a count wrapping reaches
full scale in one step and is not a leap.
"""

import numpy as np
import pytest

from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.baselines import CHECKS, PlausibilityRule
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.signals import FULL_LEAP, LEAP_LAGS, SIGNAL_FEATURES, Signal, SignalFeaturizer

FULL = SIGNAL_FEATURES.index("sig_full")
SLOW = [1.0, 1.0, 1.0, 2.0, 4.0]  # the ROAD coolant's largest clean changes over 1-256 frames


def _coolant(hi: float = 137.0, max_change: list[float] | None = None, trend: int = 0, lo: float = 118.0) -> Signal:
    """An 8-bit signal in byte 0 of ID 0x10 with no partner, clean range [lo, hi]."""
    return Signal(0x10, 0, 8, lo, hi, [lo] * 2, [hi] * 2, 1.0, 0.0, trend=trend,
                  max_change=list(SLOW if max_change is None else max_change))


def _sig_full(sig: Signal, values: list[int], chunk: int = 0) -> np.ndarray:
    data = np.zeros((len(values), 8), np.uint8)
    data[:, 0] = values
    ids = np.full(len(values), 0x10)
    fz = SignalFeaturizer([sig])
    if not chunk:
        return fz.transform(ids, data)[:, FULL]
    return np.concatenate([fz.transform(ids[i:i + chunk], data[i:i + chunk])[:, FULL]
                           for i in range(0, len(values), chunk)])


def test_a_leap_to_full_scale_is_flagged_while_the_value_stays_there():
    values = [137, 137, 255, 255, 255, 255, 137, 137, 255, 138]
    got = _sig_full(_coolant(), values)
    np.testing.assert_array_equal(got, [0, 0, 1, 1, 1, 1, 0, 0, 1, 0])
    for chunk in (1, 3, 4):  # a run at full scale split across chunks keeps its judgement
        np.testing.assert_array_equal(_sig_full(_coolant(), values, chunk), got)


def test_a_stream_that_starts_at_full_scale_is_judged_from_the_clean_range():
    """A capture (or a test part cut inside a masquerade) whose first frame is already at full scale: the leap is
    measured from the nearest clean value, around the circle."""
    np.testing.assert_array_equal(_sig_full(_coolant(), [255, 255, 137, 137]), [1, 1, 0, 0])
    np.testing.assert_array_equal(_sig_full(_coolant(), [255, 255, 137], chunk=1), [1, 1, 0])
    # clean values within FULL_LEAP x the signal's largest clean change of full scale (above it, or below 0)
    assert not _sig_full(_coolant(hi=250.0), [255, 255]).any()
    assert not _sig_full(_coolant(lo=2.0, hi=40.0), [255, 255]).any()  # 3 steps below 0 wraps to 255


def test_wraps_small_leaps_and_known_full_scales_are_not_judged():
    # a signed value going below 0 (0 -> -1 reads 255), and a count wrapping: one step around the circle
    assert not _sig_full(_coolant(), [2, 1, 0, 255, 255, 254, 253, 0, 1]).any()
    # a leap within what the signal moved over 256 frames in clean driving x FULL_LEAP
    limits = [5.0, 5.0, 10.0, 10.0, 10.0]
    near = int(255 - FULL_LEAP * max(limits))
    assert not _sig_full(_coolant(max_change=limits), [near + 1, 255, 255]).any()
    np.testing.assert_array_equal(_sig_full(_coolant(max_change=limits), [near - 1, 255, 255]), [0, 1, 1])
    # clean driving showed full scale (a sentinel the car sends), a table saved before the limits
    assert not _sig_full(_coolant(hi=255.0), [137, 255, 255]).any()
    assert not _sig_full(_coolant(max_change=[]), [137, 255, 255]).any()
    # a trend (a temperature that only rose in clean driving, a count) is judged: pinned at full scale it leaps there,
    # counting up to full scale, or down through 0, it steps there
    np.testing.assert_array_equal(_sig_full(_coolant(trend=1), [137, 255, 255]), [0, 1, 1])
    assert not _sig_full(_coolant(trend=1), [252, 253, 254, 255, 0, 1]).any()
    assert not _sig_full(_coolant(trend=-1), [2, 1, 0, 255, 254]).any()
    # a leap to zero: resets do that
    assert not _sig_full(_coolant(), [137, 0, 0]).any()
    assert len(SLOW) == len(LEAP_LAGS)


@pytest.fixture(scope="module")
def short_drive() -> FeatureState:
    return FeatureState.fit(sim.simulate("none", 120.0, 3), signals=True)


def test_the_rule_catches_a_full_scale_coolant_on_a_short_drive_and_not_clean_driving(short_drive):
    rule = PlausibilityRule.for_state(short_drive)
    assert rule.range_margin is None  # the range is not judged on 120 s: sig_full is what sees it
    later = sim.simulate("none", 400.0, 11)  # another drive, cold start included
    fz = FrameFeaturizer(short_drive)
    names = fz.feature_names
    assert not fz.transform(later)[:, names.index("sig_full")].any()
    attacked = later.select(np.arange(len(later)))
    rows = np.flatnonzero((attacked.can_id == sim.ID_TEMP) & (attacked.timestamp >= 300.0)
                          & (attacked.timestamp < 330.0))
    attacked.data[rows, 0] = 0xFF
    x = FrameFeaturizer(short_drive).transform(attacked)
    assert x[rows, names.index("sig_full")].all()
    assert all(CHECKS["sig_full"] in c for c in rule.checks(names, x[rows]))
    others = np.setdiff1d(np.arange(len(attacked)), rows)
    assert not x[others, names.index("sig_full")].any()


def test_a_temperature_that_only_warmed_in_clean_driving_is_judged_too():
    """A cold start: over 10 minutes a temperature field only rose (a trend: no range to judge it by), yet pinned at
    full scale it leapt there, which a warming engine does not do."""
    state = FeatureState.fit(sim.simulate("none", 600.0, 3), signals=True)
    (warm,) = [s for s in state.signals if s.can_id == sim.ID_TEMP and s.trend == 1]
    later = sim.simulate("none", 120.0, 11)
    attacked = later.select(np.arange(len(later)))
    rows = np.flatnonzero((attacked.can_id == sim.ID_TEMP) & (attacked.timestamp >= 60.0)
                          & (attacked.timestamp < 70.0))
    attacked.data[rows, warm.start // 8] = 0xFF  # the whole byte of the 8-bit field
    fz = FrameFeaturizer(state)
    full = fz.feature_names.index("sig_full")
    x = fz.transform(attacked)
    assert x[rows, full].all()
    assert not np.delete(x[:, full], rows).any()
