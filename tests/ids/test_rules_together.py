"""The plausibility and timing rules as one (``plausibility_timing``, ``baselines.AnyOfRules``): what a vehicle runs
beside a detector, judged and deployed as one channel (``eval.evidence_union``, ``ids adapt --union``)."""

import numpy as np

from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.baselines import CHECKS, RULE_CHECKS, AnyOfRules
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer
from fastmaml.apps.ids.can.source import _fit_rules
from fastmaml.apps.ids.can.traffic import CanTraffic
from fastmaml.apps.ids.samples import unlabelled_rows


def test_the_rules_together_flag_what_either_flags_and_say_which_check():
    clean = sim.simulate("none", 120.0, 3)
    state = FeatureState.fit(clean, signals=True)
    rules = _fit_rules(clean, state)
    both = rules["plausibility_timing"]
    assert isinstance(both, AnyOfRules) and set(both.rules) == {"plausibility", "timing"}
    assert "plausibility_timing" in CanTraffic.rules  # a rule column and a valid --union / eval.evidence_union

    # On one drive: copies of the battery frames sent 0.3 periods after the genuine ones (genuine values: only the
    # timing rule sees them) and a coolant pinned at full scale (only the plausibility rule sees it).
    drive = sim.simulate("none", 60.0, 5)
    genuine = np.flatnonzero((drive.can_id == sim.ID_BATT) & (drive.timestamp >= 10.0) & (drive.timestamp < 20.0))
    copies = drive.select(genuine)
    copies.timestamp = copies.timestamp + 0.3 * state.periods[sim.ID_BATT]  # sooner than half a period
    frames = drive.concat([drive, copies])
    order = np.argsort(frames.timestamp, kind="stable")
    frames = frames.select(order)
    forged = order >= len(drive)
    pinned = np.flatnonzero((frames.can_id == sim.ID_TEMP) & (frames.timestamp >= 40.0) & (frames.timestamp < 50.0))
    frames.data[pinned, 0] = 0xFF
    fz = FrameFeaturizer(state)
    rows = fz.transform(frames)
    s = unlabelled_rows(rows, fz.feature_names)
    plausibility = rules["plausibility"].predict_samples(s).numpy()
    timing = rules["timing"].predict_samples(s).numpy()
    together = both.predict_samples(s).numpy()
    np.testing.assert_array_equal(together, plausibility | timing)
    assert timing[forged].all() and not plausibility[forged].any()  # each rule sees its own attack ...
    assert plausibility[pinned].all() and not timing[pinned].any()
    assert together[forged].all() and together[pinned].all()  # ... the two together see both
    checks = both.checks(fz.feature_names, rows)
    assert all(CHECKS["sig_full"] in checks[i] for i in pinned)
    assert all(RULE_CHECKS["timing"] in checks[i] for i in np.flatnonzero(timing))
    assert all(not checks[i] for i in np.flatnonzero(~together))


def test_adapt_deploys_the_rules_together_beside_the_detector_by_default(tmp_path, capsys):
    import json

    from fastmaml.cli import main

    d = tmp_path
    assert main(["ids", "simulate", "--attack", "spoof_speed", "--duration", "12", "--seed", "5",
                 "--out", str(d / "cap.log")]) == 0
    assert main(["ids", "simulate", "--attack", "none", "--duration", "20", "--seed", "6",
                 "--out", str(d / "clean.log")]) == 0
    assert main(["ids", "train", "--preset", "sim_tiny", "--out", str(d / "trained"), "train.iterations=20",
                 "source.sim.duration_s=15", "features.signals=true"]) == 0
    assert main(["ids", "adapt", "--detector", str(d / "trained" / "detector"), "--capture", str(d / "cap.log"),
                 "--labels", str(d / "cap_labels.csv"), "--shots", "5", "--clean", str(d / "clean.log"),
                 "--benign-frames", "500", "--out", str(d / "adapted")]) == 0  # --union auto: the default
    assert "rule plausibility_timing (each at half the budget)" in capsys.readouterr().out
    assert main(["ids", "detect", "--detector", str(d / "adapted"), "--capture", str(d / "cap.log"), "--labels",
                 str(d / "cap_labels.csv"), "--out", str(d / "v.csv"), "--json", str(d / "v.json"),
                 "--no-progress"]) == 0
    summary = json.loads((d / "v.json").read_text())["evidence"]
    # Both channels ran (on this 20 s simulated drive the rules' threshold, set on clean traffic they flag often,
    # stays above the 12 s attack: what is tested here is that the rules together deploy as a union rule).
    assert summary["union"]["rule"] == "plausibility_timing"
    assert summary["alerts"] == summary["union"]["detector_alerts"] + summary["union"]["rule_alerts"]
    stored = json.loads((d / "adapted" / "detector.json").read_text())["evidence"]["union"]
    assert stored["rule"] == "plausibility_timing" and stored["calibration"]["budget_per_hour"] == 5
    # ids judge's default union is the same rule; --union none on a recalibration leaves the detector alone.
    assert main(["ids", "judge", "--detector", f"maml={d / 'adapted'}", "--clean", str(d / "clean.log"), "--capture",
                 str(d / "cap.log"), "--labels", str(d / "cap_labels.csv"), "--out", str(d / "judge")]) == 0
    judged = json.loads((d / "judge" / "judgement.json").read_text())["results"]
    assert [r["name"] for r in judged if r["kind"] == "union"] == ["maml + plausibility_timing"]
    assert main(["ids", "detect", "--detector", str(d / "adapted"), "--capture", str(d / "cap.log"), "--clean",
                 str(d / "clean.log"), "--union", "none", "--out", str(d / "v2.csv"), "--no-progress"]) == 0
    alone = json.loads((d / "adapted" / "detector.json").read_text())["evidence"]
    assert "union" not in alone and alone["calibration"]["budget_per_hour"] == 10
    # The deployed rules are the detector's feature state's: the folder runs them with its clean capture gone (on a
    # vehicle), the same alerts; a rule fitted on the clean frames (the ID allow-list) still needs that capture.
    assert main(["ids", "detect", "--detector", str(d / "adapted"), "--capture", str(d / "cap.log"), "--labels",
                 str(d / "cap_labels.csv"), "--clean", str(d / "clean.log"), "--out", str(d / "v3.csv"), "--json",
                 str(d / "v3.json"), "--no-progress"]) == 0  # recalibrated as deployed (--union auto) again
    at_home = json.loads((d / "v3.json").read_text())["evidence"]
    assert at_home["union"]["rule"] == "plausibility_timing"
    moved = d / "elsewhere.log"
    (d / "clean.log").rename(moved)
    assert main(["ids", "detect", "--detector", str(d / "adapted"), "--capture", str(d / "cap.log"), "--labels",
                 str(d / "cap_labels.csv"), "--out", str(d / "v4.csv"), "--json", str(d / "v4.json"),
                 "--no-progress"]) == 0
    assert json.loads((d / "v4.json").read_text())["evidence"] == at_home
    assert main(["ids", "detect", "--detector", str(d / "adapted"), "--capture", str(d / "cap.log"), "--clean",
                 str(moved), "--union", "id_allow_list", "--out", str(d / "v5.csv"), "--no-progress"]) == 0
    moved.rename(d / "gone.log")
    assert main(["ids", "detect", "--detector", str(d / "adapted"), "--capture", str(d / "cap.log"),
                 "--out", str(d / "v6.csv"), "--no-progress"]) == 2
    assert "fitted on the clean capture" in capsys.readouterr().err
