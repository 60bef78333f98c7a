"""A signal nothing else reflects, falsified (issue 33): set far outside its clean range (ROAD's
max_engine_coolant_temp kind), or moved inside it.

No partner says such a value is wrong, so the partner residuals and states cannot see it; a long clean drive can,
by the range it showed, and by the rate limits it showed: a value moved inside the range leaps at its onset further
in a few frames than the quantity ever moved in as many frames (``sig_leap``, the largest clean change over 1-256
frames). The plausibility rule judges both only after a long drive (a short one has not seen the warm engine or the
motorway) and must then stay quiet on clean driving it did not fit on.
"""

import numpy as np
import pytest
import torch

from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.baselines import GROSS_RANGE_MARGIN, LEAP_FACTOR, PlausibilityRule
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.signals import LEAP_LAGS, SIGNAL_FEATURES, SignalFeaturizer, max_changes, \
    signals_from_dicts, signals_to_dicts
from fastmaml.apps.ids.can.states import LONG_DRIVE_S
from fastmaml.apps.ids.samples import SampleSet
from fastmaml.errors import DataError

COOLANT_ID = sim.ID_TEMP  # byte 0: the coolant temperature, warming from 50 to 90 and staying there; no partner
LEAP = SIGNAL_FEATURES.index("sig_leap")


@pytest.fixture(scope="module")
def long_drive() -> FeatureState:
    return FeatureState.fit(sim.simulate("none", LONG_DRIVE_S + 120.0, 3), signals=True)


def _flags(rule: PlausibilityRule, state: FeatureState, frames: FrameBatch) -> np.ndarray:
    fz = FrameFeaturizer(state)
    x = torch.from_numpy(fz.transform(frames))
    s = SampleSet(x, torch.zeros(len(x), dtype=torch.long), ["benign"], fz.feature_names, "t")
    return rule.predict_samples(s).numpy()


def test_a_full_scale_coolant_is_flagged_after_a_long_drive_and_clean_driving_is_not(long_drive):
    state = long_drive
    assert state.clean_seconds >= LONG_DRIVE_S
    rule = PlausibilityRule.for_state(state)
    assert rule.range_margin == GROSS_RANGE_MARGIN
    later = sim.simulate("none", 400.0, 11)  # another drive, cold start included
    assert _flags(rule, state, later).mean() < 0.001
    attacked = later.select(np.arange(len(later)))
    rows = np.flatnonzero(attacked.can_id == COOLANT_ID)
    attacked.data[rows, 0] = 0xFF
    assert _flags(rule, state, attacked)[rows].mean() > 0.95
    # without the range check only the jump to full scale (sig_full) sees it: the coolant has no partner
    assert _flags(PlausibilityRule(), state, attacked)[rows].mean() > 0.95
    no_full = PlausibilityRule()
    no_full.columns = tuple(c for c in no_full.columns if c[0] != "sig_full")
    assert _flags(no_full, state, attacked)[rows].mean() < 0.05


def test_the_gross_range_needs_a_long_drive_and_survives_a_save():
    short = FeatureState.fit(sim.simulate("none", 120.0, 3), signals=True)
    assert 100.0 < short.clean_seconds < 130.0
    rule = PlausibilityRule.for_state(short)
    assert rule.range_margin is None and "sig_range" not in dict(rule.columns)
    again = FeatureState.from_dict(short.to_dict())
    assert again.clean_seconds == short.clean_seconds
    old = short.to_dict()
    del old["clean_seconds"]  # saved before it was recorded: judged as a short drive
    assert PlausibilityRule.for_state(FeatureState.from_dict(old)).range_margin is None
    with pytest.raises(DataError, match="range_margin"):
        PlausibilityRule(range_margin=0.0)


def _lowered(frames: FrameBatch, t0: float, t1: float, by: int) -> tuple[FrameBatch, np.ndarray]:
    """The coolant byte lowered by ``by`` during [t0, t1): a masquerade that stays inside the clean range."""
    out = frames.select(np.arange(len(frames)))
    rows = np.flatnonzero((out.can_id == COOLANT_ID) & (out.timestamp >= t0) & (out.timestamp < t1))
    out.data[rows, 0] = (out.data[rows, 0].astype(np.int64) - by).astype(np.uint8)
    return out, rows


def test_max_changes_per_lag_within_each_capture():
    v = np.array([0, 1, 2, 3, 4, 104, 105, 106], float)  # a second capture starts at 104
    same = np.array([1, 1, 1, 1, 0, 1, 1], bool)
    got = max_changes(v, same)
    assert got[0] == 1.0  # the 100 across the boundary is no change of the signal
    assert got[1] == 4.0  # lag 4: 0 -> 4 only (pairs across the boundary left out)
    assert got[2:] == [0.0] * (len(LEAP_LAGS) - 2)  # no pair 16 apart in one capture
    assert max_changes(v)[0] == 100.0  # one capture: the leap is the signal's


