"""A short clean drive judges only flags that follow states on other IDs (can/states.py, keep_followers; issue 33).

ROAD's reverse-light masquerade clears the light while the car reverses. Two minutes of clean driving cannot show
every combination of a car's flags (judging them by the table raised thousands of false alerts an hour on the next
recording), but they can show the light switching together with the gear and the reversing camera. A light that
contradicts all of them for longer than they lag at a switch is the masquerade; a moment clean driving never showed
(the car in a forward gear, when it only parked and reversed) is not judged.
"""

import numpy as np
import pytest
from can_drive import benign_frames

from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.signals import field_values, payload_words, write_field, words_to_bytes
from fastmaml.apps.ids.can.states import FOLLOW_MIN_RUN, contradicted, follow_map
from fastmaml.errors import DataError

PARK, REVERSE = 0, 7
LIGHT = (0x200, 3)  # the reverse light: ID, bit


def _drive(seconds: float, seed: int = 0, gears: tuple[int, ...] = (PARK, REVERSE)) -> FrameBatch:
    """0x100 at 20 Hz: the gear in bits [4:8], held 5-20 s; 0x150 at 10 Hz: bit 2 "not parked"; 0x180 at 10 Hz:
    bit 5 the reversing camera (on in reverse), bit 6 a rare random flag; 0x200 at 10 Hz: the reverse light in bit 3
    (one frame behind the gear) and a random byte; 0x300: a random byte."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 20)
    t = np.arange(n) * 0.05
    hold = rng.integers(100, 400, n // 100 + 1)
    gear = np.repeat(np.resize(rng.permutation(np.repeat(gears, len(hold))), len(hold)), hold)[:n]
    slow = t[::2]
    g = gear[::2]
    lagged = np.r_[g[:1], g[:-1]]
    cols = {
        0x100: (t, write_field(np.zeros(n, np.uint64), 4, 4, gear.astype(float))),
        0x150: (slow + 0.003, write_field(np.zeros(len(slow), np.uint64), 2, 1, (g != PARK).astype(float))),
        0x180: (slow + 0.007, write_field(write_field(np.zeros(len(slow), np.uint64), 5, 1, (g == REVERSE) * 1.0),
                                          6, 1, np.repeat(rng.random(len(slow) // 200 + 1) < 0.2, 200)[:len(slow)]
                                          * 1.0)),
        0x200: (slow + 0.013, write_field(write_field(np.zeros(len(slow), np.uint64), 3, 1,
                                                      (lagged == REVERSE) * 1.0), 56, 8,
                                          rng.integers(0, 256, len(slow)).astype(float))),
        0x300: (slow + 0.021, rng.integers(0, 256, len(slow)).astype(np.uint64) << np.uint64(56)),
    }
    return benign_frames(np.concatenate([c[0] for c in cols.values()]),
                         np.concatenate([np.full(len(c[0]), k) for k, c in cols.items()]),
                         np.concatenate([c[1] for c in cols.values()]))


@pytest.fixture(scope="module")
def short_fit():
    return FeatureState.fit(_drive(150), signals=True)  # two and a half minutes of parking and reversing


def _col(state: FeatureState, frames: FrameBatch) -> np.ndarray:
    fz = FrameFeaturizer(state)
    return fz.transform(frames)[:, fz.feature_names.index("sig_state")]


def _light(state: FeatureState):
    return next(s for s in state.states if s.can_id == LIGHT[0] and s.start <= LIGHT[1] < s.start + s.length)


def _set_light(frames: FrameBatch, where: np.ndarray, value: float) -> FrameBatch:
    out = frames.select(np.arange(len(frames)))  # a copy
    rows = np.flatnonzero((out.can_id == LIGHT[0]) & where)
    out.data[rows] = words_to_bytes(write_field(payload_words(out.data[rows]), LIGHT[1], 1, value))
    return out


def _gear_at(frames: FrameBatch) -> np.ndarray:
    """The gear of the latest 0x100 frame at each frame."""
    rows = np.flatnonzero(frames.can_id == 0x100)
    gear = field_values(payload_words(frames.data[rows]), 4, 4)
    return gear[np.maximum(np.searchsorted(rows, np.arange(len(frames)), side="right") - 1, 0)]


def test_the_light_follows_the_gear_and_the_camera_and_nothing_else_is_judged(short_fit):
    light = _light(short_fit)
    assert light.judge == "follows"
    followed = {short_fit.states[f[0]].can_id for f in light.follows}
    assert {0x100, 0x180} <= followed and 0x300 not in followed
    assert light.run >= FOLLOW_MIN_RUN
    # the random flag on 0x180 switches too, but nothing names it: only followers are judged
    assert all(s.judge != "table" for s in short_fit.states)
    assert [s.judge for s in short_fit.states].count("follows") <= 3  # the light, the camera, the not-parked bit


def test_a_cleared_light_while_reversing_is_caught_and_clean_driving_is_not(short_fit):
    later = _drive(300, seed=1)  # another drive, parking and reversing
    assert _col(short_fit, later).max() == 0.0
    in_reverse = _gear_at(later) == REVERSE
    attacked = _set_light(later, in_reverse, 0.0)
    score = _col(short_fit, attacked)
    rows = np.flatnonzero((attacked.can_id == LIGHT[0]) & in_reverse)
    assert score[rows].mean() > 0.8  # all but each reversing stretch's first `run` frames
    assert score[np.flatnonzero(~in_reverse)].max() == 0.0


def test_a_contradiction_as_short_as_a_switch_lag_is_not_an_alert(short_fit):
    later = _drive(300, seed=2)
    rows = np.flatnonzero(later.can_id == LIGHT[0])
    gear = _gear_at(later)[rows]
    starts = rows[np.flatnonzero((gear[1:] == REVERSE) & (gear[:-1] != REVERSE)) + 1]
    late = np.zeros(len(later), bool)
    for s in starts:  # the light comes on 3 frames late at every switch into reverse
        late[rows[(rows >= s)][:3]] = True
    assert late.any()
    assert _col(short_fit, _set_light(later, late, 0.0)).max() == 0.0


def test_a_gear_clean_driving_never_showed_is_not_judged(short_fit):
    forwards = _drive(300, seed=3, gears=(1, 2, 3, PARK))  # driving forwards: "not parked" without reversing
    assert _col(short_fit, forwards).max() == 0.0


def test_followers_round_trip_stream_in_chunks_and_refuse_corrupt_files(short_fit):
    later = _set_light(_drive(200, seed=4), _gear_at(_drive(200, seed=4)) == REVERSE, 0.0)
    whole = _col(short_fit, later)
    assert whole.max() == 1.0
    again = FeatureState.from_dict(short_fit.to_dict())
    assert np.array_equal(_col(again, later), whole)
    fz = FrameFeaturizer(short_fit)
    parts = [fz.transform(later.select(slice(a, a + 313)))[:, fz.feature_names.index("sig_state")]
             for a in range(0, len(later), 313)]
    assert np.array_equal(np.concatenate(parts), whole)  # the run of a contradiction carries across chunks
    d = short_fit.to_dict()
    k = next(i for i, s in enumerate(d["states"]) if s["judge"] == "follows")
    d["states"][k]["follows"][0] = [len(d["states"]) + 5, 0, 1]
    with pytest.raises(DataError, match="refit the FeatureState"):
        FeatureState.from_dict(d)
    d["states"][k]["follows"], d["states"][k]["judge"] = [], "sometimes"
    with pytest.raises(DataError, match="refit the FeatureState"):
        FeatureState.from_dict(d)


def test_follow_map_and_contradicted():
    # context levels: 0 -> state 0 (500 frames), 1 -> state 1 (99.5%), 2 -> mixed, 3 -> too few frames
    table = np.array([[500, 1, 30, 2, 0], [0, 199, 30, 3, 0], [0, 0, 0, 0, 0]], float)
    assert follow_map(table).tolist() == [0, 1, -1, -1]
    assert follow_map(np.array([[500, 400, 0], [1, 0, 0], [0, 0, 0]], float)) is None  # names one level only
    m = [[9, 0, 1, -1, -1], [8, 1, 0]]  # two contexts: the second inverted
    s_code = np.array([0, 0, 1, 1, 0, 2])
    c1 = np.array([0, 1, 1, 0, 3, 0])
    c2 = np.array([1, 0, 0, -1, 1, 1])
    # frame 0: both say 0; 1: both say 1 (state 0: contradicted); 2: agree; 3: the second stale (not judged);
    # 4: the first at a level that names nothing (not judged); 5: a state level clean driving never showed
    assert contradicted(s_code, [c1, c2], m, 2).tolist() == [False, True, False, False, False, False]


def test_contradiction_runs_restart_when_the_flag_takes_another_level():
    from fastmaml.apps.ids.can.states import _level_changes, _run_lengths

    wrong = np.array([True, True, False, True, True, True])
    codes = np.array([1, 1, 1, 1, 0, 0])  # the flag goes from 1 to 0 at the fifth frame: a new contradiction
    assert _run_lengths(wrong, 3).tolist() == [4, 5, 0, 1, 2, 3]
    assert _run_lengths(wrong, 3, _level_changes(codes, 1)).tolist() == [4, 5, 0, 1, 1, 2]
    assert _run_lengths(wrong, 3, _level_changes(codes, 0)).tolist() == [1, 2, 0, 1, 1, 2]  # restarts at once


def test_a_gear_clean_driving_showed_only_held_names_the_flag_once_the_gear_is_followed():
    # parking and reversing (the switches), then a separate drive forwards with the light off (no switch)
    state = FeatureState.fit([_drive(150), _drive(150, seed=5, gears=(1, 2, 3))], signals=True)
    light = _light(state)
    gear = next(f for f in light.follows if state.states[f[0]].can_id == 0x100)
    gear_levels = state.states[gear[0]].levels
    assert gear[1 + gear_levels.index(2.0)] == 0  # second gear names "light off", from held frames alone
    forwards = _drive(300, seed=6, gears=(1, 2, 3, PARK, REVERSE))
    assert _col(state, forwards).max() == 0.0
    in_forward_gear = np.isin(_gear_at(forwards), [1, 2, 3])
    lit = _set_light(forwards, in_forward_gear, 1.0)  # ROAD's reverse_light_on: the light on while driving forwards
    rows = np.flatnonzero((lit.can_id == LIGHT[0]) & in_forward_gear)
    assert _col(state, lit)[rows].mean() > 0.8
