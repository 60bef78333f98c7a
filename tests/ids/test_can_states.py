"""Flags and states judged in their context (can/states.py, the sig_state column; issue 33).

A reverse light switched on while the car drives forwards changes no physical signal and shows a value the car
shows every day; only its combination with the gear is new. The column must see that combination, stay quiet on
clean driving after the fit, and exist only when the clean drive is long enough to have shown the combinations.
"""

import numpy as np
import pytest
import torch
from can_drive import benign_frames

from fastmaml.apps.ids.can.baselines import PlausibilityRule
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.signals import field_values, payload_words, write_field, words_to_bytes
from fastmaml.apps.ids.samples import SampleSet
from fastmaml.errors import DataError

REVERSE = 7  # the gear's code for reverse


def _drive(seconds: float, seed: int = 0, reverse_after: float = 0.0) -> FrameBatch:
    """0x100 at 20 Hz: a gear in bits [4:8] (1..5 forwards, 7 reverse, changing every few seconds) and a speed in
    [16:28]; 0x200 at 10 Hz: the reverse light in bit 3 (on exactly in reverse) and a door flag in bit 6 (random,
    rare); 0x300 at 10 Hz: a random byte (no state)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 20)
    t = np.arange(n) * 0.05
    hold = rng.integers(40, 200, n // 40 + 1)
    gear_seq = rng.choice([1, 2, 3, 4, 5, REVERSE], len(hold), p=[0.2, 0.2, 0.2, 0.2, 0.1, 0.1])
    gear = np.repeat(gear_seq, hold)[:n]
    gear[(t < reverse_after) & (gear == REVERSE)] = 1  # no reversing before then
    speed = np.clip(np.cumsum(rng.normal(0, 3, n)) % 3000 + 100, 0, 4095).round()
    w1 = write_field(write_field(np.zeros(n, np.uint64), 4, 4, gear), 16, 12, speed)
    t2 = t[::2] + 0.013
    light = (gear[::2] == REVERSE).astype(float)
    door = (np.repeat(rng.random(len(t2) // 100 + 1) < 0.1, 100)[:len(t2)]).astype(float)
    w2 = write_field(write_field(np.zeros(len(t2), np.uint64), 3, 1, light), 6, 1, door)
    w3 = rng.integers(0, 256, len(t2)).astype(np.uint64) << np.uint64(56)
    ids = np.concatenate([np.full(n, 0x100), np.full(len(t2), 0x200), np.full(len(t2), 0x300)])
    return benign_frames(np.concatenate([t, t2, t2 + 0.011]), ids, np.concatenate([w1, w2, w3]))


@pytest.fixture(scope="module")
def fitted():
    drive = _drive(2600)
    cut = int(np.searchsorted(drive.timestamp, 2000.0))
    return FeatureState.fit(drive.select(slice(0, cut)), signals=True), drive.select(slice(cut, len(drive)))


def _col(state: FeatureState, frames: FrameBatch) -> np.ndarray:
    fz = FrameFeaturizer(state)
    return fz.transform(frames)[:, fz.feature_names.index("sig_state")]


def test_the_reverse_light_gets_the_gear_as_its_context(fitted):
    state, _ = fitted
    light = next(s for s in state.states if s.can_id == 0x200 and s.start <= 3 < s.start + s.length)
    assert light.levels == [0.0, 1.0]
    context = state.states[light.context[2]] if light.context[0] == 0 else state.signals[light.context[2]]
    assert (light.context[1], context.start + context.length) == (0x100, 8)  # the gear (values up to 7: 3 bits)
    assert np.asarray(light.table).sum() > 15_000  # counted over the whole 2,000 s, not the first frames
    # the random byte is no state, and the door flag (which nothing predicts) is judged on its own frequency
    assert not any(s.can_id == 0x300 for s in state.states)
    door = next(s for s in state.states if s.can_id == 0x200 and s.start <= 6 < s.start + s.length)
    assert door.context == []


def test_a_light_against_its_gear_scores_high_and_clean_driving_does_not(fitted):
    state, later = fitted
    clean = _col(state, later)
    assert np.mean(clean > 0.25) < 0.002 and clean.max() < 0.6
    attacked = later.select(np.arange(len(later)))  # a copy (a slice would share the payloads)
    rows = np.flatnonzero(attacked.can_id == 0x200)
    words = payload_words(attacked.data[rows])
    on = field_values(words, 3, 1)
    attacked.data[rows] = words_to_bytes(write_field(words, 3, 1, 1.0 - on))  # the light inverted throughout
    score = _col(state, attacked)[rows]
    assert np.mean(score >= 0.6) > 0.9
    # the plausibility rule sees it too (and not the clean frames)
    names = FrameFeaturizer(state).feature_names
    for frames, expected in ((later, 0.0), (attacked, 0.9)):
        x = torch.from_numpy(FrameFeaturizer(state).transform(frames))
        s = SampleSet(x, torch.zeros(len(x), dtype=torch.long), ["benign"], names, "t")
        flagged = PlausibilityRule().predict_samples(s).numpy()[frames.can_id == 0x200].mean()
        assert flagged > expected if expected else flagged < 0.002


def test_sig_state_is_the_same_in_any_chunking(fitted):
    state, later = fitted
    whole = _col(state, later)
    fz = FrameFeaturizer(state)
    parts = [fz.transform(later.select(slice(a, a + 997)))[:, fz.feature_names.index("sig_state")]
             for a in range(0, len(later), 997)]
    assert np.array_equal(whole, np.concatenate(parts))


def test_states_round_trip_and_need_a_long_clean_drive(fitted):
    state, later = fitted
    again = FeatureState.from_dict(state.to_dict())
    assert np.array_equal(_col(again, later), _col(state, later))
    d = state.to_dict()
    d["states"][0]["table"] = [[1.0]]
    with pytest.raises(DataError, match="refit the FeatureState"):
        FeatureState.from_dict(d)
    old = state.to_dict()
    del old["states"]  # a state saved before states existed keeps its columns
    assert "sig_state" not in FrameFeaturizer(FeatureState.from_dict(old)).feature_names
    # 10 minutes have not shown what a car does, and the light follows the gear alone (one ID): no follower either
    short = FeatureState.fit(_drive(600), signals=True)
    assert short.states is None and "sig_state" not in FrameFeaturizer(short).feature_names


def test_a_state_the_first_minutes_never_show_is_still_found(monkeypatch):
    import fastmaml.apps.ids.can.features as features

    monkeypatch.setattr(features, "_MAX_SIGNAL_FRAMES", 20_000)  # signals are found on the first 500 s
    drive = _drive(2600, reverse_after=1000.0)  # the car first reverses after 1,000 s
    state = FeatureState.fit(drive.select(slice(0, int(np.searchsorted(drive.timestamp, 2000.0)))), signals=True)
    light = [s for s in state.states if s.can_id == 0x200 and s.start <= 3 < s.start + s.length]
    assert light and light[0].levels == [0.0, 1.0] and light[0].context


def test_a_slow_level_going_down_a_few_steps_is_no_state():
    from fastmaml.apps.ids.can.relations import frames_by_id
    from fastmaml.apps.ids.can.states import find_states

    n = 20_000  # a fuel level: 10 values, one step down every 2,000 frames, in each of two drives
    level = np.concatenate([200 - np.arange(n) // 2000, 195 - np.arange(n) // 2000]).astype(float)
    flag = (np.arange(2 * n) // 700 % 2).astype(float)  # a flag that toggles back and forth
    words = write_field(write_field(np.zeros(2 * n, np.uint64), 0, 8, level), 12, 1, flag)
    ids = np.full(2 * n, 0x3E0)
    capture = np.repeat([0, 1], n)
    states = find_states(frames_by_id(ids), words, [], capture)
    assert [(s.start, s.start + s.length) for s in states] == [(12, 13)]  # the flag, not the level
