"""`fastmaml ids simulate|train|adapt|detect` on automotive-Ethernet pcaps."""

import csv
import json
import struct

import pytest

from fastmaml.apps.ids.can import sim as can_sim
from fastmaml.apps.ids.detect import Detector, load_detector, save_detector, stream_detect
from fastmaml.apps.ids.ethernet.pcap_reader import read_pcap
from fastmaml.apps.ids.ethernet.labels import read_labels
from fastmaml.apps.ids.config import ModelConfig
from fastmaml.apps.ids.models import build_model
from fastmaml.apps.ids.can.features import FRAME_FEATURES, FeatureState
from fastmaml.cli import main
from fastmaml.config import to_dict

FLOOD = "someip_request_flood"


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A simulated labelled pcap with the held-out flood and a detector meta-trained without it (via the CLI)."""
    d = tmp_path_factory.mktemp("eth_cli")
    assert main(["ids", "simulate", "--network", "eth", "--attack", FLOOD, "--duration", "2", "--seed", "5",
                 "--out", str(d / "cap.pcap")]) == 0
    assert main(["ids", "train", "--preset", "eth_tiny", "--out", str(d / "trained"), "train.iterations=10",
                 "source.sim.duration_s=3", "source.attacks=[can_dos, mac_flooding, someip_request_flood]"]) == 0
    return d


def test_train_leaves_the_new_attack_out_and_adapt_to_it(workdir, capsys):
    d = workdir
    meta = json.loads((d / "trained" / "detector" / "detector.json").read_text())
    assert meta["traffic"] == "eth" and FLOOD not in meta["meta"]["trained_on"]
    assert set(meta["meta"]["trained_on"]) == {"can_dos", "mac_flooding"}
    capsys.readouterr()
    assert main(["ids", "adapt", "--detector", str(d / "trained" / "detector"), "--capture", str(d / "cap.pcap"),
                 "--labels", str(d / "cap_labels.csv"), "--shots", "5", "--out", str(d / "adapted")]) == 0
    assert "adapted to 'someip_request_flood' from 5 samples per class" in capsys.readouterr().out
    meta = json.loads((d / "adapted" / "detector.json").read_text())
    assert meta["meta"]["adapted_to"] == FLOOD and meta["traffic"] == "eth"


def test_detect_writes_one_verdict_per_packet_and_packets_per_second(workdir, capsys):
    d = workdir
    det = d / "adapted" if (d / "adapted").is_dir() else d / "trained" / "detector"
    capsys.readouterr()
    assert main(["ids", "detect", "--detector", str(det), "--capture", str(d / "cap.pcap"), "--labels",
                 str(d / "cap_labels.csv"), "--out", str(d / "v.csv"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "packets/s" in out and "f1=" in out
    chunk, _ = read_pcap(d / "cap.pcap")
    rows = _rows(d / "v.csv")
    assert len(rows) == len(chunk) and [int(r["packet"]) for r in rows] == chunk.index.tolist()
    labels, _ = read_labels(d / "cap_labels.csv", index=chunk.index)
    assert [int(r["label"]) for r in rows] == (labels > 0).astype(int).tolist()
    assert {r["proto"] for r in rows} >= {"avtp", "gptp", "someip", "can_udp"}
    assert all(r["verdict"] in ("0", "1") and 0.0 <= float(r["p_attack"]) <= 1.0 for r in rows)
    # Streaming in small chunks gives the same verdicts (per-stream state carried across chunks).
    s = stream_detect(load_detector(det), d / "cap.pcap", d / "v2.csv", labels=d / "cap_labels.csv", chunk_size=333,
                      progress=False)
    assert (d / "v2.csv").read_text() == (d / "v.csv").read_text()
    assert s.unit == "packets" and s.frames == len(chunk) and s.frames_per_second > 0


def test_detect_without_labels_and_on_a_truncated_capture(workdir, tmp_path, capsys):
    d = workdir
    det = str(d / "trained" / "detector")
    data = (d / "cap.pcap").read_bytes()
    (tmp_path / "cut.pcap").write_bytes(data[: len(data) - 100])
    capsys.readouterr()
    with pytest.warns(UserWarning, match="truncated|cut"):
        assert main(["ids", "detect", "--detector", det, "--capture", str(tmp_path / "cut.pcap"),
                     "--out", str(tmp_path / "v.csv"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reader:" in out and "truncated" in out
    rows = _rows(tmp_path / "v.csv")
    assert list(rows[0]) == ["packet", "timestamp", "proto", "p_attack", "log_odds", "verdict"]
    assert len(rows) == len(read_pcap(d / "cap.pcap")[0]) - 1


def test_bad_eth_inputs_give_clear_errors(workdir, tmp_path, capsys):
    def err(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    d = workdir
    det = str(d / "trained" / "detector")
    assert "unknown zonal-network attack 'nope'; valid: none, avtp_injection" in err(
        ["ids", "simulate", "--network", "eth", "--attack", "nope", "--out", str(tmp_path / "x.pcap")])
    (tmp_path / "c.log").write_text("(1.000000) can0 123#0011\n")
    assert "is not a pcap/pcapng capture, but this detector was trained on automotive Ethernet" in err(
        ["ids", "detect", "--detector", det, "--capture", str(tmp_path / "c.log"), "--out", str(tmp_path / "v.csv")])
    (tmp_path / "junk.pcap").write_bytes(b"garbage" * 30)
    assert "junk.pcap is not a pcap/pcapng capture" in err(
        ["ids", "detect", "--detector", det, "--capture", str(tmp_path / "junk.pcap"), "--out", str(tmp_path / "v.csv")])
    (tmp_path / "short.pcap").write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x02")
    assert "not a readable pcap or pcapng capture" in err(
        ["ids", "detect", "--detector", det, "--capture", str(tmp_path / "short.pcap"), "--out", str(tmp_path / "v.csv")])
    # A pcap whose link type is not Ethernet (SocketCAN, 227).
    (tmp_path / "can.pcap").write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 227))
    assert "link type 227 (SocketCAN) is not Ethernet" in err(
        ["ids", "detect", "--detector", det, "--capture", str(tmp_path / "can.pcap"), "--out", str(tmp_path / "v.csv")])
    (tmp_path / "bare.pcap").write_bytes((d / "cap.pcap").read_bytes())  # no bare_labels.csv beside it
    assert "adapting needs labelled packets; give --labels" in err(
        ["ids", "adapt", "--detector", det, "--capture", str(tmp_path / "bare.pcap"), "--out", str(tmp_path / "a")])
    assert "--shots 100000 needs 100000 per class" in err(
        ["ids", "adapt", "--detector", det, "--capture", str(d / "cap.pcap"), "--labels", str(d / "cap_labels.csv"),
         "--shots", "100000", "--out", str(tmp_path / "a")])
    assert "--holdout each (leave-one-attack-out) cannot be combined" in err(
        ["ids", "compare", "--preset", "eth_tiny", "--holdout", "each", "--holdout", "can_dos",
         "--out", str(tmp_path / "c")])


def test_can_detector_refuses_a_pcap(workdir, tmp_path, capsys):
    mc = ModelConfig(name="mlp", hidden=[4])
    net = build_model(mc, len(FRAME_FEATURES), None)
    state = FeatureState.fit(can_sim.simulate("none", 2.0, 1)).to_dict()
    save_detector(Detector(to_dict(mc), dict(net.state_dict()), state, list(FRAME_FEATURES), None, None, "any",
                           ["benign", "attack"], 0.1, 1), tmp_path / "can" / "detector")
    assert main(["ids", "detect", "--detector", str(tmp_path / "can" / "detector"), "--capture",
                 str(workdir / "cap.pcap"), "--out", str(tmp_path / "v.csv")]) == 2
    assert "is a pcap (Ethernet) capture, but this detector was trained on CAN" in capsys.readouterr().err
