"""``fastmaml ids monitor``: a capture replayed onto python-can's virtual bus gives the alerts of ``ids detect``.

The replayer sends each frame at its own (sped-up) time with the capture's timestamp in the Message, on a
virtual bus with ``preserve_timestamps=True``: the monitor scores by Message.timestamp, as it does on a real
bus (the driver's receive time), so it sees the capture's clock and must raise the same alerts.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
import pytest
import torch

can = pytest.importorskip("can")

from fastmaml.apps.ids.can import sim as can_sim  # noqa: E402
from fastmaml.apps.ids.can.features import FRAME_FEATURES, FeatureState, FrameFeaturizer  # noqa: E402
from fastmaml.apps.ids.can.frames import FrameBatch  # noqa: E402
from fastmaml.apps.ids.can.readers import read_capture  # noqa: E402
from fastmaml.apps.ids.config import ModelConfig  # noqa: E402
from fastmaml.apps.ids.detect import (Detector, FrameScorer, calibrate_detector, monitor, save_detector,  # noqa: E402
                                      stream_detect)
from fastmaml.apps.ids.evidence import Evidence  # noqa: E402
from fastmaml.apps.ids.models import build_model  # noqa: E402
from fastmaml.cli import main  # noqa: E402
from fastmaml.config import to_dict  # noqa: E402
from fastmaml.errors import DataError  # noqa: E402


def tiny_detector(seed: int = 0) -> Detector:
    """An MLP([8]) trained in a second on one simulated fuzzing capture (features without id_known)."""
    state = FeatureState.fit(can_sim.simulate("none", 5.0, 1))
    names = [n for n in FRAME_FEATURES if n != "id_known"]
    cols = [FRAME_FEATURES.index(n) for n in names]
    train = can_sim.simulate("fuzzing", 6.0, 7)
    x = torch.from_numpy(FrameFeaturizer(state).transform(train)[:, cols])
    y = torch.from_numpy(train.is_attack().astype(np.int64))
    torch.manual_seed(seed)
    mc = ModelConfig(name="mlp", hidden=[8])
    net = build_model(mc, len(names), None)
    opt = torch.optim.Adam(net.parameters(), 0.02)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return Detector(to_dict(mc), {k: v.detach() for k, v in net.state_dict().items()}, state.to_dict(), names, None,
                    None, "any", ["benign", "attack"], 0.1, 3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A calibrated tiny detector (saved, and an uncalibrated copy) and a labelled fuzzing capture."""
    d = tmp_path_factory.mktemp("monitor")
    can_sim.write_candump(can_sim.simulate("none", 20.0, 4), d / "clean.log", d / "clean_labels.csv")
    raw = tiny_detector()
    det, _ = calibrate_detector(raw, d / "clean.log", 60.0)
    save_detector(det, d / "det")
    save_detector(raw, d / "raw")
    can_sim.write_candump(can_sim.simulate("fuzzing", 6.0, 2), d / "cap.log", d / "cap_labels.csv")
    return d, det, read_capture(d / "cap.log")  # the frames as the capture holds them (timestamps to the us)


def replay(frames: FrameBatch, channel: str, speed: float = 10.0, wait_for_listener: bool = False) -> threading.Thread:
    """Send ``frames`` on virtual ``channel`` from a thread at their own timing / ``speed``, timestamps as captured."""

    def run() -> None:
        from can.interfaces import virtual

        if wait_for_listener:  # a virtual bus drops what nobody listens to: wait for the monitor's bus to open
            while not virtual.channels.get(channel):
                time.sleep(0.01)
        with can.Bus(interface="virtual", channel=channel, preserve_timestamps=True) as bus:
            t0, c0 = time.monotonic(), float(frames.timestamp[0])
            for f in frames:
                due = t0 + (f.timestamp - c0) / speed
                if due > time.monotonic() + 0.002:
                    time.sleep(due - time.monotonic())
                bus.send(can.Message(timestamp=f.timestamp, arbitration_id=f.can_id, is_extended_id=f.is_extended,
                                     is_remote_frame=f.is_remote, is_fd=f.is_fd, dlc=f.dlc, data=f.data))

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def test_monitor_alerts_match_ids_detect_alert_for_alert(setup, tmp_path):
    d, det, frames = setup
    s = stream_detect(det, d / "cap.log", tmp_path / "v.csv", progress=False)
    want = [(a["frame"], a["time"], a["key"]) for a in s.evidence["alert_list"]]
    assert len(want) >= 5  # the tiny detector does catch the fuzzing
    with can.Bus(interface="virtual", channel="m34_match") as bus:
        th = replay(frames, "m34_match", speed=10.0)
        lines: list[str] = []
        out = monitor(FrameScorer(det), bus, alerts_path=tmp_path / "a.jsonl", max_frames=len(frames),
                      batch_s=0.02, echo=lines.append)
        th.join()
    got = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [(a["frame"], a["time"], a["can_id"]) for a in got] == want
    assert out.frames == len(frames) and out.alerts == len(want) and out.stopped == "max-frames"
    assert out.batches > 1  # frames came in several batches, and still the same alerts
    assert len(lines) == len(want) and lines[0].startswith("ALERT t=")
    a = got[0]
    assert set(a) == {"time", "can_id", "can_id_hex", "evidence", "threshold", "onset", "frame", "frames"}
    assert a["threshold"] == det.alarm().threshold and a["evidence"] > a["threshold"]
    assert a["frames"] == a["frame"] + 1 and a["can_id_hex"] == hex(a["can_id"]) and a["onset"] <= a["time"]


