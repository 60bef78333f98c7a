"""A folder of real-style labelled CSV captures (one injection interval per file) through the captures preset.

The folder: three files of ``dos`` (a whole-file hold-out is possible), one of ``fuzzy`` (one
interval: cut inside it), one of ``spoof`` with several bursts (cut between occurrences) and one
``tiny`` injection too small for the configured query set (its query set shrinks; the others are reported).
"""

import csv
import json

import numpy as np
import pytest
import torch

from fastmaml.apps.ids import experiment as E
from fastmaml.apps.ids.config import CaptureSpec
from fastmaml.apps.ids.episodes import check_sizes
from fastmaml.apps.ids.families import IdsData, TaskFamily
from fastmaml.apps.ids.samples import SampleSet
from fastmaml.apps.ids.splits import occurrence_cut, within_interval_cut
from fastmaml.errors import ConfigError, DataError

BYTES = [f"B{i}" for i in range(1, 9)]
COLUMNS = {"time": "Zeit", "id": "Kennung", "id_base": "hex", "bytes": BYTES, "label": "Klasse",
           "benign_values": ["normal"]}
PERIODS = {0x100: 0.01, 0x200: 0.02, 0x300: 0.05}  # benign periodic IDs (s)
LEAK_ID = 0x7AB  # a benign ID only the held-out dos file carries: features fitted on it would leak
# attack -> (CAN ID or None for random IDs, frame period s, frames per burst, burst starts s)
INJECTIONS = {"dos": (0x000, 0.002, 300, [4.0]), "fuzzy": (None, 0.01, 60, [3.0]),
              "spoof": (0x200, 0.01, 20, [1.0, 3.0, 5.0, 7.0]), "tiny": (0x100, 0.01, 30, [5.0]),
              "clean": (0x100, 0.01, 0, [])}


