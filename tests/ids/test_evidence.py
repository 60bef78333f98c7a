"""Evidence over time (apps/ids/evidence.py): the per-stream CUSUM, its calibration to a false-alert budget, and
the judgement of alerts against labels."""

import math

import numpy as np
import pytest

from fastmaml.apps.ids import evidence as E
from fastmaml.errors import DataError


def _naive_cusum(score, clock, key, ev):
    """Frame-by-frame reference: S per key, alert above the threshold, reset and hold-off."""
    level, quiet, alerts = {}, {}, []
    for i, (s, t, k) in enumerate(zip(score, clock, key)):
        if t < quiet.get(k, -math.inf):
            level[k] = 0.0
            continue
        v = max(0.0, level.get(k, 0.0) + min(max(s, -ev.clip), ev.clip) - ev.drift)
        if v > ev.threshold:
            alerts.append(i)
            level[k], quiet[k] = 0.0, t + ev.holdoff_s
        else:
            level[k] = v
    return alerts


def _stream(n=6000, seed=0, ids=(1, 2, 3)):
    rng = np.random.default_rng(seed)
    key = rng.choice(ids, n)
    clock = np.cumsum(rng.exponential(0.002, n))
    score = rng.normal(-1.0, 2.0, n)
    return score, clock, key


@pytest.mark.parametrize("threshold,drift", [(4.0, 0.0), (6.0, 0.3), (2.0, -0.2)])
def test_cusum_matches_frame_by_frame_reference(threshold, drift):
    score, clock, key = _stream()
    ev = E.Evidence(threshold=threshold, clip=3.0, drift=drift, holdoff_s=0.05)
    got, _ = E.cusum_alerts(score, clock, key, ev)
    want = _naive_cusum(score, clock, key, ev)
    assert len(want) > 5
    assert got.index.tolist() == want


def test_cusum_any_chunking_gives_one_pass():
    score, clock, key = _stream(seed=1)
    ev = E.Evidence(threshold=5.0, clip=4.0, holdoff_s=0.1)
    whole, _ = E.cusum_alerts(score, clock, key, ev)
    state, parts = None, []
    for a, b in [(0, 7), (7, 1000), (1000, 1001), (1001, 4500), (4500, 6000)]:
        got, state = E.cusum_alerts(score[a:b], clock[a:b], key[a:b], ev, state)
        parts.append(got.index + a)
        assert np.all(got.onset <= got.time)
    assert np.concatenate(parts).tolist() == whole.index.tolist()


def test_gpd_fit_recovers_shape_and_scale():
    rng = np.random.default_rng(0)
    xi, sigma = 0.2, 1.5
    u = rng.random(4000)
    y = sigma / xi * (u ** -xi - 1)  # GPD by inversion
    fx, fs = E.gpd_fit(y)
    assert abs(fx - xi) < 0.06 and abs(fs - sigma) / sigma < 0.08


def test_calibration_on_a_short_capture_extrapolates_the_rate_of_a_long_one():
    rng = np.random.default_rng(3)
    def clean(seconds):
        n = int(seconds * 300)
        key = rng.choice(np.arange(6), n)
        return rng.normal(-1.5, 1.5, n), np.linspace(0, seconds, n), key
    ev = E.Evidence(clip=4.0)
    # 30 s of clean traffic cannot show 30 alerts an hour (0.25 expected): the tail fit extrapolates.
    cal = E.calibrate(*clean(30), budget_per_hour=30.0, ev=ev)
    assert cal.method == "tail" and cal.excursions >= E.MIN_TAIL_EXCURSIONS
    assert cal.clean_alerts == 0 and cal.verify_hours == pytest.approx(0.1)
    assert cal.extrapolated_per_hour == pytest.approx(30.0, rel=1e-6)
    lo, hi = cal.extrapolated_ci95
    assert lo <= cal.extrapolated_per_hour <= hi
    # Measured on an hour of the same traffic, the threshold keeps the budget (within the fit's noise).
    score, clock, key = clean(3600)
    assert E.count_alerts(score, clock, key, ev.with_threshold(cal.threshold)) <= 45
    # A threshold set on the long capture holds its budget there.
    long_cal = E.calibrate(score, clock, key, budget_per_hour=30.0, ev=ev, bootstrap=20)
    assert E.count_alerts(score, clock, key, ev.with_threshold(long_cal.threshold)) <= 60


