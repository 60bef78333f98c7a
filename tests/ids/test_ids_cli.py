import csv
import json

import numpy as np
import pytest
import torch

from fastmaml.apps.ids.can import sim as can_sim
from fastmaml.apps.ids.can.readers import read_capture
from fastmaml.apps.ids.detect import Detector, adapt_detector, load_detector, save_detector, stream_detect
from fastmaml.apps.ids.config import ModelConfig
from fastmaml.apps.ids.models import build_model
from fastmaml.apps.ids.can.features import FRAME_FEATURES, FeatureState
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.cli import main
from fastmaml.config import to_dict
from fastmaml.errors import DataError


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A simulated labelled capture and a detector meta-trained on two other attacks (via the CLI)."""
    d = tmp_path_factory.mktemp("ids_cli")
    assert main(["ids", "simulate", "--attack", "spoof_speed", "--duration", "12", "--seed", "5",
                 "--out", str(d / "cap.log")]) == 0
    assert main(["ids", "train", "--preset", "sim_tiny", "--out", str(d / "trained"), "train.iterations=20",
                 "source.sim.duration_s=15"]) == 0
    return d


def test_simulate_writes_capture_and_labels(workdir):
    frames = read_capture(workdir / "cap.log", labels=workdir / "cap_labels.csv")
    assert len(frames) > 1000 and frames.label_names == ["benign", "spoof_speed"]
    assert 0 < frames.is_attack().sum() < len(frames)


def test_adapt_and_detect_one_verdict_per_frame(workdir, capsys):
    d = workdir
    assert main(["ids", "adapt", "--detector", str(d / "trained" / "detector"), "--capture", str(d / "cap.log"),
                 "--labels", str(d / "cap_labels.csv"), "--shots", "5", "--out", str(d / "adapted")]) == 0
    meta = json.loads((d / "adapted" / "detector.json").read_text())
    assert meta["meta"]["adapted_to"] == "spoof_speed" and meta["meta"]["shots"] == 5
    assert meta["meta"]["trained_on"] == ["dos", "fuzzing"]
    capsys.readouterr()
    assert main(["ids", "detect", "--detector", str(d / "adapted"), "--capture", str(d / "cap.log"),
                 "--labels", str(d / "cap_labels.csv"), "--out", str(d / "v.csv"), "--chunk-size", "700"]) == 0
    out = capsys.readouterr().out
    assert "frames/s" in out and "f1=" in out
    rows = _rows(d / "v.csv")
    frames = read_capture(d / "cap.log", labels=d / "cap_labels.csv")
    assert len(rows) == len(frames)
    assert [int(r["frame"]) for r in rows] == list(range(len(frames)))
    assert [int(r["can_id"]) for r in rows[:50]] == frames.can_id[:50].tolist()
    assert [int(r["label"]) for r in rows] == frames.is_attack().astype(int).tolist()
    assert all(r["verdict"] in ("0", "1") and 0.0 <= float(r["p_attack"]) <= 1.0 for r in rows)


def test_saved_detector_round_trips(workdir, tmp_path):
    det = load_detector(workdir / "trained" / "detector")
    save_detector(det, tmp_path / "copy")
    again = load_detector(tmp_path / "copy" / "detector.json")
    assert again.params.keys() == det.params.keys()
    assert all(torch.equal(again.params[k], det.params[k]) for k in det.params)
    assert {k: v for k, v in again.__dict__.items() if k != "params"} == {k: v for k, v in det.__dict__.items()
                                                                         if k != "params"}
    x = torch.rand(7, len(det.feature_names))
    assert torch.equal(again.module()(x), det.module()(x))
    # Plain JSON + safetensors, nothing executable.
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["detector.json", "detector.safetensors"]
    assert json.loads((tmp_path / "copy" / "detector.json").read_text())["format"] == "fastmaml.ids.Detector"


def _window_detector(window: int | None = 4) -> Detector:
    fit = can_sim.simulate("none", 5.0, 1)
    torch.manual_seed(0)
    mc = ModelConfig(name="mlp", hidden=[8])
    names = [n for n in FRAME_FEATURES if n != "id_known"]
    net = build_model(mc, len(names), window)
    return Detector(to_dict(mc), {k: v.detach() for k, v in net.state_dict().items()}, FeatureState.fit(fit).to_dict(),
                    names, window, None, "any", ["benign", "attack"], 0.1, 3)


def test_window_detector_streams_the_same_in_any_chunking(tmp_path):
    det = _window_detector(4)
    frames = can_sim.simulate("dos", 6.0, 2)
    can_sim.write_candump(frames, tmp_path / "c.log", tmp_path / "l.csv")
    a = stream_detect(det, tmp_path / "c.log", tmp_path / "a.csv", labels=tmp_path / "l.csv", chunk_size=333,
                      progress=False)
    b = stream_detect(det, tmp_path / "c.log", tmp_path / "b.csv", labels=tmp_path / "l.csv", progress=False)
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    rows = _rows(tmp_path / "a.csv")
    assert a.frames == len(frames) and len(rows) == len(frames) // 4 == a.samples
    assert rows[1]["first_frame"] == "4" and rows[1]["last_frame"] == "7"
    # Window labels: attack when any of its 4 frames is an attack frame.
    att = frames.is_attack()[: 4 * len(rows)].reshape(-1, 4).any(1)
    assert [int(r["label"]) for r in rows] == att.astype(int).tolist()
    assert a.metrics is not None and b.metrics == a.metrics
    # Alerts: the same in any chunking, and windows ending in a DoS burst count as true alerts.
    assert a.alerts == b.alerts and set(a.alerts) == {"1-of-1", "2-of-4"}
    one = a.alerts["1-of-1"]
    flagged = [r for r in rows if r["verdict"] == "1"]
    assert 0 <= one["false_alerts"] <= one["alerts"] <= len(flagged) and one["occurrences"] >= 1


def test_detect_reports_false_alerts_per_hour_on_clean_traffic(tmp_path):
    # A detector that flags everything raises at most one alert per stream and second (the hold-off):
    # on clean traffic every one of them is false.
    det = _window_detector(None)
    det = Detector(**{**det.__dict__, "threshold": -1.0})
    frames = can_sim.simulate("none", 6.0, 3)
    can_sim.write_candump(frames, tmp_path / "c.log", tmp_path / "l.csv")
    s = stream_detect(det, tmp_path / "c.log", tmp_path / "v.csv", labels=tmp_path / "l.csv", progress=False)
    m = s.alerts["1-of-1"]
    n_ids = len(set(frames.can_id.tolist()))
    span = float(frames.timestamp[-1] - frames.timestamp[0])
    assert m["false_alerts"] == m["alerts"] and n_ids * span * 0.9 <= m["alerts"] <= n_ids * (span + 1)
    assert m["false_alerts_per_hour"] == pytest.approx(m["alerts"] / (span / 3600), rel=1e-6)


def test_bad_inputs_give_clear_errors(workdir, tmp_path, capsys):
    def err(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "unknown attack 'nope'; valid: none, dos, fuzzing" in err(
        ["ids", "simulate", "--attack", "nope", "--out", str(tmp_path / "x.log")])
    msg = err(["ids", "compare", "--preset", "tiny", "--holdout", "attack0,nope", "--out", str(tmp_path / "c")])
    assert "unknown held-out attack ['nope']" in msg and "valid attacks: ['attack0', 'attack1'" in msg
    det = str(workdir / "trained" / "detector")
    cap, lab = str(workdir / "cap.log"), str(workdir / "cap_labels.csv")
    msg = err(["ids", "adapt", "--detector", det, "--capture", cap, "--labels", lab, "--shots", "100000",
               "--out", str(tmp_path / "a")])
    assert "--shots 100000 needs 100000 per class" in msg and "lower --shots" in msg
    assert "attack 'dos' not in" in err(["ids", "adapt", "--detector", det, "--capture", cap, "--labels", lab,
                                         "--attack", "dos", "--out", str(tmp_path / "a")])
    assert "not found" in err(["ids", "detect", "--detector", det, "--capture", str(tmp_path / "missing.log"),
                               "--out", str(tmp_path / "v.csv")])
    assert "is not a detector folder" in err(["ids", "detect", "--detector", str(tmp_path), "--capture", cap,
                                              "--out", str(tmp_path / "v.csv")])
    assert "unknown IDS preset 'nope'" in err(["ids", "train", "--preset", "nope", "--out", str(tmp_path / "t")])
    assert "unknown attack ['nope']" in err(["ids", "train", "--preset", "sim_tiny", "--attacks", "nope",
                                            "--out", str(tmp_path / "t")])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "detector.json").write_text("{}")
    (tmp_path / "broken" / "detector.safetensors").write_bytes(b"junk")
    assert "not a fastmaml IDS detector" in err(["ids", "detect", "--detector", str(tmp_path / "broken"),
                                                 "--capture", cap, "--out", str(tmp_path / "v.csv")])


def test_adapt_unlabelled_capture_is_an_error(workdir, tmp_path):
    det = load_detector(workdir / "trained" / "detector")
    with pytest.raises(DataError, match="frames without labels"):
        adapt_detector(det, workdir / "cap.log", 5)
    frames = can_sim.simulate("none", 3.0, 9)
    can_sim.write_candump(frames, tmp_path / "b.log", tmp_path / "b.csv")
    with pytest.raises(DataError, match="has 0 'attack' samples but --shots 2"):
        adapt_detector(det, tmp_path / "b.log", 2, labels=tmp_path / "b.csv")
    assert np.isfinite(det.inner_lr)


@pytest.mark.parametrize("w,stride", [(4, 4), (5, 2), (3, 7)])
def test_window_stream_gives_one_pass_windows_in_any_chunking(w, stride):
    """The carry used by both CAN and Ethernet detection: chunked pushes = one push of everything."""
    from fastmaml.apps.ids.detect.stream import _WindowStream

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(101, 3)).astype(np.float32), rng.integers(0, 2, 101)
    first_all, xs_all, _ = _WindowStream(3, w, stride).push(x, y)
    stream, firsts, windows = _WindowStream(3, w, stride), [], []
    for lo, hi in zip([0, 1, 9, 10, 40], [1, 9, 10, 40, 101]):
        f, xs, yt = stream.push(x[lo:hi], y[lo:hi])
        n = min(len(yt), hi - lo)  # rows a stride > w skips are dropped from the chunk's start
        assert np.array_equal(yt[len(yt) - n:], y[hi - n:hi])  # the chunk's labels, after the carried ones
        firsts.append(f)
        windows.append(xs)
    assert np.array_equal(np.concatenate(firsts), first_all)
    assert np.array_equal(np.concatenate(windows), xs_all)
    assert np.array_equal(first_all, np.arange(len(first_all)) * stride) and len(first_all) == (101 - w) // stride + 1
    assert np.array_equal(xs_all[-1], x[first_all[-1]: first_all[-1] + w])


def test_detect_without_timestamps_needs_an_assumed_bus_rate_for_alerts(tmp_path):
    det = Detector(**{**_window_detector(None).__dict__, "threshold": -1.0})
    frames = can_sim.simulate("none", 3.0, 5)
    log = "".join(f"can0 {int(c):03X} [8] " + " ".join(f"{x:02X}" for x in d[:8]) + "\n"
                  for c, d in zip(frames.can_id, frames.data))  # console form without timestamps
    (tmp_path / "c.log").write_text(log)
    det = Detector(**{**det.__dict__, "feature_state": FeatureState.fit(_no_time(frames)).to_dict()})
    s = stream_detect(det, tmp_path / "c.log", tmp_path / "v.csv", progress=False)
    assert s.alerts == {}
    s = stream_detect(det, tmp_path / "c.log", tmp_path / "v.csv", progress=False, frames_per_second=1000.0)
    m = s.alerts["1-of-1"]
    # Flag everything: one alert per ID per assumed second.
    n_ids = len(set(frames.can_id.tolist()))
    assert n_ids * (len(frames) / 1000.0 - 1) <= m["alerts"] <= n_ids * (len(frames) / 1000.0 + 1)


def _no_time(frames: FrameBatch) -> FrameBatch:
    return FrameBatch(np.full(len(frames), np.nan), frames.can_id, frames.is_extended, frames.is_remote, frames.is_fd,
              frames.dlc, frames.length, frames.data, frames.label, list(frames.label_names))
