"""Captures labelled by an injection metadata file (can/road.py: the ROAD data set's layout).

A folder of candump logs and one capture_metadata.json describing each log by its stem: the injected ID, the
payload pattern and the interval. Frames must be labelled from it, a type's numbered logs must form one attack,
and what cannot be labelled frame by frame must be left out and said so.
"""

import json

import numpy as np
import pytest

from fastmaml.apps.ids import experiment as E
from fastmaml.apps.ids.can import road
from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.source import read_labelled
from fastmaml.apps.ids.config import CaptureSpec, SourceConfig
from fastmaml.errors import DataError

START = 1_600_000_000.0  # logs on an absolute clock; the metadata's intervals count from the start of each log
SPEED = 0x0C8  # the simulator's vehicle-speed message


def _write_log(path, frames, start=START):
    with open(path, "w") as fh:
        for k in range(len(frames)):
            fh.write(f"({frames.timestamp[k] + start:.6f}) can0 {int(frames.can_id[k]):03X}#"
                     f"{frames.data[k, :frames.length[k]].tobytes().hex().upper()}\n")


def _masquerade(frames, t0, t1):
    """The speed message's byte 1 rewritten to 0xFF inside [t0, t1] (the genuine frames, as a masquerade does)."""
    out = frames.select(np.arange(len(frames)))
    rows = (out.can_id == SPEED) & (out.timestamp >= t0) & (out.timestamp <= t1)
    out.data[rows, 1] = 0xFF
    return out, int(rows.sum())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("road")
    meta = {"ambient_drive_short": {"elapsed_sec": 20.0, "on_dyno": True}}
    counts = {}
    for k, (t0, t1) in enumerate([(4.0, 9.0), (11.0, 15.0)], start=1):
        frames, n = _masquerade(sim.simulate("none", 20.0, k), t0, t1)
        stem = f"max_speedometer_attack_{k}_masquerade"
        _write_log(d / f"{stem}.log", frames)
        meta[stem] = {"injection_id": "0xc8", "injection_data_str": "XXFFXXXXXXXXXXXX",
                      "injection_interval": [t0, t1], "modified": True}
        counts[stem] = n
    _write_log(d / "ambient_drive_short.log", sim.simulate("none", 20.0, 7))
    _write_log(d / "fuzzing_attack_1.log", sim.simulate("none", 20.0, 8))
    meta["fuzzing_attack_1"] = {"injection_id": "XXX", "injection_data_str": "XXXXXXXXXXXXXXXX",
                                "injection_interval": [2.0, 5.0], "modified": False}
    _write_log(d / "accelerator_attack_drive_1.log", sim.simulate("none", 20.0, 9))
    meta["accelerator_attack_drive_1"] = {"elapsed_sec": 20.0}
    (d / "capture_metadata.json").write_text(json.dumps(meta))
    return d, counts


def test_frames_are_labelled_from_the_metadata_and_named_by_type(folder):
    d, counts = folder
    meta = str(d / "capture_metadata.json")
    src = SourceConfig(kind="captures")
    for stem, n in counts.items():
        frames = read_labelled(CaptureSpec(path=str(d / f"{stem}.log"), labels=meta), src, lambda m: None)
        assert frames.label_names == ["benign", "max_speedometer_masquerade"]
        assert int(frames.is_attack().sum()) == n  # exactly the rewritten frames
        assert (frames.can_id[frames.is_attack()] == SPEED).all() and (frames.data[frames.is_attack(), 1] == 0xFF).all()
    clean = read_labelled(CaptureSpec(path=str(d / "ambient_drive_short.log"), labels=meta), src, lambda m: None)
    assert not clean.is_attack().any()
    assert road.Injection("max_speedometer_attack_2").attack == "max_speedometer_fabrication"
    assert road.Injection("max_engine_coolant_temp_attack_masquerade").attack == "max_engine_coolant_temp_masquerade"


def test_a_folder_entry_takes_the_logs_it_can_label_and_says_which_it_left_out(folder):
    d, _ = folder
    logs: list[str] = []
    paths = road.logs_in(d, road.read_metadata(d / "capture_metadata.json"), logs.append)
    assert [p.stem for p in paths] == ["ambient_drive_short", "max_speedometer_attack_1_masquerade",
                                       "max_speedometer_attack_2_masquerade"]
    assert "fuzzing_attack_1.log (injection_id 'XXX' is not one CAN ID)" in logs[0]
    assert "accelerator_attack_drive_1.log (no injection described)" in logs[0]
    cfg = E.load_ids_config("captures", ["features.max_benign=300", "features.max_attack=200"])
    cfg.source.captures = [CaptureSpec(path=str(d), labels=str(d / "capture_metadata.json"))]
    data = E.prepare_data(cfg, log=lambda m: None)
    assert data.attacks == ["max_speedometer_masquerade"]
    cuts = {c["capture"].rsplit("/", 1)[-1]: c["method"] for c in data.stats["split"]["cuts"]}
    assert cuts["max_speedometer_attack_2_masquerade.log"] == "by_capture"  # the type's second log held out whole


def test_metadata_that_does_not_fit_the_logs_is_a_clear_error(folder, tmp_path):
    d, _ = folder
    src = SourceConfig(kind="captures")
    bad = tmp_path / "meta.json"
    bad.write_text(json.dumps({"max_speedometer_attack_1_masquerade": {
        "injection_id": "0xc8", "injection_data_str": "XXFF", "injection_interval": [400.0, 500.0]}}))
    with pytest.raises(DataError, match="lies outside the log"):
        read_labelled(CaptureSpec(path=str(d / "max_speedometer_attack_1_masquerade.log"), labels=str(bad)), src,
                      lambda m: None)
    with pytest.raises(DataError, match="no entry for 'ambient_drive_short'"):
        read_labelled(CaptureSpec(path=str(d / "ambient_drive_short.log"), labels=str(bad)), src, lambda m: None)
    bad.write_text(json.dumps({"x_attack_1": {"injection_id": "0x10", "injection_data_str": "GG",
                                              "injection_interval": [1, 2]}}))
    with pytest.raises(DataError, match="injection_data_str 'GG'"):
        road.read_metadata(bad)
    bad.write_text(json.dumps({"x_attack_1": {"injection_id": "0x10", "injection_interval": [5, 2]}}))
    with pytest.raises(DataError, match=r"entry 'x_attack_1': injection_interval \[5, 2\]"):
        road.read_metadata(bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read the injection metadata"):
        road.read_metadata(bad)
