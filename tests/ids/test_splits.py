"""Train/test cuts of real-style captures: every attack on both sides, or a clear error."""

from pathlib import Path

import numpy as np
import pytest

from fastmaml.apps.ids import experiment as E
from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.splits import occurrence_cut, occurrences, time_cut
from fastmaml.errors import DataError

NAMES = ["benign", "a", "b"]


def _timeline(bursts_a, bursts_b=(), n=10_000):
    t = np.arange(n) * 0.01  # 100 s
    codes = np.zeros(n, np.int64)
    for c, bursts in ((1, bursts_a), (2, bursts_b)):
        for s in bursts:
            codes[int(s * 100):int(s * 100) + 5] = c  # 5 frames, 50 ms
    return t, codes


def test_occurrences_merge_close_frames():
    t, codes = _timeline([10, 20, 30], [15])
    runs = occurrences(t, codes, gap=0.05)
    assert [(c, t[a]) for a, _, c in runs] == [(1, 10.0), (2, 15.0), (1, 20.0), (1, 30.0)]
    assert len(occurrences(t, codes, gap=20.0)) == 2  # one run per type when the gap spans everything


def test_cut_keeps_every_attack_on_both_sides():
    # All of a's occurrences lie in the first 40 s: a 70/30 cut in time leaves none of them in test.
    t, codes = _timeline([2, 6, 10, 14, 18, 22, 26, 30, 34, 38], [5, 25, 85, 95])
    naive = time_cut(t, codes, NAMES, test_fraction=0.3, gap=0.05)
    assert naive.occurrences["a"]["test"] == 0
    cut = occurrence_cut(t, codes, NAMES, test_fraction=0.3, gap=0.05, min_occurrences=2)
    for name in ("a", "b"):
        assert cut.occurrences[name]["train"] >= 2 and cut.occurrences[name]["test"] >= 2
        assert cut.frames[name]["train"] + cut.frames[name]["test"] == (50 if name == "a" else 20)
    # The cut lies in the quiet time between two occurrences, never inside one.
    assert codes[cut.index - 1] == 0 and codes[cut.index] == 0


def test_cut_that_cannot_hold_an_attack_on_both_sides_names_it():
    t, codes = _timeline([50], [10, 30, 60, 80])
    with pytest.raises(DataError, match=r"occurrences per attack: \{'a': 1, 'b': 4\} \(too few: \{'a': 1\}\).*"
                                        r"source.min_occurrences"):
        occurrence_cut(t, codes, NAMES, test_fraction=0.3, gap=0.05, min_occurrences=2, capture="cap.log")


def _capture(tmp_path, attacks=("dos",)):
    """Per attack: 40 s with it in 4 bursts, then 40 s of clean driving (a real capture's 'attack early, then quiet')."""
    specs = []
    for k, attack in enumerate(attacks):
        att = sim.simulate(attack, 40.0, 1 + k, n_bursts=4, fraction=0.2)
        clean = sim.simulate("none", 40.0, 10 + k)
        clean.timestamp = clean.timestamp + 40.0
        sim.write_candump(FrameBatch.concat([att, clean]), tmp_path / f"{attack}.log", tmp_path / f"{attack}_labels.csv")
        specs.append(f"{{path: {tmp_path}/{attack}.log, labels: {tmp_path}/{attack}_labels.csv}}")
    return [f"source.captures=[{', '.join(specs)}]"]


def test_captures_source_splits_by_occurrence_and_refuses_a_silent_empty_side(tmp_path):
    caps = _capture(tmp_path)
    base = ["source.kind=captures", "source.attacks=[]", "source.test_fraction=0.3", "features.window=null"] + caps
    with pytest.raises(DataError, match=r"attack 'dos': 4 occurrence\(s\) in train, 0 in test"):
        E.prepare_data(E.load_ids_config("sim_tiny", base + ["source.split=time"]), log=lambda m: None)
    data = E.prepare_data(E.load_ids_config("sim_tiny", base), log=lambda m: None)
    cut = data.stats["split"]["cuts"][0]
    assert cut["occurrences"]["dos"] == {"train": 2, "test": 2}
    assert 10.0 < cut["clock"] < 40.0
    fam = data.families["dos"]
    assert fam.train.counts()["dos"] > 0 and fam.test.counts()["dos"] > 0
    # The test stream for the operational evaluation is the capture after the cut, in order.
    st = data.streams["dos"]
    assert float(st.clock[0]) >= cut["clock"] and bool((st.clock[1:] >= st.clock[:-1]).all())
    assert int(st.attack.sum()) == cut["frames"]["dos"]["test"]
    assert not bool(data.streams["benign_fit"].attack.any()) and len(data.streams["benign_fit"].x) > 1000


def test_compare_judges_adapted_detectors_on_whole_streams(tmp_path):
    caps = _capture(tmp_path, ("dos", "fuzzing"))
    cfg = E.load_ids_config("sim_tiny", ["source.kind=captures", "source.attacks=[]", "features.window=null",
                                         "methods=[scratch, maml]", "eval.operational_episodes=2",
                                         "eval.calibrate_fpr=0.01"] + caps)
    report = E.compare(cfg, tmp_path / "out")
    ops = report.folds[0].operational["dos"]
    assert ops.detectors_per_method == 2 and set(ops.methods) == {"scratch", "maml"}
    maml = ops.methods["maml"]
    for key in ("attack/frame_recall", "attack/frame_fpr", "calibrated/attack/frame_fpr",
                "attack/1-of-1/occurrence_detection_rate", "attack/2-of-4/false_alerts_per_hour"):
        assert maml[key].n >= 1 and maml[key].mean >= 0
    assert 0 <= maml["attack/frame_fpr"].mean <= 1 and 0 <= maml["attack/frame_recall"].mean <= 1
    # The timing rule on a DoS stream: the flood's frames arrive far too early for their ID.
    assert ops.rules["timing"]["attack/frame_recall"] > 0.9
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Judged as a vehicle would" in text and "MAML, calibrated" in text and "## Train/test split" in text
    assert "## Against chance" in text


DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_daga_source_cuts_all_captures_at_one_time_between_occurrences(tmp_path):
    if not (DATA_ROOT / "ids" / "daga").is_dir():
        pytest.skip(f"DAGA data not found under {DATA_ROOT} (only present next to the project's checkout)")
    cfg = E.load_ids_config("daga", [f"source.data_root={DATA_ROOT}", "source.attacks=[dos, single_id_replay]"])
    data = E.prepare_data(cfg, log=lambda m: None)
    cuts = data.stats["split"]["cuts"]
    assert len({c["clock"] for c in cuts}) == 1  # one drive, one cut time
    at = cuts[0]["clock"]
    occ = {a: v for c in cuts for a, v in c["occurrences"].items()}
    # DoS comes in ~154 bursts of frames 0.2 ms apart: bursts, not frames, are occurrences.
    assert 100 < occ["dos"]["train"] + occ["dos"]["test"] <= 160
    assert min(occ["dos"].values()) >= 2 and min(occ["single_id_replay"].values()) >= 2
    for name in ("dos", "single_id_replay"):
        st = data.streams[name]
        assert float(st.clock[0]) >= at and int(st.attack.sum()) > 0
    # Features were fitted on clean driving before the cut only; streams after it.
    assert len(data.streams["benign_fit"].x) < 245_144 * (at / 153.0) * 1.01
    assert float(data.streams["benign"].clock[0]) >= at
