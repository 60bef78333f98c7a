"""Bus-context and payload-consistency CAN features: delta_ratio, xid_residual, silence, silent_ids."""

import numpy as np
import pytest
import torch

from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.features import FRAME_FEATURES, FeatureState, FrameFeaturizer, build_sample_set, frame_features


@pytest.fixture(scope="module")
def state() -> FeatureState:
    return FeatureState.fit(sim.simulate("none", 30.0, 21))


def col(name: str) -> int:
    return FRAME_FEATURES.index(name)


def test_fit_learns_redundancy_and_skips_counters(state):
    # The simulator repeats vehicle speed in the wheel-speed message: that relation must be found
    # from benign traffic alone, in both directions.
    pairs = {(int(r[0]), int(r[2])) for r in state.relations}
    assert (sim.ID_SPEED, sim.ID_WHEELS) in pairs and (sim.ID_WHEELS, sim.ID_SPEED) in pairs
    # Rolling counters (byte 6) and checksums (byte 7, word b6b7 = signal 11) of protected messages
    # run in step across ECUs within one capture, but are not redundant signals.
    protected = {cid for cid, _, p in sim.ECUS if p}
    assert not any((int(r[0]) in protected and int(r[1]) in (6, 7, 11))
                   or (int(r[2]) in protected and int(r[3]) in (6, 7, 11)) for r in state.relations)
    assert set(state.tolerances) == set(sim.PERIODS)
    for cid, p in sim.PERIODS.items():
        assert p < state.tolerances[cid] < 1.3 * p
    assert all(len(v) == 8 for v in state.delta_scale.values())


def test_two_values_that_only_count_up_are_not_a_relation():
    """Two slow counters (the CrySyS trace's 0x410 byte 3 and 0x290 byte 2: the same count, one in a 6-bit field)
    fit each other with R^2 = 1 while both rise, and break where the narrow one wraps; a fit that has not seen the
    wrap must not take them for one quantity. A quantity that rises and falls is still related."""
    from fastmaml.apps.ids.can.relations import fit_relations, value_trend

    n = 3000  # two IDs alternating, 1,500 frames each
    ids = np.where(np.arange(n) % 2 == 0, 0x410, 0x290)
    t = np.arange(n) // 2
    count = 20 + t // 40  # one step every 40 frames, 20 -> 57: never wraps in this fit
    speed = (60 + 50 * np.sin(t / 90.0)).round()  # rises and falls
    data = np.zeros((n, 8), np.uint8)
    data[:, 3] = np.where(ids == 0x410, count + 40, count % 64)
    data[:, 0] = speed
    assert value_trend(count.astype(float)) == 1 and value_trend(speed) == 0
    rel = fit_relations(ids, data)
    pairs = {(int(r[0]), int(r[1]), int(r[3])) for r in rel}
    # Speed (byte 0, or word b0b1 = signal 8) in both directions; the counters (byte 3, word b2b3 = 9) not.
    assert {(0x410, 0, 0), (0x290, 0, 0)} <= pairs and all(j in (0, 8) and k in (0, 8) for _, j, k in pairs)
    # Without the trend test the counters are taken as one quantity (what the fit did before).
    import fastmaml.apps.ids.can.relations as R
    keep, R.value_trend = R.value_trend, (lambda v, same=None: 0)
    try:
        assert (3, 3) in {(int(r[1]), int(r[3])) for r in R.fit_relations(ids, data)}
    finally:
        R.value_trend = keep


def test_suspension_shows_as_silence_and_long_gap(state):
    r = sim.simulate_detailed("suspension", 30.0, 22)
    f = r.frames
    x = frame_features(f, state).numpy()
    att = f.is_attack()
    # While the victim is silent every frame reports it; benign frames report nothing overdue.
    assert np.median(x[att, col("silence")]) > 0.8 and np.quantile(x[~att, col("silence")], 0.99) < 0.05
    assert (x[att, col("silent_ids")] >= 0.25).mean() > 0.95 and (x[~att, col("silent_ids")] == 0).mean() > 0.99
    # The victim's first frame after each silent interval: inter-arrival far above its period.
    victim = np.flatnonzero(f.can_id == r.target_id)
    for _, end in r.intervals:
        resumed = victim[np.searchsorted(f.timestamp[victim], end)]
        assert x[resumed, col("dt_log_ratio")] == pytest.approx(1.0)


