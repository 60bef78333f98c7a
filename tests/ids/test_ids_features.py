import numpy as np
import pytest
import torch

from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.readers import open_capture
from fastmaml.apps.ids.can.features import (
    FRAME_FEATURES,
    FeatureState,
    FrameFeaturizer,
    build_sample_set,
    frame_features,
)
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.samples import window_labels
from fastmaml.errors import DataError


@pytest.fixture(scope="module")
def benign():
    return sim.simulate("none", 20.0, 11)


@pytest.fixture(scope="module")
def state(benign):
    return FeatureState.fit(benign)


def test_fit_periods(state):
    assert state.clock == "time" and set(state.known_ids) == set(sim.PERIODS)
    for cid, p in sim.PERIODS.items():
        assert abs(state.periods[cid] - p) / p < 0.05


def test_state_roundtrip(tmp_path, state):
    p = tmp_path / "state.json"
    state.save(p)
    assert FeatureState.load(p) == state
    p.write_text('{"format": "x"}')
    with pytest.raises(DataError, match="not a fastmaml FeatureState"):
        FeatureState.load(p)


def test_timing_feature_detects_dos(state):
    f = sim.simulate("dos", 20.0, 12)
    x = frame_features(f, state).numpy()
    assert x.shape == (len(f), len(FRAME_FEATURES)) and x.dtype == np.float32
    col = FRAME_FEATURES.index("dt_log_ratio")
    att = f.is_attack()
    # a DoS burst: inter-arrival far below the ID's period; genuine traffic near ratio 1 (log 0)
    assert np.median(x[att, col]) < -0.9
    ben_same_id = (~att) & (f.can_id != sim.ID_ENGINE)
    assert np.abs(np.median(x[ben_same_id, col])) < 0.05
    assert np.quantile(np.abs(x[ben_same_id, col]), 0.95) < 0.2


def test_payload_change_and_known_id(state):
    b = FrameBatch.from_frames([])
    assert frame_features(b, state).shape == (0, len(FRAME_FEATURES))
    f = sim.simulate("fuzzing", 20.0, 13)
    x = frame_features(f, state).numpy()
    ham = FRAME_FEATURES.index("hamming")
    # benign frames right after a fuzzed one also differ from their (fuzzed) predecessor, hence 2x
    assert x[f.is_attack(), ham].mean() > 2 * x[~f.is_attack(), ham].mean()
    assert (x[:, FRAME_FEATURES.index("id_known")] == 1).all()


def test_streaming_equals_one_shot(state):
    f = sim.simulate("spoof_speed", 10.0, 2)
    one = FrameFeaturizer(state).transform(f)
    fz = FrameFeaturizer(state)
    parts = [fz.transform(f.select(slice(a, a + 777))) for a in range(0, len(f), 777)]
    assert np.array_equal(one, np.concatenate(parts))
    s1 = build_sample_set(f, state, window=16)
    s2 = build_sample_set([f.select(slice(a, a + 777)) for a in range(0, len(f), 777)], state, window=16)
    assert torch.equal(s1.features, s2.features) and torch.equal(s1.labels, s2.labels)


def test_window_sets_and_caps(state):
    f = sim.simulate("spoof_rpm", 20.0, 4)
    s = build_sample_set(f, state, window=16, name="sim")
    assert s.features.shape[1:] == (16, len(FRAME_FEATURES)) and s.class_names == ["benign", "spoof_rpm"]
    assert len(s) == len(f) // 16
    capped = build_sample_set(f, state, window=8, stride=4, max_per_class=50, seed=1)
    assert capped.counts() == {"benign": 50, "spoof_rpm": 50}
    again = build_sample_set(f, state, window=8, stride=4, max_per_class=50, seed=1)
    other = build_sample_set(f, state, window=8, stride=4, max_per_class=50, seed=2)
    assert torch.equal(capped.features, again.features) and not torch.equal(capped.features, other.features)
    fixed = build_sample_set(f, state, class_names=["benign", "dos"])
    assert fixed.counts()["dos"] == 0 and fixed.counts()["benign"] == int((~f.is_attack()).sum())


def test_window_label_rules():
    y = np.array([0, 0, 0, 2, 0, 0, 0, 0, 2, 2, 2, 1])
    assert window_labels(y, 4, 4).tolist() == [2, 0, 2]
    assert window_labels(y, 4, 4, rule="majority").tolist() == [0, 0, 2]
    with pytest.raises(DataError):
        window_labels(y, 4, 4, rule="most")


def test_unlabelled_frames_rejected(state, tmp_path):
    f = sim.simulate("none", 2.0, 1)
    sim.write_candump(f, tmp_path / "x.log")
    with pytest.raises(DataError, match="without labels"):
        build_sample_set(open_capture(tmp_path / "x.log"), state)


def test_cic_index_clock(shared_data):
    d = shared_data / "ids" / "ciciov2024" / "decimal"
    ben = next(iter(open_capture(d / "decimal_benign.csv.zip", chunk_size=30000)))
    st = FeatureState.fit(ben)
    assert st.clock == "index" and len(st.known_ids) > 10
    s = build_sample_set(open_capture(d / "decimal_spoofing-GAS.csv"), st, max_per_class=500)
    assert s.class_names == ["benign", "gas"] and s.counts()["gas"] == 500
    assert (s.features[:, FRAME_FEATURES.index("id_known")] == 0).all()  # CIC attack IDs are unseen in benign