def test_an_in_range_offset_leaps_at_its_onset_and_the_rule_flags_it(long_drive):
    state = long_drive
    rule = PlausibilityRule.for_state(state)
    assert rule.leap_factor == LEAP_FACTOR and "sig_leap" in dict(rule.columns)
    later = sim.simulate("none", 400.0, 11)  # another drive, cold start included: no leap beyond the clean limits
    assert _flags(rule, state, later).mean() < 0.001
    temps = later.data[later.can_id == COOLANT_ID, 0]
    assert temps[-1] - 10 >= temps.min()  # the lowered value stays inside what the drive shows
    attacked, rows = _lowered(later, 300.0, 330.0, 10)
    flags = _flags(rule, state, attacked)[rows]
    assert flags[:48].all()  # the onset, and the frames the longer lags still reach back over
    without = PlausibilityRule(range_margin=rule.range_margin)  # partners, states, range: none of them sees it
    assert _flags(without, state, attacked)[rows].mean() < 0.05


def test_sig_leap_streams_chunk_by_chunk_as_one_shot_and_old_tables_have_no_limits(long_drive):
    attacked, rows = _lowered(sim.simulate("none", 200.0, 5), 100.0, 120.0, 10)
    whole = SignalFeaturizer(long_drive.signals).transform(attacked.can_id, attacked.data)
    fz = SignalFeaturizer(long_drive.signals)
    parts = [fz.transform(attacked.can_id[i:i + 777], attacked.data[i:i + 777]) for i in range(0, len(attacked), 777)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert whole[rows[0], LEAP] > 0.25 and whole[rows[0] - 1, LEAP] == 0.0
    old = signals_to_dicts(long_drive.signals)
    for row in old:
        del row["max_change"]  # a table saved before sig_leap
    again = SignalFeaturizer(signals_from_dicts(old)).transform(attacked.can_id, attacked.data)
    assert not again[:, LEAP].any()
    np.testing.assert_array_equal(np.delete(again, LEAP, 1), np.delete(whole, LEAP, 1))


def test_the_limits_skip_the_hole_where_attack_frames_were_cut_out(long_drive):
    """Clean driving taken from an attack capture lacks the attacked ID's frames during the attack; the change across
    that hole took minutes, and counted as one frame's it would raise the limit to what the warm-up does in minutes."""
    drive = sim.simulate("none", LONG_DRIVE_S + 120.0, 3)
    # byte 1 of the temperature message (a second temperature, 45 to 95) warms up over the first 10 minutes
    hole = (drive.can_id == COOLANT_ID) & (drive.timestamp >= 300.0) & (drive.timestamp < 600.0)
    holed = FeatureState.fit(drive.select(np.flatnonzero(~hole)), signals=True)

    def limits(state: FeatureState) -> list[float]:
        return next(s.max_change for s in state.signals if s.can_id == COOLANT_ID and s.start == 8)

    whole = limits(long_drive)
    temps = drive.data[drive.can_id == COOLANT_ID, 1].astype(float)
    rows = np.flatnonzero(drive.can_id == COOLANT_ID)
    across = abs(temps[np.searchsorted(rows, np.flatnonzero(hole)[-1]) + 1]
                 - temps[np.searchsorted(rows, np.flatnonzero(hole)[0]) - 1])
    assert across > 4 * whole[0]  # the hole spans a change the signal never makes from one frame to the next
    assert limits(holed)[0] <= whole[0]


def test_a_rule_alert_names_the_checks_its_frame_fails(long_drive):
    """An engineer reading an alert needs the reason: the rate limit at an in-range onset, the range for a coolant at
    full scale, nothing on clean frames (``ids detect`` / ``ids monitor`` put these in each rule alert)."""
    from fastmaml.apps.ids.can.baselines import CHECKS

    rule = PlausibilityRule.for_state(long_drive)
    later = sim.simulate("none", 400.0, 11)
    lowered, rows = _lowered(later, 300.0, 330.0, 10)
    full = later.select(np.arange(len(later)))
    full.data[rows, 0] = 0xFF
    fz = FrameFeaturizer(long_drive)
    names = fz.feature_names
    onset = rule.checks(names, fz.transform(lowered)[rows[:1]])[0]
    assert onset == [CHECKS["sig_leap"]]
    fz = FrameFeaturizer(long_drive)
    assert CHECKS["sig_range"] in rule.checks(names, fz.transform(full)[rows[5:6]])[0]
    fz = FrameFeaturizer(long_drive)
    clean = fz.transform(later)
    assert sum(map(len, rule.checks(names, clean[rows]))) == 0


def test_the_streamed_plausibility_rule_carries_its_checks(tmp_path):
    """``ids detect`` / ``ids monitor`` fit the union rule on the clean capture through the traffic's stream_rules;
    the plausibility flags function brings the checks with it, and they agree with its flags frame by frame."""
    from fastmaml.apps.ids.registry import TRAFFIC

    clean = sim.simulate("none", 60.0, 3)
    sim.write_candump(clean, tmp_path / "clean.log")
    state = FeatureState.fit(clean, signals=True)
    fn = TRAFFIC["can"].stream_rules(state, tmp_path / "clean.log")["plausibility"]
    drive = sim.simulate("masquerade", 30.0, 9)
    x = FrameFeaturizer(state).transform(drive)
    flags, checks = fn(x), fn.checks(x)
    assert flags.any()  # the masquerade disagrees with its partners: something to explain
    assert [bool(c) for c in checks] == flags.tolist()
    from fastmaml.apps.ids.can.baselines import CHECKS
    assert any(CHECKS["sig_residual"] in c for c in checks)