def test_window_silence_separates_suspension_windows(state):
    s = build_sample_set(sim.simulate("suspension", 30.0, 23), state, window=16)
    peak = s.features[:, :, col("silence")].amax(1)
    ben, att = peak[s.labels == 0], peak[s.labels == 1]
    # "any" labelling marks a window as soon as its last frame falls in the silent interval, before
    # the victim is overdue; all others must stand above every benign window.
    assert (att > ben.max()).float().mean() > 0.95


def test_masquerade_frames_disagree_with_redundant_ids(state):
    r = sim.simulate_detailed("masquerade", 30.0, 24)
    f = r.frames
    x = frame_features(f, state).numpy()
    att = f.is_attack()
    moving = sim.decode_speed(f.data) > 5.0  # a 0.6-0.8 x speed is only wrong when the car moves
    victim_ben = (~att) & (f.can_id == r.target_id)
    fake = att & moving
    assert fake.sum() > 100
    assert np.quantile(x[victim_ben, col("xid_residual")], 0.99) < 0.5
    assert (x[fake, col("xid_residual")] > 0.9).mean() > 0.95
    # Windows: the worst residual in a masquerade window beats the benign windows' 99th percentile.
    s = build_sample_set(f, state, window=16)
    peak = s.features[:, :, col("xid_residual")].amax(1)
    assert (peak[s.labels == 1] > torch.quantile(peak[s.labels == 0], 0.99)).float().mean() > 0.9


def test_delta_ratio_flags_interleaved_spoofed_values(state):
    f = sim.simulate("spoof_speed", 30.0, 25)
    x = frame_features(f, state).numpy()
    att = f.is_attack()
    d = x[:, col("delta_ratio")]
    # A spoofed speed 20-40 km/h off the genuine one jumps against the benign per-byte change scale.
    assert np.median(d[att]) > 0.5 and np.quantile(d[(~att) & (f.can_id != sim.ID_SPEED)], 0.99) < 0.3


def test_context_features_stream_identically(state):
    f = sim.simulate("suspension", 15.0, 26)
    one = FrameFeaturizer(state).transform(f)
    fz = FrameFeaturizer(state)
    parts = [fz.transform(f.select(slice(a, a + 333))) for a in range(0, len(f), 333)]
    assert np.array_equal(one, np.concatenate(parts))
    assert one[:, col("silence")].max() > 0.5  # the carried state was exercised, not all zeros


def test_version1_state_still_loads(state):
    d = state.to_dict()
    for k in ("tolerances", "delta_scale", "relations"):
        d.pop(k)
    d["version"] = 1
    old = FeatureState.from_dict(d)
    assert old.relations == [] and old.tolerances == {}
    x = frame_features(sim.simulate("masquerade", 10.0, 27), old).numpy()
    assert (x[:, col("xid_residual")] == 0).all() and (x[:, col("silence")] == 0).all()
    assert FeatureState.from_dict(state.to_dict()) == state


