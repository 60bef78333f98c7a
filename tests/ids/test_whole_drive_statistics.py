"""Clean statistics measured over the whole clean drive, not its first minutes (issue 33: long real captures).

Signals and partners are found on the first frames; their ranges, tails, still runs and residual scales, the
byte-change scales and inter-arrival tolerances must cover everything the clean drive shows, or the rest of a long
drive looks like an attack to the columns that judge a value against clean driving.
"""

import numpy as np

import fastmaml.apps.ids.can.features as features
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer, _Spread
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.signals import write_field, words_to_bytes


def _batch(ids: np.ndarray, words: np.ndarray, ts: np.ndarray) -> FrameBatch:
    n = len(ids)
    return FrameBatch(ts, ids.astype(np.uint32), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool),
                      np.full(n, 8, np.uint8), np.full(n, 8, np.uint8), words_to_bytes(words), np.zeros(n, np.int16),
                      ["benign"])


def _drive(n: int, seed: int = 0) -> FrameBatch:
    """0x100 at 100 Hz: a speed in bits [4:16] whose amplitude grows over the drive (town, then motorway), a 4-bit
    counter in [16:20]; 0x200: an odometer in bits [8:32] that only rises, and a temperature in [32:40] that warms
    up and then sits at its maximum; 0x300: 2 * speed + 100 in [16:32]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 0.01
    amp = np.where(np.arange(n) < n // 4, 1000.0, 1500.0)
    speed = np.round(1600 + amp * np.sin(t / 3.0) + rng.normal(0, 2, n)).clip(0, 4095)
    w1 = write_field(np.zeros(n, np.uint64), 4, 12, speed)
    w1 = write_field(w1, 16, 4, np.arange(n) % 16)
    odo = 1000 + np.cumsum(rng.random(n) < 0.3)
    temp = np.minimum(40 + np.arange(n) / (n / 10) * 50, 90).round()
    w2 = write_field(write_field(np.zeros(n, np.uint64), 8, 24, odo), 32, 8, temp)
    w3 = write_field(np.zeros(n, np.uint64), 16, 16, 2 * speed + 100)
    ids = np.tile(np.array([0x100, 0x200, 0x300]), n)
    words = np.stack([w1, w2, w3], 1).reshape(-1)
    ts = np.stack([t, t + 0.003, t + 0.006], 1).reshape(-1)
    return _batch(ids, words, ts)


def test_spread_sample_covers_the_whole_stream_whatever_the_chunking():
    rows = np.arange(100_000)
    one, many = _Spread(1000), _Spread(1000)
    one.add(rows)
    for part in np.array_split(rows, 37):
        many.add(part)
    assert len(one) <= 1000 and len(one) > 250
    assert (one.rows() == many.rows()).all()
    # spread over the stream: each fifth of it holds about a fifth of the sample
    counts = np.histogram(one.rows(), bins=5, range=(0, 100_000))[0]
    assert counts.min() > 0.12 * len(one)
    # a rolling counter's wrap (every 16th row) is seen about as often as it occurs
    assert 0.03 < np.mean(one.rows() % 16 == 15) < 0.1


def test_signal_statistics_and_scales_come_from_the_whole_drive(monkeypatch):
    # Signals are found on the first 6,000 frames (the town part); everything else must still be learned.
    monkeypatch.setattr(features, "_MAX_SIGNAL_FRAMES", 6000)
    monkeypatch.setattr(features, "_MAX_REL_FRAMES", 6000)
    drive = _drive(12_000)
    fit, later = drive.select(slice(0, 27_000)), drive.select(slice(27_000, len(drive)))
    state = FeatureState.fit(fit, signals=True)
    speed = next(s for s in state.signals if s.can_id == 0x100)
    assert speed.hi >= 3000 and speed.lo <= 200  # the motorway part, after the first 6,000 frames
    x = FrameFeaturizer(state).transform(later)
    names = FrameFeaturizer(state).feature_names
    for col in ("sig_range", "sig_edge", "xid_residual", "sig_residual"):
        assert np.mean(x[:, names.index(col)] > 0.25) < 0.005, col
    # the counter's wrap is in the byte-change scale although the sample is thinned
    assert state.delta_scale[0x100][2] >= 15


def test_a_trend_has_no_range_and_a_value_sitting_at_its_maximum_is_no_tail():
    drive = _drive(12_000)
    fit, later = drive.select(slice(0, 27_000)), drive.select(slice(27_000, len(drive)))
    state = FeatureState.fit(fit, signals=True)
    odo, temp = sorted((s for s in state.signals if s.can_id == 0x200), key=lambda s: s.start)
    assert odo.start + odo.length == 32 and temp.start + temp.length == 40
    assert odo.trend == 1 and temp.trend == 0 and temp.hi_share > 0.5  # warmed up, then at its top: no trend
    fz = FrameFeaturizer(state)
    names = fz.feature_names
    x = fz.transform(later)
    rows = later.can_id == 0x200
    # the odometer goes past its last clean value and the warm engine sits at its maximum: neither is flagged
    assert (x[rows, names.index("sig_range")] == 0).all()
    assert (x[rows, names.index("sig_edge")] == 0).all()
    # an odometer running backwards is no range question, but its jump shows
    back = later.select(np.flatnonzero(rows)[:50])
    words = np.frombuffer(back.data.tobytes(), ">u8").astype(np.uint64)
    back.data[:] = words_to_bytes(write_field(words, 8, 24, np.full(50, 900.0)))
    fz.reset()
    first = fz.transform(later.select(np.flatnonzero(rows)[:1]))  # the genuine frame before
    assert first[0, names.index("sig_jump")] == 0
    assert fz.transform(back)[0, names.index("sig_jump")] > 0.5


def test_edge_scores_a_maximum_by_how_rarely_clean_driving_sits_there():
    from fastmaml.apps.ids.can.signals import _tail_depth
    # half of the clean frames at the maximum: its tail quantiles are the maximum too, and sitting there is no tail
    assert _tail_depth(np.array([100.0]), [100.0, 100.0], 100.0, 0.5)[0] == 0
    # a maximum clean driving reached once: pinned there is as deep in the tail as it gets
    assert _tail_depth(np.array([100.0]), [95.0, 99.0], 100.0, 1e-6)[0] == 3
    assert _tail_depth(np.array([97.0]), [95.0, 99.0], 100.0, 1e-6)[0] == 1


def _ramps(n: int, seed: int) -> FrameBatch:
    """0x100: a temperature warming up (rising with the clock) in [8:16] and a noisy speed in [16:32]; 0x200: a
    second temperature, 2 x the first + 5, in [8:16], and 3 x speed in [16:32] (a real copy)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 0.01
    temp = np.floor(20 + 2 * t)
    speed = np.round(2000 + 1500 * np.sin(t / 2 + seed) + rng.normal(0, 3, n))
    w1 = write_field(write_field(np.zeros(n, np.uint64), 8, 8, temp), 16, 16, speed)
    w2 = write_field(write_field(np.zeros(n, np.uint64), 8, 8, 2 * temp + 5), 16, 16, np.minimum(3 * speed, 65535))
    ids = np.tile(np.array([0x100, 0x200]), n)
    return _batch(ids, np.stack([w1, w2], 1).reshape(-1), np.stack([t, t + 0.004], 1).reshape(-1) + 100.0 * seed)