def test_calibration_without_excursions_says_so():
    clock = np.linspace(0, 30, 3000)
    cal = E.calibrate(np.full(3000, -5.0), clock, np.zeros(3000, np.int64), budget_per_hour=10.0)
    assert cal.method == "max" and cal.excursions == 0 and cal.clean_alerts == 0
    assert cal.upper_bound_per_hour == pytest.approx(3 / (30 / 3600))
    assert "verifying <= 10/h needs 0.3 h (18 min)" in cal.summary()
    with pytest.raises(DataError, match="budget"):
        E.calibrate(np.zeros(3), np.arange(3.0), np.zeros(3, np.int64), 0.0)


def test_judge_counts_occurrences_per_key_with_its_own_gap_and_only_alerts_that_saw_the_attack():
    # Key 1 at 10 Hz, key 2 at 100 Hz, 10 s; key 1 attacked 4-5 s (10 frames, 0.1 s apart: one occurrence
    # although the default gap is 0.05 s), key 2 attacked 7-7.5 s.
    t1, t2 = np.arange(0, 10, 0.1), np.arange(0, 10, 0.01)
    clock = np.r_[t1, t2]
    key = np.r_[np.ones(len(t1), np.int64), np.full(len(t2), 2)]
    truth = np.r_[(t1 >= 4) & (t1 < 5), (t2 >= 7) & (t2 < 7.5)]
    order = np.argsort(clock, kind="stable")
    clock, key, truth = clock[order], key[order], truth[order]
    occ = E.occurrences(truth, clock, key, E.key_gaps(clock, key, 0.05))
    assert [(o.key, o.frames) for o in occ] == [(1, 10), (2, 50)]
    # Alerts: key 1 at 4.3 s (true), key 2 at 4.3 s (false: key 2 is not attacked then), key 2 at 7.2 s (true).
    alerts = E.Alerts(np.array([1, 2, 3]), np.array([4.3, 4.3, 7.2]), np.array([1, 2, 2]), np.array([4.0, 4.2, 7.0]))
    j = E.judge(alerts, truth, clock, key)
    assert j.caught == 2 and j.false_alerts == 1
    assert [round(o.delay_s, 6) for o in j.occurrences] == [0.3, 0.2]
    # With key 2 a partner of key 1, its alert during key 1's occurrence is true, but catches nothing.
    j = E.judge(alerts, truth, clock, key, partners={1: {2}})
    assert j.false_alerts == 0 and j.caught == 2
    only_partner = E.Alerts(np.array([2]), np.array([4.3]), np.array([2]), np.array([4.2]))
    j = E.judge(only_partner, truth, clock, key, partners={1: {2}})
    assert j.false_alerts == 0 and j.caught == 0


