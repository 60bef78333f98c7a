"""Coarse fields: a slow quantity the clean drive showed at 3-7 values, too few for a signal, still judged by
``sig_full`` (ROAD's coolant byte over the 145 s its folds fit on: 7 values, one step at a time, then 0xFF).
"""

import dataclasses

import numpy as np
import pytest

from fastmaml.apps.ids.can.baselines import CHECKS, PlausibilityRule
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.signals import find_coarse_fields, find_signals, payload_bits

from can_drive import benign_frames

COOLANT, OTHER = 0x20, 0x30
RATE = 50.0  # frames per second of each ID


def _capture(t0: float, seconds: float, coolant: list[int], seed: int):
    """One drive: ID 0x20 carries the coolant (byte 0, ``coolant``'s values in equal stretches), a two-valued mode
    (byte 1, four bits all set or all clear, toggling every 3 s) and a jumpy 5-valued byte (byte 2); ID 0x30 a
    smooth 16-bit speed (bytes 0-1)."""
    rng = np.random.default_rng(seed)
    t = t0 + np.arange(int(seconds * RATE)) / RATE
    cool = np.asarray(coolant)[np.minimum((np.arange(len(t)) * len(coolant)) // len(t), len(coolant) - 1)]
    mode = (((t - t0) // 3.0) % 2).astype(np.uint64) * np.uint64(0x3C)  # 4 bits at once: 0 or full scale
    jumpy = rng.choice([0, 40, 80, 120, 160], len(t)).astype(np.uint64)
    w20 = (cool.astype(np.uint64) << np.uint64(56)) | (mode << np.uint64(48)) | (jumpy << np.uint64(40))
    speed = (3000 + 2500 * np.sin((t - t0) / 4.0 + seed)).astype(np.uint64)
    w30 = speed << np.uint64(48)
    return benign_frames(np.r_[t, t + 0.5 / RATE], np.r_[np.full(len(t), COOLANT), np.full(len(t), OTHER)],
                         np.r_[w20, w30])


@pytest.fixture(scope="module")
def drives():
    # Three short drives, the coolant warm in each: 118-122 in one, 124 and 137 in the others (7 values in all).
    return [_capture(0.0, 30.0, [118, 119, 120, 121, 122], 1), _capture(100.0, 20.0, [124], 2),
            _capture(200.0, 20.0, [137], 3)]


def _bits(state_fields, can_id: int) -> set[int]:
    return set().union(*(payload_bits(f.start, f.length, f.little_endian) for f in state_fields if f.can_id == can_id))


def test_a_slow_field_of_few_values_is_coarse_and_modes_noise_and_signals_are_not(drives):
    frames = FrameBatch.concat(drives)
    sigs = find_signals(frames.can_id, frames.data, byte_order="big")
    assert not _bits(sigs, COOLANT) & set(range(8))  # 7 values: not a signal
    coarse = find_coarse_fields(frames.can_id, frames.data, sigs)
    covered = _bits(coarse, COOLANT)
    assert covered and covered <= set(range(8))  # the coolant byte; not the mode (byte 1) or the jumpy byte 2
    assert not _bits(coarse, OTHER)  # the speed is a signal, not coarse
    assert _bits(sigs, OTHER)
    assert all(f.hi < 2 ** f.length - 1 for f in coarse)  # full scale never seen: what sig_full judges by


def test_a_coarse_coolant_pinned_at_full_scale_is_flagged_and_the_rule_says_why(drives):
    state = FeatureState.fit(drives, signals=True)
    assert state.clean_seconds < 1800 and state.coarse
    assert max(max(f.max_change) for f in state.coarse if f.can_id == COOLANT) <= 2  # within a drive: one step
    later = _capture(300.0, 30.0, [124], 4)
    attacked = later.select(np.arange(len(later)))
    rows = np.flatnonzero((attacked.can_id == COOLANT) & (attacked.timestamp >= 310.0) & (attacked.timestamp < 315.0))
    attacked.data[rows, 0] = 0xFF
    fz = FrameFeaturizer(state)
    names = fz.feature_names
    full = names.index("sig_full")
    x = fz.transform(attacked)
    assert x[rows, full].all()
    assert not np.delete(x[:, full], rows).any()
    assert not FrameFeaturizer(state).transform(later)[:, full].any()  # the same drive unattacked: nothing
    rule = PlausibilityRule.for_state(state)
    assert all(CHECKS["sig_full"] in c for c in rule.checks(names, x[rows]))
    # Without the coarse fields nothing judges the byte: the same frames pass.
    bare = FrameFeaturizer(dataclasses.replace(state, coarse=[])).transform(attacked)
    assert not bare[rows, full].any()


def test_coarse_fields_survive_saving_and_older_states_load_without_them(drives, tmp_path):
    state = FeatureState.fit(drives, signals=True)
    state.save(tmp_path / "s.json")
    back = FeatureState.load(tmp_path / "s.json")
    assert [dataclasses.asdict(f) for f in back.coarse] == [dataclasses.asdict(f) for f in state.coarse]
    d = state.to_dict()
    del d["coarse"]
    assert FeatureState.from_dict(d).coarse == []