def test_quantities_that_only_rise_within_each_drive_are_trends_and_no_partners():
    # three drives laid end to end: each one's temperatures start cold again, which is no fall of the signal
    drives = [_ramps(3000, s) for s in (1, 3, 5)]
    state = FeatureState.fit(drives, signals=True)
    temps = [s for s in state.signals if s.start <= 8 and s.start + s.length >= 16 and s.length <= 12]
    speeds = [s for s in state.signals if s.start >= 16]
    assert temps and all(s.trend == 1 for s in temps)
    # related through the clock, not the car: no partnership; the speed and its copy keep theirs
    assert all(not s.partners for s in temps)
    assert any(s.partners for s in speeds)


def test_latest_rows_is_last_index_at_chosen_rows():
    from fastmaml.apps.ids.can.relations import last_index, latest_rows

    ids = np.random.default_rng(0).integers(0, 4, 500)
    rows = np.arange(0, 500, 7)
    for cid in range(5):  # ID 4 never occurs
        assert (latest_rows(np.flatnonzero(ids == cid), rows) == last_index(ids, cid)[rows]).all()


def test_a_still_run_cut_by_the_end_of_a_drive_is_no_bound_on_stillness():
    from fastmaml.apps.ids.can.signals import _longest_run

    rising_then_still = np.array([1, 1, 2, 2, 2, 3] + [4] * 8)
    assert _longest_run(rising_then_still) == 0  # still to the end, longer than twice any run that ended: no bound
    assert _longest_run(rising_then_still[:10]) == 4  # a short still end is taken as it is
    same = np.ones(13, bool)
    same[4] = False  # two drives: [1 x 5] then [2 x 8, 3]; runs do not cross from one to the next
    assert _longest_run(np.array([1] * 5 + [2] * 8 + [3]), same) == 8