def test_stops_after_max_frames_and_duration(setup):
    _, det, frames = setup
    part = frames.select(slice(0, 500))
    with can.Bus(interface="virtual", channel="m34_stop") as bus:
        replay(part, "m34_stop", speed=1e9).join()  # all queued before the monitor reads
        s = monitor(FrameScorer(det), bus, max_frames=123, echo=None)
        assert s.frames == 123 and s.stopped == "max-frames"
        s = monitor(FrameScorer(det), bus, duration_s=0.3, echo=None)  # the other 377, then a quiet bus
        assert s.frames == 377 and s.stopped == "duration" and 0.3 <= s.seconds < 2.0
    assert "377 frames" in s.line() and "dropped frames not reported" in s.line()


class _FakeBus:
    """Gives ``n`` frames, then raises ``exc`` from recv."""

    def __init__(self, frames: FrameBatch, n: int, exc: BaseException) -> None:
        self.msgs = [can.Message(timestamp=f.timestamp, arbitration_id=f.can_id, dlc=f.dlc, data=f.data)
                     for f in frames.select(slice(0, n))]
        self.exc = exc

    def recv(self, timeout: float | None = None):
        if self.msgs:
            return self.msgs.pop(0)
        raise self.exc


def test_ctrl_c_scores_the_frames_received_and_stops_cleanly(setup, tmp_path):
    _, det, frames = setup
    s = monitor(FrameScorer(det), _FakeBus(frames, 50, KeyboardInterrupt()), alerts_path=tmp_path / "a.jsonl",
                echo=None)
    assert s.stopped == "interrupted" and s.frames == 50 and (tmp_path / "a.jsonl").exists()


def test_bus_error_is_one_clear_line(setup):
    _, det, frames = setup
    with pytest.raises(DataError, match=r"the bus failed after 0 frames \(CanOperationError: cable unplugged\)"):
        monitor(FrameScorer(det), _FakeBus(frames, 10, can.CanOperationError("cable unplugged")), echo=None)


