import numpy as np
import pytest

from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.baselines import AllowListRule, PayloadRangeRule, TimingRule
from fastmaml.apps.ids.metrics import detection_metrics
from fastmaml.apps.ids.can.readers import open_capture
from fastmaml.apps.ids.can.features import FeatureState, build_sample_set
from fastmaml.apps.ids.can.frames import FrameBatch


@pytest.fixture(scope="module")
def train():
    return sim.simulate("none", 30.0, 21)


def test_metrics():
    m = detection_metrics(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 0, 1, 1], bool))
    assert m["tp"] == 2 and m["fp"] == 1 and m["fn"] == 1 and m["tn"] == 1
    assert m["recall"] == pytest.approx(2 / 3) and m["fpr"] == pytest.approx(0.5)


def test_allow_list_fails_on_simulator(train):
    rule = AllowListRule().fit(train)
    for attack in ("spoof_speed", "masquerade", "replay", "dos"):
        f = sim.simulate(attack, 20.0, 22)
        m = detection_metrics(rule.predict(f), f.is_attack())
        assert m["recall"] == 0.0 and m["fpr"] == 0.0  # all IDs are legitimate


def test_timing_and_range_rules_on_simulator(train):
    st = FeatureState.fit(train)
    timing = TimingRule(0.5).fit(st)
    f = sim.simulate("dos", 20.0, 23)
    pred = timing.predict(f)
    m = detection_metrics(pred, f.is_attack())
    assert m["recall"] > 0.95
    # genuine frames of the flooded ID also follow a flood frame closely, so only the others stay clean
    other = f.can_id != sim.ID_ENGINE
    assert detection_metrics(pred[other], f.is_attack()[other])["fpr"] < 0.005
    assert m["fpr"] < 0.1
    # the same rule on SampleSet features agrees with the frame path
    s = build_sample_set(f, st)
    ms = detection_metrics(timing.predict_samples(s), s.labels.numpy() != 0)
    assert ms["recall"] == pytest.approx(m["recall"], abs=1e-9)
    # range rule: fuzzing mostly caught, subtle speed spoofing much less so
    rng = PayloadRangeRule().fit(train)
    fz = sim.simulate("fuzzing", 20.0, 24)
    assert detection_metrics(rng.predict(fz), fz.is_attack())["recall"] > 0.8
    sp = sim.simulate("spoof_speed", 20.0, 24)
    assert detection_metrics(rng.predict(sp), sp.is_attack())["recall"] < 0.5
    w = build_sample_set(fz, st, window=8)
    assert detection_metrics(rng.predict_samples(w), w.labels.numpy() != 0)["recall"] > 0.8


def test_allow_list_near_perfect_on_cic(shared_data):
    d = shared_data / "ids" / "ciciov2024" / "decimal"
    it = iter(open_capture(d / "decimal_benign.csv.zip", chunk_size=150000))
    fit_part, held_out = next(it), next(it)
    rule = AllowListRule().fit(fit_part)
    attacks = FrameBatch.concat([open_capture(d / f).read_all() for f in
                                 ("decimal_DoS.csv", "decimal_spoofing-GAS.csv", "decimal_spoofing-SPEED.csv")])
    test = FrameBatch.concat([held_out, attacks])
    m = detection_metrics(rule.predict(test), test.is_attack())
    assert m["recall"] > 0.999 and m["fpr"] < 0.001
    st = FeatureState.fit(fit_part)
    s = build_sample_set(test, st, max_per_class=300)
    ms = detection_metrics(rule.predict_samples(s), s.labels.numpy() != 0)
    assert ms["recall"] > 0.999 and ms["fpr"] < 0.01