def test_a_warm_engine_sitting_still_after_the_cut_is_not_stuck_but_a_held_speed_is():
    """The simulated coolant warms for 300 s and then sits still to the drive's end: after a cut at 700 s it stays
    still longer than anything before the cut, which is clean driving, not a stuck value. A speed held for two
    minutes is not."""
    from fastmaml.apps.ids.can import sim

    drive = sim.simulate("none", 1200.0, 5)
    cut = int(np.searchsorted(drive.timestamp, 700.0))
    state = FeatureState.fit(drive.select(slice(0, cut)), signals=True)
    later = drive.select(slice(cut, len(drive)))
    fz = FrameFeaturizer(state)
    stuck = fz.transform(later)[:, fz.feature_names.index("sig_stuck")]
    assert stuck[later.can_id == sim.ID_TEMP].max() <= 0.25
    held = later.select(np.arange(len(later)))
    rows = np.flatnonzero((held.can_id == sim.ID_SPEED) & (held.timestamp < held.timestamp[0] + 120.0))
    held.data[rows, :6] = held.data[rows[0], :6]  # the speed bytes frozen (counter and checksum left alone)
    stuck = FrameFeaturizer(state).transform(held)[:, fz.feature_names.index("sig_stuck")]
    assert stuck[rows[-100:]].min() > 0.5


def test_fresh_rows_drops_stale_and_cross_capture_partners():
    from fastmaml.apps.ids.can.relations import frame_spacings, fresh_rows

    partner = np.array([0, 10, 20, 30, 200, 210])  # every 10 frames, a hole from 30 to 200
    rows = np.array([5, 35, 150, 205, 215])
    spacing = frame_spacings({7: partner})[7]
    assert spacing == 10.0
    assert fresh_rows(partner, rows, spacing).tolist() == [0, 30, -1, 200, 210]
    capture = np.zeros(220, np.int64)
    capture[205:] = 1
    assert fresh_rows(partner, rows, spacing, capture).tolist() == [0, 30, -1, -1, 210]


def test_a_masqueraded_partner_left_out_of_the_clean_frames_does_not_inflate_residual_scales():
    """A labelled capture's clean frames have a hole where the wheel speeds were masqueraded (labelled attack, left
    out); the vehicle speed's frames in that hole are clean, but their latest clean wheel speed is seconds old. The
    speed's residual scale must come out as it does without the attack."""
    from fastmaml.apps.ids.can import sim

    drive = sim.simulate("none", 400.0, 4)
    attacked = drive.select(np.arange(len(drive)))
    attacked.label_names = ["benign", "correlated_signal"]
    hole = (attacked.can_id == sim.ID_WHEELS) & (attacked.timestamp > 100.0) & (attacked.timestamp < 120.0)
    attacked.data[hole, :4] = 0
    attacked.label = np.where(hole, 1, 0).astype(np.int16)

    def speed_scales(frames: FrameBatch) -> list[float]:
        state = FeatureState.fit(frames, signals=True)
        return [s.resid_scale for s in state.signals if s.can_id == sim.ID_SPEED and s.partners]

    clean, with_hole = speed_scales(drive), speed_scales(attacked)
    assert clean and len(clean) == len(with_hole)
    assert max(w / c for w, c in zip(with_hole, clean)) < 1.5