def _err(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_cli_errors_unknown_interface_missing_channel_no_python_can_uncalibrated(setup, capsys, monkeypatch):
    d, _, _ = setup
    base = ["ids", "monitor", "--detector", str(d / "det"), "--max-frames", "10"]
    err = _err(base + ["--bus", "nosuchbus:x"], capsys)
    assert "CanInterfaceNotImplementedError" in err and "'nosuchbus'" in err and "virtual" in err
    assert "cannot open channel 'nosuch0'" in _err(base + ["--bus", "socketcan:nosuch0"], capsys)
    assert "give INTERFACE:CHANNEL" in _err(base + ["--bus", "can0"], capsys)
    assert "not calibrated" in _err(["ids", "monitor", "--detector", str(d / "raw"), "--bus", "virtual:x"], capsys)
    monkeypatch.setitem(sys.modules, "can", None)  # python-can missing
    assert "needs python-can" in _err(base + ["--bus", "virtual:x"], capsys)


def test_cli_monitor_on_a_virtual_bus_with_a_threshold(setup, tmp_path, capsys):
    d, det, frames = setup
    part = frames.select(slice(0, 1500))
    th = replay(part, "m34_cli", speed=20.0, wait_for_listener=True)
    assert main(["ids", "monitor", "--detector", str(d / "raw"), "--bus", "virtual:m34_cli", "--threshold", "3",
                 "--max-frames", str(len(part)), "--alerts", str(tmp_path / "a.jsonl"), "--batch-ms", "10"]) == 0
    th.join()
    out = capsys.readouterr().out
    assert "threshold 3.00 per CAN ID (--threshold)" in out and "monitor stopped (max-frames): 1500 frames" in out
    got = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    # the same alerts as ids detect at that threshold, on the same frames
    s = stream_detect(Detector(**{**det.__dict__, "evidence": {}}), d / "cap.log", tmp_path / "v.csv",
                      progress=False, evidence=Evidence().with_threshold(3.0))
    want = [(a["frame"], a["time"], a["key"]) for a in s.evidence["alert_list"] if a["frame"] < len(part)]
    assert want
    assert [(a["frame"], a["time"], a["can_id"]) for a in got] == want
    assert out.count("ALERT t=") == len(want)


def test_only_frame_level_can_detectors_are_monitored(setup):
    _, det, _ = setup
    with pytest.raises(DataError, match="reads automotive Ethernet"):
        FrameScorer(Detector(**{**det.__dict__, "traffic": "eth"}))
    with pytest.raises(DataError, match="windows of 4 frames"):
        FrameScorer(Detector(**{**det.__dict__, "window": 4}))


def test_a_detector_with_a_union_rule_raises_both_channels_in_detect_and_monitor(setup, tmp_path):
    """`--union RULE`: the rule's alerts beside the detector's, each channel at half the budget, in detect and monitor."""
    from dataclasses import replace

    from fastmaml.apps.ids.detect import load_detector, score_capture
    from fastmaml.apps.ids.detect.union import rule_function
    from fastmaml.apps.ids.evidence import cusum_alerts

    d, _, frames = setup
    det, cal = calibrate_detector(tiny_detector(), d / "clean.log", 60.0, union="timing")
    u = det.evidence["union"]
    assert cal.budget_per_hour == 30.0 and u["calibration"]["budget_per_hour"] == 30.0 and u["rule"] == "timing"
    s = stream_detect(det, d / "cap.log", tmp_path / "u.csv", progress=False)
    by = {c: [(a["frame"], a["key"]) for a in s.evidence["alert_list"] if a["channel"] == c] for c in ("detector", "timing")}
    assert s.evidence["union"] == {"rule": "timing", "detector_alerts": len(by["detector"]),
                                   "rule_alerts": len(by["timing"])}
    assert by["timing"], "the timing rule sees the fuzzing"
    assert not any("checks" in a for a in s.evidence["alert_list"])  # the timing rule has no named checks
    # The detector channel is the detector alone at its (half-budget) threshold ...
    alone = stream_detect(replace(det, evidence={k: v for k, v in det.evidence.items() if k != "union"}), d / "cap.log",
                          tmp_path / "a.csv", progress=False)
    assert [(a["frame"], a["key"]) for a in alone.evidence["alert_list"]] == by["detector"]
    # ... and the rule channel the rule's +-1 scores through their own CUSUM.
    sc = score_capture(det, d / "cap.log", rules={"timing": rule_function(det, "timing", d / "clean.log")})
    ev = Evidence(u["threshold"], u["clip"], u["drift"], u["holdoff_s"])
    a, _ = cusum_alerts(sc.rule_scores["timing"], sc.clock, sc.key, ev)
    assert a.index.tolist() == [f for f, _ in by["timing"]]
    frames_order = [a["frame"] for a in s.evidence["alert_list"]]
    assert frames_order == sorted(frames_order)
    # monitor: the same alerts, channel for channel
    save_detector(det, tmp_path / "udet")
    with can.Bus(interface="virtual", channel="m34_union") as bus:
        th = replay(frames, "m34_union", speed=10.0)
        monitor(FrameScorer(load_detector(tmp_path / "udet")), bus, alerts_path=tmp_path / "u.jsonl",
                max_frames=len(frames), batch_s=0.02, echo=lambda _: None)
        th.join()
    got = [json.loads(x) for x in (tmp_path / "u.jsonl").read_text().splitlines()]
    assert [(g["frame"], g["channel"]) for g in got] == [(a["frame"], a["channel"]) for a in s.evidence["alert_list"]]
    # The timing rule is the detector's feature state's: with the clean capture gone it runs the same; a rule fitted
    # on the clean frames (the ID allow-list) is fitted on it again when the detector is used: gone, it says so.
    moved = replace(det, evidence={**det.evidence, "union": {**u, "clean_capture": str(tmp_path / "gone.log")}})
    assert stream_detect(moved, d / "cap.log", tmp_path / "m.csv", progress=False).evidence["union"] == \
        s.evidence["union"]
    allow = replace(det, evidence={**det.evidence, "union": {**u, "rule": "id_allow_list",
                                                             "clean_capture": str(tmp_path / "gone.log")}})
    with pytest.raises(DataError, match="is not there"):
        stream_detect(allow, d / "cap.log", tmp_path / "m.csv", progress=False)
    with pytest.raises(DataError, match="not a rule of CAN traffic"):
        calibrate_detector(tiny_detector(), d / "clean.log", 60.0, union="nope")
    assert np.isfinite(u["threshold"])
