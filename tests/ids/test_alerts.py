import numpy as np
import pytest

from fastmaml.apps.ids.alerts import AlertRule, alert_metrics, k_of_n_alerts
from fastmaml.errors import DataError


def test_k_of_n_counts_per_stream_and_holds_off():
    # Two interleaved IDs; ID 1 is flagged on 2 of its last 3 frames only at its 4th frame.
    ids = np.array([1, 2, 1, 2, 1, 2, 1, 2])
    flags = np.array([1, 1, 0, 0, 0, 1, 1, 0], bool)
    t = np.arange(8, dtype=float)
    assert k_of_n_alerts(flags, t, ids, AlertRule(2, 3, holdoff=0.0)).tolist() == [5]  # ID 2: frames 1, 5
    # Bus-wide the same verdicts reach 2 of 3 at indices 1, 2, 6, 7; a hold-off of 1.5 keeps one per burst.
    assert k_of_n_alerts(flags, t, None, AlertRule(2, 3, holdoff=0.0)).tolist() == [1, 2, 6, 7]
    assert k_of_n_alerts(flags, t, None, AlertRule(2, 3, holdoff=1.5)).tolist() == [1, 6]
    # Every flag alerts without a hold-off; a hold-off of 10 leaves the first only.
    assert k_of_n_alerts(flags, t, None, AlertRule(1, 1, holdoff=0.0)).tolist() == [0, 1, 5, 6]
    assert k_of_n_alerts(flags, t, None, AlertRule(1, 1, holdoff=10.0)).tolist() == [0]
    with pytest.raises(DataError, match="1 <= k <= n"):
        AlertRule(3, 2)


def test_false_alerts_per_hour_and_delay():
    # One hour of benign traffic at 10 frames/s with 36 isolated false flags, and one attack
    # occurrence of 5 frames at t = 1800 s, flagged from its 3rd frame.
    t = np.arange(0, 3600, 0.1)
    truth = np.zeros(len(t), bool)
    flags = np.zeros(len(t), bool)
    flags[np.arange(36) * 1000 + 500] = True
    start = 18000
    truth[start:start + 5] = True
    flags[start + 2:start + 5] = True
    ids = np.zeros(len(t), np.int64)
    m = alert_metrics(flags, truth, t, ids, AlertRule(1, 1, holdoff=1.0), occurrence_gap=0.2)
    assert m["false_alerts"] == 36 and m["alerts"] == 37
    assert m["false_alerts_per_hour"] == pytest.approx(36 / (3599.9 / 3600 - 0.6 / 3600), rel=1e-3)
    assert m["occurrences"] == 1 and m["occurrences_detected"] == 1
    assert m["median_delay_s"] == pytest.approx(0.2)
    # Two of three in a row never happens on the isolated false flags: no false alert, still detected.
    m2 = alert_metrics(flags, truth, t, ids, AlertRule(2, 3, holdoff=1.0), occurrence_gap=0.2)
    assert m2["false_alerts"] == 0 and m2["occurrences_detected"] == 1 and m2["median_delay_s"] == pytest.approx(0.3)
    # A detector that never flags the attack has detection rate 0 and no delay.
    m3 = alert_metrics(np.zeros(len(t), bool), truth, t, ids, AlertRule(), occurrence_gap=0.2)
    assert m3["occurrence_detection_rate"] == 0 and np.isnan(m3["median_delay_s"])


def test_hold_off_limits_alerts_but_not_detection():
    # An injection every 0.5 s on one ID, each flagged: a 1 s hold-off halves the alerts, yet every
    # injection is detected (the incident is being alerted on), with zero delay.
    t = np.arange(0, 10, 0.01)
    truth = np.zeros(len(t), bool)
    truth[50::50] = True
    ids = np.zeros(len(t), np.int64)
    m = alert_metrics(truth.copy(), truth, t, ids, AlertRule(1, 1, holdoff=1.0), occurrence_gap=0.005)
    assert m["occurrences"] == 19 and m["occurrences_detected"] == 19 and m["median_delay_s"] == 0.0
    assert m["alerts"] == 10 and m["false_alerts"] == 0


def test_budget_threshold_is_the_lowest_that_keeps_the_false_alert_budget():
    import torch

    from fastmaml.apps.ids.alerts import AlertRule, k_of_n_alerts
    from fastmaml.apps.ids.families import Stream
    from fastmaml.apps.ids.operational import budget_threshold

    rng = np.random.default_rng(0)
    n = 36_001  # one hour (3,600.0 s) of two IDs at 5 Hz each
    clock = np.arange(n) * 0.1
    key = np.arange(n) % 2
    p = rng.beta(1, 20, n)
    st = Stream(torch.zeros(n, 1), torch.zeros(n, dtype=torch.bool), torch.from_numpy(clock), torch.from_numpy(key))
    for rule, budget in ((AlertRule(1, 1), 10.0), (AlertRule(2, 4), 3.0), (AlertRule(1, 1), 0.0)):
        thr = budget_threshold(torch.from_numpy(p), st, rule, budget)
        assert len(k_of_n_alerts(p > thr, clock, key, rule)) <= budget
        lower = np.unique(p)[np.unique(p) < thr]
        if len(lower):  # the next observed value down would break the budget
            assert len(k_of_n_alerts(p > lower[-1], clock, key, rule)) > budget
    assert budget_threshold(torch.from_numpy(p), st, AlertRule(1, 1), 0.0) == p.max()
