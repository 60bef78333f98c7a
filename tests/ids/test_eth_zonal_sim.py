"""Zonal-network simulator: determinism, label CSV, and what each attack visibly changes."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fastmaml.apps.ids.ethernet import zonal_sim as zs
from fastmaml.apps.ids.ethernet.pcap_reader import PROTO_AVTP, PROTO_GPTP, PROTO_SOMEIP, read_pcap
from fastmaml.apps.ids.ethernet.labels import read_labels
from fastmaml.errors import DataError

_CACHE: dict = {}


def sim(attack: str, duration: float = 1.5, seed: int = 3, camera: bool = False):
    """Simulated capture decoded through the pcap reader (cached: several tests share one)."""
    key = (attack, duration, seed, camera)
    if key not in _CACHE:
        cap = zs.simulate(attack, duration, seed, camera=camera)
        chunk = _decode(cap)
        _CACHE[key] = (cap, chunk)
    return _CACHE[key]


def _decode(cap):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.pcap"
        cap.write(p)
        chunk, st = read_pcap(p)
    assert not st.malformed and len(chunk) == len(cap)
    return chunk


def test_attack_lists() -> None:
    assert len(zs.KNOWN_ATTACKS) >= 7 and set(zs.NEW_ATTACKS).isdisjoint(zs.KNOWN_ATTACKS)
    assert all("flood" in a for a in zs.NEW_ATTACKS)


def test_deterministic_for_a_seed() -> None:
    a = zs.simulate("avtp_injection", 0.6, seed=11)
    b = zs.simulate("avtp_injection", 0.6, seed=11)
    c = zs.simulate("avtp_injection", 0.6, seed=12)
    assert a.frames == b.frames and np.array_equal(a.ts, b.ts) and np.array_equal(a.labels, b.labels)
    assert a.frames != c.frames


def test_benign_traffic_mix_and_rates() -> None:
    cap, c = sim("none", 2.0, camera=True)
    assert cap.labels.sum() == 0 and np.all(np.diff(cap.ts) >= 0)
    dur = 2.0
    cam = c.avtp_subtype == 0x03
    assert 1500 < cam.sum() / dur < 2600 and c.length[cam].max() <= 1400 + 14 + 4 + 24
    aud = c.avtp_subtype == 0x02
    assert abs(aud.sum() / dur - 1000) < 20 and len(set(c.length[aud].tolist())) == 1
    assert np.median(np.diff(c.ts[aud])) == pytest.approx(1e-3, rel=0.01)
    sync = (c.proto == PROTO_GPTP) & (c.ptp_type == 0)
    assert np.median(np.diff(c.ts[sync])) == pytest.approx(0.125, rel=0.01)
    assert set(c.ptp_type[c.proto == PROTO_GPTP].tolist()) == {0, 2, 3, 8, 10, 11}
    assert {30490, 30501, 30502} <= set(c.dport[c.proto == PROTO_SOMEIP].tolist())
    assert set(c.vlan[cam].tolist()) == {10} and set(c.pcp[cam].tolist()) == {3}
    assert (c.can_count > 1).any() and set(c.vlan[c.can_count > 0].tolist()) == {20}


def test_label_csv_matches_packets(tmp_path: Path) -> None:
    cap = zs.simulate("can_dos", 1.0, seed=5, camera=False)
    cap.write(tmp_path / "c.pcap", tmp_path / "c.csv")
    chunk, _ = read_pcap(tmp_path / "c.pcap")
    with open(tmp_path / "c.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(chunk) == len(cap)
    assert [int(r["index"]) for r in rows] == chunk.index.tolist()
    np.testing.assert_allclose([float(r["timestamp"]) for r in rows], chunk.ts, atol=1e-6)
    assert {r["attack"] for r in rows if r["label"] == "1"} == {"can_dos"}
    assert {r["attack"] for r in rows if r["label"] == "0"} == {"benign"}
    labels, names = read_labels(tmp_path / "c.csv", index=chunk.index)
    assert names == ["benign", "can_dos"] and np.array_equal(labels, cap.labels)
    labels_t, _ = read_labels(tmp_path / "c.csv", ts=chunk.ts)
    assert np.array_equal(labels_t, cap.labels)
    # attack packets only inside the attack window
    t_att = cap.ts[cap.labels == 1] - zs.T0
    assert t_att.min() >= 0.3 and t_att.max() <= 0.9


def test_pcapng_output_reads_the_same(tmp_path: Path) -> None:
    cap = zs.simulate("gptp_fake_grandmaster", 0.8, seed=1, camera=False)
    cap.write(tmp_path / "a.pcapng", pcapng=True)
    chunk, _ = read_pcap(tmp_path / "a.pcapng")
    assert len(chunk) == len(cap)
    np.testing.assert_allclose(chunk.ts, cap.ts, atol=2e-6)


def test_every_attack_labels_packets() -> None:
    for a in zs.ATTACKS:
        cap = zs.simulate(a, 1.0, seed=2, camera=a == "avtp_replay")
        assert cap.labels.sum() >= 5, a
        assert cap.class_names == ["benign", a]


def test_mac_flooding_many_new_macs() -> None:
    _, ben = sim("none")
    cap, c = sim("mac_flooding")
    att = cap.labels == 1
    macs = c.src_mac[att]
    assert len(np.unique(macs)) > 0.95 * att.sum() > 500
    assert not np.isin(macs, ben.src_mac).any()
    assert np.isin(c.src_mac[~att], ben.src_mac).all()


def test_avtp_replay_is_byte_copy_of_earlier_frames() -> None:
    cap = zs.simulate("avtp_replay", 1.0, seed=4)
    first_seen: dict[bytes, int] = {}
    for i, f in enumerate(cap.frames):
        first_seen.setdefault(f, i)
    att = np.flatnonzero(cap.labels == 1)
    assert len(att) > 50
    assert all(first_seen[cap.frames[i]] < i and cap.labels[first_seen[cap.frames[i]]] == 0 for i in att)


def test_can_replay_is_byte_copy_of_earlier_frames() -> None:
    cap, c = sim("can_replay")
    first_seen: dict[bytes, int] = {}
    for i, f in enumerate(cap.frames):
        first_seen.setdefault(f, i)
    att = np.flatnonzero(cap.labels == 1)
    assert len(att) > 20 and all(first_seen[cap.frames[i]] < i for i in att)
    assert (c.can_count[att] > 0).all()


def test_avtp_injection_same_stream_broken_sequence() -> None:
    cap, c = sim("avtp_injection", camera=True)
    att = cap.labels == 1
    assert set(c.avtp_stream_id[att].tolist()) == {zs.CAMERA_STREAM}
    cam = c.avtp_stream_id == zs.CAMERA_STREAM
    seq = c.avtp_seq[cam].astype(int)
    gaps = (np.diff(seq) - 1) % 256
    assert (gaps != 0).sum() > 0.5 * att.sum()


def test_gptp_sync_manipulation_changes_correction_and_origin() -> None:
    cap, c = sim("gptp_sync_manipulation")
    fu = (c.proto == PROTO_GPTP) & (c.ptp_type == 8)
    att, ben = fu & (cap.labels == 1), fu & (cap.labels == 0)
    assert att.sum() >= 5
    corr_ns = np.abs(c.ptp_correction / 65536.0)
    assert corr_ns[ben].max() < 1_000 and corr_ns[att].min() >= 1e6
    off = np.abs(c.ptp_origin_ts - c.ts)
    assert off[ben].max() < 1e-3 and off[att].min() > 0.4
    # spoofed: same grandmaster clock identity and MAC as the real one
    assert set(c.ptp_clock_id[att].tolist()) == {zs.GM_CLOCK}


def test_fake_grandmaster_new_clock_better_priority() -> None:
    cap, c = sim("gptp_fake_grandmaster")
    att = cap.labels == 1
    assert zs.GM_CLOCK not in set(c.ptp_clock_id[att].tolist())
    ann = (c.proto == PROTO_GPTP) & (c.ptp_type == 0xB)
    prio1 = lambda rows: {cap.frames[i][14 + 47] for i in np.flatnonzero(rows)}  # noqa: E731
    assert prio1(ann & ~att) == {246} and max(prio1(ann & att)) < 246


def test_can_dos_id_zero_high_rate() -> None:
    cap, c = sim("can_dos")
    att = cap.labels == 1
    assert set(c.can_id[att].tolist()) == {0} and 0 not in set(c.can_id[~att].tolist())
    assert att.sum() / (0.6 * 1.5) > 800  # packets/s during the attack window


def test_someip_spoofing_from_wrong_ecu() -> None:
    cap, c = sim("someip_spoofing")
    att = (cap.labels == 1) & (c.proto == PROTO_SOMEIP)
    tele = int.from_bytes(zs.TELEMATICS, "big")
    assert (c.src_mac[att] == tele).all()
    speed_att = att & (c.someip_service == zs.SVC_SPEED)
    speed_ben = (cap.labels == 0) & (c.someip_service == zs.SVC_SPEED)
    assert speed_att.sum() > 10 and not (c.src_mac[speed_ben] == tele).any()
    # fake SD offers of the climate service: service id in the SD entry at payload bytes 12..13
    offers = att & (c.someip_service == 0xFFFF)
    assert offers.sum() > 5
    assert {bytes(p[12:14]) for p in c.payload[offers]} == {zs.SVC_CLIMATE.to_bytes(2, "big")}


def test_new_flooding_attacks() -> None:
    cap, c = sim("someip_request_flood")
    att = cap.labels == 1
    req = (c.proto == PROTO_SOMEIP) & (c.someip_msg_type == 0)
    assert (req & att).sum() / 0.9 > 20 * (req & ~att).sum() / 1.5
    cap, c = sim("avtp_stream_flood")
    att = cap.labels == 1
    assert (c.proto[att] == PROTO_AVTP).all()
    assert not np.isin(c.avtp_stream_id[att], c.avtp_stream_id[~att]).any()


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="unknown attack"):
        zs.simulate("teleport", 1.0, 0)
    with pytest.raises(DataError, match="duration_s"):
        zs.simulate("none", 0, 0)
    with pytest.raises(DataError, match="attack_window"):
        zs.simulate("can_dos", 1.0, 0, attack_window=(0.8, 0.2))