def test_second_predecessor_features_match_a_brute_force_and_any_chunking():
    fit = sim.simulate("none", 6.0, 0)
    b = sim.simulate("replay", 6.0, 4)
    state = FeatureState.fit(fit)
    full = FrameFeaturizer(state).transform(b)
    for size in (1, 3, 250):
        fz = FrameFeaturizer(state)
        parts = [fz.transform(b.select(slice(i, i + size))) for i in range(0, len(b), size)]
        assert np.allclose(np.concatenate(parts), full)
    dt2, d2 = FRAME_FEATURES.index("dt2_log_ratio"), FRAME_FEATURES.index("delta2_ratio")
    seen: dict[int, list[int]] = {}
    for k in range(len(b)):
        cid = int(b.can_id[k])
        hist = seen.setdefault(cid, [])
        if len(hist) >= 2:
            j = hist[-2]
            period = state.periods.get(cid, state.default_period)
            want = np.clip(np.log2(max(b.timestamp[k] - b.timestamp[j], 1e-9) / period) / 4, -2, 1)
            assert full[k, dt2] == pytest.approx(want, abs=1e-5)
            scale = np.array(state.delta_scale.get(cid, [255.0] * 8))
            rel = (np.abs(b.data[k, :8].astype(int) - b.data[j, :8].astype(int)) / (scale + 1)).max()
            assert full[k, d2] == pytest.approx(min(np.log2(1 + rel) / 4, 1.0), abs=1e-5)
        else:
            assert full[k, d2] == 0.0
        hist.append(k)


def test_second_predecessor_tells_the_replayed_frame_from_the_genuine_one_after_it():
    from fastmaml.apps.ids.can.frames import CanFrame, FrameBatch

    # One ID every 10 ms whose first byte ramps by 1 per frame (200 frames: enough for a change scale of its own,
    # features.MIN_SCALE_FRAMES); an old frame (value 10) replayed at 505 ms.
    def frames(replay: bool):
        out = [CanFrame(0.01 * i, 0x100, data=bytes([i % 256, 0, 0, 0, 0, 0, 0, 0]), label="benign") for i in range(200)]
        if replay:
            out.insert(51, CanFrame(0.505, 0x100, data=bytes([10, 0, 0, 0, 0, 0, 0, 0]), label="replay"))
        return FrameBatch.from_frames(out)

    state = FeatureState.fit(frames(False))
    x = FrameFeaturizer(state).transform(frames(True))
    d1, d2 = FRAME_FEATURES.index("delta_ratio"), FRAME_FEATURES.index("delta2_ratio")
    injected, after = x[51], x[52]
    # Against the frame one back both look like jumps; against two back only the injected one does.
    assert injected[d1] > 0.5 and after[d1] > 0.5
    assert injected[d2] > 0.5 and after[d2] < 0.2


def test_a_rare_ids_byte_changes_are_judged_against_the_full_byte_range():
    """An ID with fewer than MIN_SCALE_FRAMES clean frames has no change scale of its own (a 99.9% quantile of a few
    dozen changes is their maximum): another drive's first change of a byte it held still is not an attack-sized
    jump. A frequent ID keeps its own scale, against which the same change is."""
    from fastmaml.apps.ids.can.features import MIN_SCALE_FRAMES
    from fastmaml.apps.ids.can.frames import FrameBatch
    from can_drive import benign_frames

    n_fast, n_rare = 4 * MIN_SCALE_FRAMES, MIN_SCALE_FRAMES // 2  # 0x100 at 100 Hz, 0x200 at 12.5 Hz, both bytes still
    ts = np.r_[np.arange(n_fast) * 0.01, np.arange(n_rare) * 0.08]
    ids = np.r_[np.full(n_fast, 0x100), np.full(n_rare, 0x200)]
    clean = benign_frames(ts, ids, np.full(len(ids), 0x1122334455667788, np.uint64))
    state = FeatureState.fit([clean])
    assert 0x100 in state.delta_scale and 0x200 not in state.delta_scale
    # Next: each ID's byte 0 moves by 16 once.
    t0 = float(ts.max()) + 0.01
    nxt = benign_frames(np.array([t0, t0 + 0.005]), np.array([0x100, 0x200]),
                        np.array([0x2122334455667788, 0x2122334455667788], np.uint64))
    both = FrameBatch.concat([clean, nxt])
    x = FrameFeaturizer(state).transform(both)
    col = FRAME_FEATURES.index("delta_ratio")
    fast, rare = x[-2, col], x[-1, col]
    assert fast == pytest.approx(1.0)  # log2(1 + 16 / (0 + 1)) / 4, clipped: an attack-sized jump
    assert rare == pytest.approx(np.log2(1 + 16 / 256) / 4)  # against the full byte range: a small change
