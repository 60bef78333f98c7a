"""Ethernet features (shapes, fitted state, sequence gaps, streaming) and the rule baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastmaml.apps.ids.ethernet import zonal_sim as zs
from fastmaml.apps.ids.ethernet.baselines import rate_rule, rule_predictions, seq_gap_rule, unknown_mac_rule
from fastmaml.apps.ids.ethernet.features import (
    PACKET_FEATURES, EthFeatureState, EthFeaturizer, build_sample_set, packet_features,
)
from fastmaml.apps.ids.ethernet.pcap_reader import PcapReader, read_pcap
from fastmaml.errors import DataError

COL = {n: i for i, n in enumerate(PACKET_FEATURES)}
_CACHE: dict = {}


def capture(tmp: Path, attack: str, seed: int, duration: float = 1.5, camera: bool = True):
    key = (attack, seed, duration, camera)
    if key not in _CACHE:
        cap = zs.simulate(attack, duration, seed, camera=camera)
        p = tmp / f"{attack}_{seed}.pcap"
        cap.write(p, p.with_suffix(".csv"))
        _CACHE[key] = (cap, p, read_pcap(p)[0])
    return _CACHE[key]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eth")


@pytest.fixture(scope="module")
def state(tmp: Path) -> EthFeatureState:
    _, _, chunk = capture(tmp, "none", 100, 2.0)
    return EthFeatureState.fit(chunk)


def test_shapes_and_sample_set(tmp: Path, state: EthFeatureState) -> None:
    cap, p, chunk = capture(tmp, "avtp_injection", 1)
    ss = build_sample_set(p, state, p.with_suffix(".csv"))
    assert ss.features.shape == (len(cap), len(PACKET_FEATURES)) and ss.features.dtype == torch.float32
    assert ss.class_names == ["benign", "avtp_injection"]
    assert torch.equal(ss.labels, torch.from_numpy(cap.labels))
    assert float(ss.features.abs().max()) <= 1.0 + 1e-6
    w = build_sample_set(p, state, p.with_suffix(".csv"), window=8, stride=4)
    assert w.features.shape == ((len(cap) - 8) // 4 + 1, 8, len(PACKET_FEATURES))
    # a window is an attack iff one of its packets is (the CAN pipeline's "any" rule)
    starts = np.arange(len(w)) * 4
    any_att = np.array([cap.labels[s : s + 8].max() for s in starts])
    assert np.array_equal(w.labels.numpy() > 0, any_att > 0)
    assert torch.equal(w.features[3, 0], ss.features[12])


def test_seq_gap_flags_injected_avtp_frames(tmp: Path, state: EthFeatureState) -> None:
    cap, _, chunk = capture(tmp, "avtp_injection", 1)
    X = packet_features(chunk, state).numpy()
    cam = chunk.avtp_stream_id == zs.CAMERA_STREAM
    att = cap.labels == 1
    flagged = X[:, COL["seq_gap_nz"]] == 1
    # an injected frame right after another injected one continues the attacker's own
    # counter (gap 0): only those may go unflagged
    prev_cam_att = np.zeros(len(cap), dtype=bool)
    cam_idx = np.flatnonzero(cam)
    prev_cam_att[cam_idx[1:]] = att[cam_idx[:-1]]
    assert flagged[att & ~prev_cam_att].all() and flagged[att].mean() > 0.8
    # benign camera frames are flagged only right after an injected one (their gap jumps back)
    ben_cam = cam & ~att
    assert ben_cam.sum() > 1000
    assert not flagged[ben_cam & ~prev_cam_att].any()
    assert flagged[ben_cam & prev_cam_att].mean() > 0.9


def test_seq_gap_on_benign_is_zero(tmp: Path, state: EthFeatureState) -> None:
    _, _, chunk = capture(tmp, "none", 7)
    X = packet_features(chunk, state).numpy()
    assert X[:, COL["seq_gap_nz"]].sum() == 0
    assert X[:, COL["src_mac_new"]].sum() == 0 and X[:, COL["stream_new"]].sum() == 0
    assert abs(np.median(X[chunk.avtp_subtype == 2, COL["dt_ratio"]])) < 0.05


def test_attack_specific_features(tmp: Path, state: EthFeatureState) -> None:
    cap, _, chunk = capture(tmp, "mac_flooding", 2, camera=False)
    X = packet_features(chunk, state).numpy()
    att = cap.labels == 1
    assert X[att, COL["src_mac_new"]].min() == 1 and X[~att, COL["src_mac_new"]].max() == 0
    cap, _, chunk = capture(tmp, "gptp_sync_manipulation", 2, camera=False)
    X = packet_features(chunk, state).numpy()
    att = (cap.labels == 1) & (chunk.ptp_type == 8)
    ben = (cap.labels == 0) & (chunk.ptp_type == 8)
    assert X[att, COL["ptp_origin_dev"]].min() > 0.5 > np.abs(X[ben, COL["ptp_origin_dev"]]).max()
    assert np.abs(X[att, COL["ptp_correction"]]).min() > np.abs(X[ben, COL["ptp_correction"]]).max()
    cap, _, chunk = capture(tmp, "avtp_replay", 2)
    X = packet_features(chunk, state).numpy()
    att = cap.labels == 1
    # replayed frames carry stale AVTP presentation times
    assert np.median(np.abs(X[att, COL["avtp_ts_dev"]])) > 0.5
    assert np.median(np.abs(X[~att & (chunk.proto == 1), COL["avtp_ts_dev"]])) < 0.5


def test_streaming_equals_one_shot(tmp: Path, state: EthFeatureState) -> None:
    _, p, chunk = capture(tmp, "can_replay", 3, camera=False)
    one = EthFeaturizer(state).transform(chunk)
    fz = EthFeaturizer(state)
    parts = [fz.transform(c) for c in PcapReader(p, chunk_size=97).chunks()]
    assert len(parts) > 5
    np.testing.assert_array_equal(np.concatenate(parts), one)


def test_state_json_round_trip(tmp: Path, state: EthFeatureState) -> None:
    state.save(tmp / "s.json")
    back = EthFeatureState.load(tmp / "s.json")
    assert back.src_macs == state.src_macs and back.can_ids == state.can_ids
    assert set(back.intervals) == set(state.intervals)
    _, _, chunk = capture(tmp, "can_dos", 4, camera=False)
    np.testing.assert_array_equal(packet_features(chunk, back).numpy(), packet_features(chunk, state).numpy())
    # intervals learned: the audio stream's is 1 ms
    assert sorted(v for v in state.intervals.values() if np.isfinite(v))[0] < 2e-3
    (tmp / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="bad.json.*EthFeatureState"):
        EthFeatureState.load(tmp / "bad.json")
    (tmp / "bad2.json").write_text("{not json")
    with pytest.raises(DataError, match="bad2.json"):
        EthFeatureState.load(tmp / "bad2.json")


def test_fit_needs_packets(tmp: Path) -> None:
    _, _, chunk = capture(tmp, "none", 100, 2.0)
    with pytest.raises(DataError, match="no packets"):
        EthFeatureState.fit(chunk.select(np.zeros(0, dtype=np.int64)))


def test_rule_baselines(tmp: Path, state: EthFeatureState) -> None:
    cap, _, chunk = capture(tmp, "mac_flooding", 2, camera=False)
    st = EthFeaturizer(state).stats(chunk)
    pred = unknown_mac_rule(st)
    assert pred[cap.labels == 1].mean() == 1.0 and pred[cap.labels == 0].sum() == 0
    cap, _, chunk = capture(tmp, "avtp_injection", 1)
    st = EthFeaturizer(state).stats(chunk)
    sg = seq_gap_rule(st)
    assert sg[cap.labels == 1].mean() > 0.8 and sg[cap.labels == 0].mean() < 0.05
    cap, _, chunk = capture(tmp, "can_dos", 4, camera=False)
    st = EthFeaturizer(state).stats(chunk)
    rr = rate_rule(st)
    assert rr[cap.labels == 1].mean() > 0.8 and rr[cap.labels == 0].mean() < 0.05
    allp = rule_predictions(chunk, state)
    assert set(allp) == {"unknown_mac", "rate", "seq_gap", "any"}
    assert np.array_equal(allp["rate"], rr) and (allp["any"] >= allp["seq_gap"]).all()
    # benign traffic: almost no false alarms from any rule
    _, _, ben = capture(tmp, "none", 7)
    fp = rule_predictions(ben, state)["any"].mean()
    assert fp < 0.01