def test_union_of_a_detector_and_a_rule_catches_what_either_catches_at_a_shared_budget():
    import torch

    from fastmaml.apps.ids.families import Stream
    from fastmaml.apps.ids.operational import evidence_judgement, rule_scores

    # Two keys at 100 Hz for 60 s; key 1 attacked 20-22 s, key 2 attacked 40-42 s. The "detector" sees only the
    # attack on key 1, the "rule" only the one on key 2; clean fit traffic (before the cut) and clean traffic after.
    def stream(attacked: bool, seed: int) -> tuple[Stream, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        t = np.arange(0, 60, 0.01)
        clock, key = np.r_[t, t + 0.005], np.r_[np.ones(len(t), np.int64), np.full(len(t), 2)]
        order = np.argsort(clock, kind="stable")
        clock, key = clock[order], key[order]
        a1 = attacked & (key == 1) & (clock >= 20) & (clock < 22)
        a2 = attacked & (key == 2) & (clock >= 40) & (clock < 42)
        det = np.where(a1, 3.0, rng.normal(-3.0, 1.0, len(clock)))
        rule = a2 | (rng.random(len(clock)) < 0.002)
        st = Stream(torch.zeros(len(clock), 1), torch.from_numpy(a1 | a2), torch.from_numpy(clock),
                    torch.from_numpy(key), rules={"plausibility": torch.from_numpy(rule)})
        return st, det, rule

    attack, det_a, _ = stream(True, 0)
    fit, det_f, _ = stream(False, 1)
    clean, det_c, _ = stream(False, 2)
    det = {"attack": det_a, "fit": det_f, "clean": det_c}
    rule = rule_scores(attack, clean, fit, "plausibility")
    assert set(rule) == {"attack", "fit", "clean"} and set(np.unique(rule["attack"])) == {-E.RULE_MISS, 1.0}
    ev = E.Evidence(clip=6.0)
    alone = evidence_judgement(det, attack, clean, fit, 10.0, ev, 0.05, {})
    by_rule = evidence_judgement(rule, attack, clean, fit, 10.0, E.Evidence(clip=1.0), 0.05, {})
    both = evidence_judgement([(det, ev), (rule, E.Evidence(clip=1.0))], attack, clean, fit, 10.0, None, 0.05, {})
    assert alone["attack/caught_rate"] == 0.5 and by_rule["attack/caught_rate"] == 0.5
    assert both["attack/caught_rate"] == 1.0
    # One channel given as a list is the scorer alone: the budget split is 1/len(channels).
    assert evidence_judgement([(det, ev)], attack, clean, fit, 10.0, None, 0.05, {}) == alone
    assert evidence_judgement(rule_scores(attack, clean, fit, "nope") or det, attack, clean, fit, 10.0, ev, 0.05,
                              {}) == alone


def test_merge_alerts_keeps_frame_order():
    a = E.Alerts(np.array([5, 9]), np.array([0.5, 0.9]), np.array([1, 1]), np.array([0.4, 0.8]), np.array([7.0, 8.0]))
    b = E.Alerts(np.array([7]), np.array([0.7]), np.array([2]), np.array([0.6]))
    m = E.merge_alerts(a, E.Alerts.empty(), b)
    assert m.index.tolist() == [5, 7, 9] and m.key.tolist() == [1, 2, 1]
    assert m.level[0] == 7.0 and np.isnan(m.level[1])
    assert len(E.merge_alerts().index) == 0


def test_reference_drift_is_a_clean_quantile_and_lets_a_short_attack_through_the_budget():
    # A detector adapted on a few frames often scores clean traffic near 0: summed as it is, clean driving piles up
    # evidence like a random walk and the budget's threshold climbs out of reach of a short attack.
    rng = np.random.default_rng(0)
    n_keys, hz, secs = 3, 100, 600
    t = np.arange(0, secs, 1 / hz)
    clock = np.repeat(t, n_keys) + np.tile(np.arange(n_keys) / (hz * n_keys), len(t))
    key = np.tile(np.arange(n_keys), len(t))
    clean = rng.normal(0.0, 1.0, len(clock))
    ev0, evq = E.Evidence(clip=6.0, per_key=False), E.Evidence(clip=6.0, reference=0.999, per_key=False)
    fitted = evq.fitted(clean)
    assert fitted.drift == pytest.approx(np.quantile(clean, 0.999)) and 2.8 < fitted.drift < 3.4
    assert ev0.fitted(clean) == ev0 and E.Evidence(drift=5.0, reference=0.5).fitted(clean).drift == 5.0
    cal0 = E.calibrate(clean, clock, key, 10.0, ev0, bootstrap=0)
    calq = E.calibrate(clean, clock, key, 10.0, evq, bootstrap=0)
    assert cal0.drift == 0.0 and calq.drift == pytest.approx(fitted.drift) and calq.threshold < cal0.threshold / 10
    alarm = evq.calibrated(calq)
    assert alarm.threshold == calq.threshold and alarm.drift == calq.drift
    # Fresh clean traffic stays within the budget (10 min: a couple of alerts at most) ...
    fresh = rng.normal(0.0, 1.0, len(clock))
    assert E.count_alerts(fresh, clock, key, alarm) <= 2
    # ... and 0.3 s of frames scored at the clip on one key are caught with the reference, not without.
    attack = fresh.copy()
    hit = (key == 1) & (clock >= 300) & (clock < 300.3)
    attack[hit] = 6.0
    for ev, cal, caught in ((ev0, cal0, 0), (evq, calq, 1)):
        alerts, _ = E.cusum_alerts(attack, clock, key, ev.calibrated(cal))
        assert E.judge(alerts, hit, clock, key).caught == caught
    with pytest.raises(DataError, match="quantile"):
        E.Evidence(reference=1.0)
    # Old calibrations (no drift recorded) load with drift 0.
    d = cal0.to_dict()
    d.pop("drift")
    assert E.Calibration.from_dict(d).drift == 0.0


def test_a_rule_catches_a_fabrication_whose_forged_frames_alternate_with_genuine_ones():
    # One key at 100 Hz: the rule flags every other frame for 2 s (forged frames between genuine ones) and, on clean
    # driving, a scattered 0.2% of frames. At +1/-1 the sum of the key never grows; at +1/-1/4 it must alert.
    rng = np.random.default_rng(0)
    clock = np.arange(0, 600, 0.01)
    key = np.ones(len(clock), np.int64)
    clean_flags = rng.random(len(clock)) < 0.002
    cal = E.calibrate(E.rule_frame_scores(clean_flags), clock, key, 10.0, E.rule_alarm())
    flags = rng.random(len(clock)) < 0.002
    attacked = (clock >= 300) & (clock < 302)
    flags[attacked] = np.arange(attacked.sum()) % 2 == 0
    alerts, _ = E.cusum_alerts(E.rule_frame_scores(flags), clock, key, E.rule_alarm().calibrated(cal))
    assert ((alerts.time >= 300) & (alerts.time < 302)).any()
    symmetric = np.where(flags, 1.0, -1.0)  # the old scores: the alternating frames cancel
    cal_sym = E.calibrate(np.where(clean_flags, 1.0, -1.0), clock, key, 10.0, E.rule_alarm())
    alerts_sym, _ = E.cusum_alerts(symmetric, clock, key, E.rule_alarm().calibrated(cal_sym))
    assert not ((alerts_sym.time >= 300) & (alerts_sym.time < 302)).any()


def test_clean_time_counts_traffic_not_the_gaps_between_drives():
    """Calibration's hours are the traffic's: drives laid end to end (or pieces of one drive) a minute apart count
    their own time only, so the budget's allowed alerts and the tail's rate are not diluted by silence."""
    one = np.arange(0.0, 600.0, 0.01)  # 10 minutes at 100 Hz
    two = np.r_[one, one + 660.0]  # the same again after a minute's silence
    assert E.traffic_seconds(one) == pytest.approx(599.99)
    assert E.traffic_seconds(two) == pytest.approx(2 * 599.99)
    score = np.full(len(two), -1.0)
    cal = E.calibrate(score, two, np.zeros(len(two), np.int64), 10.0, E.Evidence())
    assert cal.clean_seconds == pytest.approx(2 * 599.99)


def test_each_key_gets_its_own_reference_so_one_noisy_id_does_not_silence_the_others():
    # A real bus (ROAD) has IDs a rule cannot judge: here the rule flags 40% of key 7's clean frames, so its sum grows
    # without bound and one global threshold set above it silences key 3 as well. With each key's own drift
    # (Evidence.per_key) key 7's clean mean step falls to -KEY_MARGIN and the threshold comes down to what the quiet
    # keys need: a fabrication flagging every other frame of key 3 for 2 s is caught, and fresh clean traffic stays
    # within the budget.
    t = np.arange(0, 600, 0.01)
    clock = np.r_[t, t + 0.005]
    key = np.r_[np.full(len(t), 3), np.full(len(t), 7)]
    order = np.argsort(clock, kind="stable")
    clock, key = clock[order], key[order]

    def flags(seed):
        r = np.random.default_rng(seed).random(len(clock))
        return np.where(key == 7, r < 0.4, r < 0.002)

    clean = E.rule_frame_scores(flags(2))
    attacked = (key == 3) & (clock >= 300) & (clock < 302)
    attack_flags = flags(3)
    attack_flags[attacked] = np.arange(attacked.sum()) % 2 == 0
    attack = E.rule_frame_scores(attack_flags)
    caught = {}
    for per_key in (False, True):
        ev = E.Evidence(clip=E.RULE_CLIP, per_key=per_key)
        cal = E.calibrate(clean, clock, key, 10.0, ev, bootstrap=0)
        alarm = ev.calibrated(cal)
        assert (dict(alarm.key_drift).keys() == {7}) == per_key
        caught[per_key] = E.judge(E.cusum_alerts(attack, clock, key, alarm)[0], attacked, clock, key).caught
        if per_key:
            # Key 7's drift: its clean mean step (1.25 * 0.4 - 0.25 = 0.25) brought down to minus half its spread
            # (1.25 * sqrt(0.4 * 0.6)).
            assert dict(alarm.key_drift)[7] == pytest.approx(0.25 + E.KEY_SPREAD * 1.25 * np.sqrt(0.24), abs=0.02)
            assert E.count_alerts(E.rule_frame_scores(flags(4)), clock, key, alarm) <= 3
    assert caught == {False: 0, True: 1}


def _fast_and_slow(seed: int, attack: bool = False):
    """Key 1 at 100 Hz, which a detector scores around -2 with slow swings (log-odds -2 + 4 z, z an AR(1) of
    correlation 0.995 over frames: a detector's odd stretches last), and key 2 at 10 Hz, which it scores far below 0
    (-5 +- 0.5); with ``attack``, key 2's frames of 30-36 s scored +6 (the CrySyS sample's 0x410: 60 frames)."""
    rng = np.random.default_rng(seed)
    t1, t2 = np.arange(0, 600, 0.01), np.arange(0.003, 600, 0.1)
    clock, key = np.r_[t1, t2], np.r_[np.full(len(t1), 1), np.full(len(t2), 2)]
    z = np.zeros(len(t1))
    e = rng.normal(0.0, np.sqrt(1 - 0.995 ** 2), len(t1))
    for i in range(1, len(t1)):
        z[i] = 0.995 * z[i - 1] + e[i]
    score = np.r_[-2.0 + 4.0 * z, rng.normal(-5.0, 0.5, len(t2))]
    truth = (key == 2) & (clock >= 30) & (clock < 36) if attack else np.zeros(len(key), bool)
    score[truth] = 6.0
    order = np.argsort(clock, kind="stable")
    return score[order], clock[order], key[order], truth[order]


def test_each_key_scaled_threshold_lets_a_slow_quiet_id_alert_within_the_budget():
    """One threshold for every key: the fast noisy key's clean excursions set it above the 360 a 10 Hz key can sum in
    6 s at 6 a frame. Scaled by each key's clean excursion scale (var / 2 mu), the quiet slow key alerts within a
    second and fresh clean traffic still stays within the budget."""
    clean, clock, key, _ = _fast_and_slow(0)
    attack, a_clock, a_key, truth = _fast_and_slow(1, attack=True)
    delays = {}
    for scaled in (False, True):
        ev = E.Evidence(key_scaled=scaled)
        cal = E.calibrate(clean, clock, key, 10.0, ev, bootstrap=0)
        alarm = ev.calibrated(cal)
        assert bool(alarm.key_scale) == scaled
        j = E.judge(E.cusum_alerts(attack, a_clock, a_key, alarm)[0], truth, a_clock, a_key)
        delays[scaled] = j.median_delay_s if j.caught else None
        fresh, f_clock, f_key, _ = _fast_and_slow(2)
        assert E.count_alerts(fresh, f_clock, f_key, alarm) <= 3  # 10 minutes of new clean driving: ~1.7 allowed
    assert delays[False] is None and delays[True] is not None and delays[True] < 1.0
    scale = dict(E.Evidence(key_scaled=True).fitted(clean, key).key_scale)
    assert scale[2] < 0.05 < 1.0 <= scale[1]  # two keys: the median is their mean
    # The slow key's threshold never falls below one frame's evidence.
    assert min(E.Evidence(threshold=1.0, key_scaled=True, key_scale=((2, 1e-6),)).key_thresholds().values()) == 6.0


def test_a_saved_evidence_setting_round_trips_and_an_old_one_keeps_its_single_drift():
    ev = E.Evidence(12.5, 6.0, 0.5, 1.0, 0.0, True, ((7, 0.375), (3, 0.25)))
    assert E.Evidence.from_dict(ev.to_dict()) == ev
    old = {"threshold": 12.5, "clip": 6.0, "drift": 0.5, "holdoff_s": 1.0, "reference": 0.0}  # before per-key drifts
    assert E.Evidence.from_dict(old) == E.Evidence(12.5, 6.0, 0.5, 1.0, 0.0, False, ())
    cal = E.Calibration(10.0, 12.5, 60.0, 0, 5, "max", key_drift=[[7, 0.375]], key_scale=[[7, 0.5]])
    again = E.Evidence().calibrated(E.Calibration.from_dict(cal.to_dict()))
    assert again.key_drift == ((7, 0.375),) and again.key_scale == ((7, 0.5),)
    scaled = E.Evidence(12.5, key_scaled=True, key_scale=((7, 0.5),))
    assert E.Evidence.from_dict(scaled.to_dict()) == scaled and scaled.key_thresholds() == {7: 6.25}


def test_stream_keys_are_the_same_integers_in_every_capture():
    # Per-key drifts fitted on the clean capture must land on the same keys in the next capture, whatever order
    # its keys first appear in (protocol names of Ethernet traffic, not only CAN IDs).
    from fastmaml.apps.ids.detect.scores import KeyIndex

    a, b = KeyIndex(), KeyIndex()
    first = a(np.array(["someip", "udp", "tcp"]))
    second = b(np.array(["tcp", "someip", "udp"]))
    assert dict(zip(["someip", "udp", "tcp"], first)) == dict(zip(["tcp", "someip", "udp"], second))
    assert len(set(first.tolist())) == 3
    assert KeyIndex()(np.array([0x110, 0x410])).tolist() == [0x110, 0x410]