def _write_capture(path, attack: str, seed: int, extra_ids: tuple[int, ...] = (), duration: float = 10.0) -> None:
    """Benign periodic frames on a few IDs plus ``attack``'s injection(s), as a ;-separated CSV with a label column."""
    rng = np.random.default_rng(seed)
    rows = []
    for cid in [*PERIODS, *extra_ids]:
        period = PERIODS.get(cid, 0.1)
        for n, t in enumerate(np.arange(rng.uniform(0, period), duration, period)):
            rows.append((t, cid, [n % 256, cid & 0xFF, 7, 0, 0, 0, 0, n // 256 % 256], "normal"))
    cid, period, n, starts = INJECTIONS[attack]
    for s in starts:
        for k in range(n):
            payload = [0] * 8 if attack == "dos" else rng.integers(0, 256, 8).tolist()
            rows.append((s + k * period + 1e-4, int(rng.integers(0, 0x800)) if cid is None else cid, payload, attack))
    rows.sort(key=lambda r: r[0])
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["Zeit", "Kennung", *BYTES, "Klasse"])
        for t, c, payload, label in rows:
            w.writerow([f"{t:.6f}", f"{c:03X}", *payload, label])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("captures")
    for k in (1, 2, 3):
        _write_capture(d / f"dos_{k}.csv", "dos", k, extra_ids=(LEAK_ID,) if k == 3 else ())
    for k, attack in enumerate(("fuzzy", "spoof", "tiny")):
        _write_capture(d / f"{attack}.csv", attack, 10 + k)
    return d


def _specs(folder, names):
    return [CaptureSpec(path=str(folder / f"{n}.csv"), format="csv", columns=dict(COLUMNS)) for n in names]


TINY = ["train.iterations=4", "train.meta_batch_size=2", "train.checkpoint_every=4", "train.log_every=4",
        "train_shots=2", "train_query=5", "seeds=[0]", "methods=[scratch, maml]", "model.hidden=[8]",
        "eval.shots=[2, 12]", "eval.query=8", "eval.episodes=2", "eval.steps=1", "eval.report_steps=[0, 1]",
        "eval.tuning_episodes=2", "eval.finetune_lrs=[0.1]", "eval.operational_episodes=0",
        "features.max_benign=300", "features.max_attack=200"]


def _cfg(folder, names, *overrides):
    cfg = E.load_ids_config("captures", [*TINY, *overrides])
    cfg.source.captures = _specs(folder, names)
    return cfg


def _prepare(folder, names, *overrides):
    logs: list[str] = []
    return E.prepare_data(_cfg(folder, names, *overrides), log=logs.append), logs


def test_by_capture_holds_out_whole_files_and_fits_on_training_files_only(folder):
    data, _ = _prepare(folder, ["dos_1", "dos_2", "dos_3"], "source.split=by_capture")
    cuts = {c["capture"].rsplit("/", 1)[-1]: c for c in data.stats["split"]["cuts"]}
    assert [cuts[f"dos_{k}.csv"]["method"] for k in (1, 2, 3)] == ["by_capture"] * 3
    # About 30% of three files, at least one: the last one listed is the test file, whole.
    assert cuts["dos_3.csv"]["index"] == 0 and cuts["dos_3.csv"]["frames"]["dos"]["train"] == 0
    for k in (1, 2):
        frames = cuts[f"dos_{k}.csv"]["frames"]
        assert frames["dos"]["test"] == 0 and frames["benign"]["test"] == 0
    att = data.stats["split"]["attacks"]["dos"]
    assert att["method"] == "by_capture" and [f.rsplit("/", 1)[-1] for f in att["test_files"]] == ["dos_3.csv"]
    assert len(att["train_files"]) == 2
    # The held-out file's benign-only ID never reached the fitted features (leakage-free).
    assert LEAK_ID not in data.feature_state["known_ids"] and 0x100 in data.feature_state["known_ids"]
    st = data.streams["dos"]
    assert st.source.endswith("dos_3.csv held out whole") and int(st.attack.sum()) == 300
    fam = data.families["dos"]
    assert fam.train.counts()["dos"] == 200 and fam.test.counts()["dos"] == 200  # capped at features.max_attack
    # A type with one file cannot be held out whole: the error says which and what to use.
    with pytest.raises(DataError, match=r"attack 'fuzzy' has 1 capture\(s\).*source.split=auto"):
        _prepare(folder, ["dos_1", "dos_2", "fuzzy"], "source.split=by_capture")


def test_auto_picks_per_attack_type_and_logs_it(folder):
    data, logs = _prepare(folder, ["dos_1", "dos_2", "dos_3", "fuzzy", "spoof"])
    assert data.stats["split"]["kind"] == "auto"  # the captures preset's default
    assert ("split: dos by_capture (2 train files, 1 test file); fuzzy within_interval (1 file); "
            "spoof occurrences (1 file)") in logs
    chosen = {a: d["method"] for a, d in data.stats["split"]["attacks"].items()}
    assert chosen == {"dos": "by_capture", "fuzzy": "within_interval", "spoof": "occurrences"}
    for a in chosen:
        assert data.families[a].train.counts()[a] > 0 and data.families[a].test.counts()[a] > 0
    spoof = next(c for c in data.stats["split"]["cuts"] if c["capture"].endswith("spoof.csv"))
    assert min(spoof["occurrences"]["spoof"].values()) >= 2


def test_within_interval_cut_leaves_attack_frames_on_both_sides_and_none_in_both(folder):
    t = np.arange(2000) * 0.005  # 10 s
    codes = np.zeros(2000, np.int64)
    codes[800:1000] = 1  # one interval of 200 frames
    with pytest.raises(DataError):
        occurrence_cut(t, codes, ["benign", "x"], test_fraction=0.3, gap=0.05, min_occurrences=2)
    cut = within_interval_cut(t, codes, ["benign", "x"], test_fraction=0.3, gap=0.05)
    assert 800 < cut.index < 1000 and cut.method == "within_interval"
    assert cut.frames["x"] == {"train": 140, "test": 60}  # 30% of the interval's frames after the cut
    assert cut.frames["benign"]["train"] + cut.frames["benign"]["test"] == 1800
    assert cut.occurrences["x"] == {"train": 1, "test": 1}  # the interval lies on both sides
    # Through the source: the capture's test part (its stream) starts at the cut and holds the rest.
    data, _ = _prepare(folder, ["fuzzy"], "source.split=within_interval")
    c = data.stats["split"]["cuts"][0]
    assert c["frames"]["fuzzy"] == {"train": 42, "test": 18}
    st = data.streams["fuzzy"]
    assert float(st.clock[0]) == pytest.approx(c["clock"]) and int(st.attack.sum()) == 18
    assert len(st.clock) == sum(v["test"] for v in c["frames"].values())


def test_small_type_is_skipped_and_a_rerun_reuses_finished_folds(folder, tmp_path, monkeypatch):
    cfg = _cfg(folder, ["dos_1", "dos_2", "dos_3", "fuzzy", "tiny"])
    out = tmp_path / "out"
    calls = []
    real = E.train_method
    monkeypatch.setattr(E, "train_method", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    E.compare(cfg, out)
    res = json.loads((out / "results.json").read_text())
    assert [f["fold"] for f in res["folds"]] == ["dos", "fuzzy", "tiny"] and not res["skipped_folds"]
    # tiny's 9 test samples cannot hold K + Q = 2 + 8: its query set shrinks to 7 rather than the fold being skipped.
    tiny = res["folds"][2]
    assert tiny["query"] == 7 and tiny["query_shrunk_from"] == 8 and list(tiny["results"]["tiny"]) == ["2"]
    # fuzzy's test part fills K = 2 but not K = 12: that K is left out, the fold is reported.
    fuzzy = res["folds"][1]
    assert list(fuzzy["results"]["fuzzy"]) == ["2"] and "has 18 'fuzzy' samples" in fuzzy["skipped_shots"]["12"]
    assert fuzzy["query"] == 8 and "query_shrunk_from" not in fuzzy
    assert list(res["folds"][0]["results"]["dos"]) == ["2", "12"] and not res["folds"][0]["skipped_shots"]
    report = (out / "report.md").read_text()
    assert "## Skipped folds and K" in report and "fuzzy, K = 12:" in report
    assert "Fold tiny: query set shrunk to Q = 7 per class" in report
    assert "whole file: test" in report and "(inside the interval)" in report
    assert calls.count("maml") == 3
    # A rerun trains nothing: the finished folds come from out/evals.
    calls.clear()
    again = E.compare(cfg, out)
    assert calls == [] and [f.fold for f in again.folds] == ["dos", "fuzzy", "tiny"]
    assert [s.to_dict() for s in again.skipped_folds] == res["skipped_folds"]
    # A K the small type cannot fill even with one query sample per class: every fold is skipped, the error says why.
    big = _cfg(folder, ["dos_1", "dos_2", "dos_3", "fuzzy", "tiny"], "eval.shots=[9, 12]")
    with pytest.raises(DataError, match=r"every fold was skipped: fold tiny: no K of eval.shots \[9, 12\] fits: "
                                        r"test part of attack 'tiny' has 9 'tiny' samples but episodes need "
                                        r"K \+ Q = 9 \+ 8.*longer captures"):
        E.compare(big, out, folds=[["tiny"]])


def test_hints_name_the_knobs_of_the_source_kind():
    t = np.arange(2000) * 0.005
    codes = np.zeros(2000, np.int64)
    codes[800:1000] = 1
    with pytest.raises(DataError) as err:
        occurrence_cut(t, codes, ["benign", "x"], test_fraction=0.3, gap=0.05, min_occurrences=2, capture="one.csv")
    msg = str(err.value)
    assert "single occurrence: lower source.occurrence_gap_s (now 0.05)" in msg
    assert "source.split=by_capture" in msg and "source.split=auto" in msg
    assert "raise source.occurrence_gap_s" not in msg
    s = SampleSet(torch.zeros(30, 2), torch.cat([torch.zeros(25), torch.ones(5)]).long(), ["benign", "x"], ["a", "b"])
    data = IdsData({"x": TaskFamily("x", s, s)}, ["a", "b"], None)
    with pytest.raises(DataError) as err:
        check_sizes(data, ["x"], "test", 5, 10, "eval.shots", "captures")
    msg = str(err.value)
    assert "lower eval.shots or eval.query" in msg and "longer captures" in msg and "features.max_attack" in msg
    assert "sim.duration_s" not in msg
    with pytest.raises(DataError, match=r"source\.sim\.duration_s"):
        check_sizes(data, ["x"], "test", 5, 10, "eval.shots", "sim")
    with pytest.raises(DataError, match=r"lower train_shots or train_query, or give the source more data$"):
        check_sizes(data, ["x"], "train", 5, 10, "train_shots")
    # The folder splits are for capture folders: other kinds say which splits they take.
    with pytest.raises(ConfigError, match=r"source.split=auto splits a folder.*source.kind=sim takes"):
        E.load_ids_config("sim_tiny", ["source.split=auto"])


def test_calibration_uses_attack_free_captures_and_keeps_clear_of_attacks():
    """Thresholds are calibrated on clean driving: the captures without attacks where they hold a quarter of the
    frames or more; else all captures, featurized as recorded, with every frame within ATTACK_GUARD_S of an attack frame left out (the
    attacked ID's partners disagree with it while it lasts)."""
    import numpy as np

    from fastmaml.apps.ids.can.frames import FrameBatch
    from fastmaml.apps.ids.can.source import ATTACK_GUARD_S, away_from_attacks, calibration_captures

    n = 1000
    t = np.arange(n) * 0.01  # 10 s at 100 Hz
    label = ((t >= 4.0) & (t < 5.0)).astype(np.int16)
    attacked = FrameBatch(t, np.full(n, 0x100, np.uint32), np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool),
                          np.full(n, 8, np.uint8), np.full(n, 8, np.uint8), np.zeros((n, 8), np.uint8), label,
                          ["benign", "masquerade"])
    clean = attacked.select(np.arange(n))
    clean.label = np.zeros(n, np.int16)
    assert calibration_captures([attacked, clean]) == [clean]
    assert calibration_captures([attacked]) == [attacked]
    short = clean.select(slice(0, 100))  # a tenth of an attack capture's frames: too little to calibrate on alone
    assert calibration_captures([attacked, attacked, short]) == [attacked, attacked, short]
    far = away_from_attacks(attacked, 0.05)
    near = (t > 4.0 - ATTACK_GUARD_S - 0.005) & (t < 4.99 + ATTACK_GUARD_S + 0.005)
    assert not far[near].any() and far[~near].all()
    assert away_from_attacks(clean, 0.05).all()
    # without timestamps the guard is counted in frames (1,000 a "second", as the occurrence gap is)
    m = 10_000
    untimed = FrameBatch(np.full(m, np.nan), np.full(m, 0x100, np.uint32), np.zeros(m, bool), np.zeros(m, bool),
                         np.zeros(m, bool), np.full(m, 8, np.uint8), np.full(m, 8, np.uint8), np.zeros((m, 8), np.uint8),
                         ((np.arange(m) >= 4000) & (np.arange(m) < 5000)).astype(np.int16), ["benign", "masquerade"])
    far = away_from_attacks(untimed, 0.05)
    assert far[:2000].all() and not far[2000:7000].any() and far[7000:].all()


def test_calibration_spreads_its_frames_over_every_clean_capture_and_keeps_their_history():
    """Where the clean captures hold more frames than calibration keeps, it keeps contiguous pieces spread over all
    of them in proportion to their length (not the first drive's first minutes: that may be an hour of idling), and
    each piece's features are those of the capture featurized from its start (history carried, not restarted)."""
    import numpy as np

    from fastmaml.apps.ids.can import sim
    from fastmaml.apps.ids.can.features import FeatureState
    from fastmaml.apps.ids.can.source import calibration_rows, frame_stream

    rows = calibration_rows([600, 300, 100], cap=100, pieces=4)
    assert [len(r) for r in rows] == [60, 30, 10]
    first = rows[0]
    assert first[0] == 0 and first[-1] == 599  # the longest capture's pieces reach from its start to its end
    assert len(np.unique(first)) == len(first) and (np.diff(first) > 0).all()
    runs = np.flatnonzero(np.diff(first) > 1)
    assert len(runs) == 1 and len(first[: runs[0] + 1]) == 30  # two pieces of 30 (4 x 600 / 1,000, rounded)
    assert [len(r) for r in calibration_rows([50, 40], cap=100)] == [50, 40]  # everything while it fits

    b = sim.simulate("none", 20.0, 3)
    state = FeatureState.fit([b], signals=True)
    whole = frame_stream(b, state, None, "")
    keep = np.r_[np.arange(1000, 1500), np.arange(6000, 6400)]
    part = frame_stream(b, state, None, "", rows=keep)
    assert torch_equal(part.x, whole.x[keep]) and (part.key.numpy() == whole.key.numpy()[keep]).all()
    assert (part.clock.numpy() == whole.clock.numpy()[keep]).all()


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_false_alerts_after_the_cut_are_judged_on_every_clean_capture(folder, tmp_path):
    """The clean traffic after the cut (where false alerts per hour are counted out of sample) is every clean
    capture's test part laid end to end, not only the first one's; the minute between them is no traffic time."""
    from fastmaml.apps.ids.evidence import traffic_seconds
    from fastmaml.apps.ids.samples import BENIGN

    for k in (1, 2):
        _write_capture(tmp_path / f"clean_{k}.csv", "clean", 20 + k, duration=20.0)
    cfg = _cfg(folder, ["dos_1", "dos_2", "dos_3"])
    cfg.source.captures += [CaptureSpec(path=str(tmp_path / f"clean_{k}.csv"), format="csv", columns=dict(COLUMNS))
                            for k in (1, 2)]
    st = E.prepare_data(cfg, log=lambda m: None).streams[BENIGN]
    assert "clean_1.csv" in st.source and "clean_2.csv" in st.source and st.source.endswith("after the cut")
    clock = st.clock.double().numpy() * st.clock_unit_s
    one = 20.0 * cfg.source.test_fraction  # one capture's test part
    assert 1.8 * one < traffic_seconds(clock) < 2.2 * one
    assert clock[-1] - clock[0] > 2 * one + 50  # laid a minute apart
