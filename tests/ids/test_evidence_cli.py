"""`ids adapt --clean`, `ids detect --clean / --threshold` and `ids judge` on small simulated captures (issue 33):
the evidence threshold is calibrated on clean traffic, written into the detector folder, and applied."""

import json

import pytest

from fastmaml.apps.ids.detect import balanced_cross_entropy, load_detector, score_capture
from fastmaml.apps.ids.evidence import count_alerts, cusum_alerts
from fastmaml.cli import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("evidence_cli")
    assert main(["ids", "simulate", "--attack", "spoof_speed", "--duration", "12", "--seed", "5",
                 "--out", str(d / "cap.log")]) == 0
    assert main(["ids", "simulate", "--attack", "none", "--duration", "20", "--seed", "6",
                 "--out", str(d / "clean.log")]) == 0
    assert main(["ids", "train", "--preset", "sim_tiny", "--out", str(d / "trained"), "train.iterations=20",
                 "source.sim.duration_s=15"]) == 0
    # The same capture with CrySyS-style inline labels (candump line, is_malicious, is_shifted_in_time).
    labels = [r.split(",")[1] for r in (d / "cap_labels.csv").read_text().splitlines()[1:]]
    (d / "cap_inline.log").write_text("".join(f"{line.rstrip()} {'1' if lab != 'benign' else 'False'}\tFalse\n"
                                              for line, lab in zip((d / "cap.log").read_text().splitlines(), labels)))
    return d


def adapt(d, out: str, *args: str) -> int:
    """``ids adapt`` of the trained sim detector to the spoofing capture (its side labels), into ``d / out``."""
    return main(["ids", "adapt", "--detector", str(d / "trained" / "detector"), "--capture", str(d / "cap.log"),
                 "--labels", str(d / "cap_labels.csv"), *args, "--out", str(d / out)])


def test_balanced_cross_entropy_weighs_classes_equally():
    import torch
    import torch.nn.functional as F

    logits = torch.randn(10, 2)
    y = torch.tensor([0, 1] * 5)
    assert torch.allclose(balanced_cross_entropy(logits, y), F.cross_entropy(logits, y))
    y2 = torch.tensor([0] * 9 + [1])  # one attack sample weighs as much as nine benign ones
    per = F.cross_entropy(logits, y2, reduction="none")
    assert torch.allclose(balanced_cross_entropy(logits, y2), (per[:9].mean() + per[9]) / 2)


def test_adapt_with_clean_calibrates_and_detect_applies_the_threshold(workdir, capsys):
    d = workdir
    assert adapt(d, "adapted", "--shots", "5", "--clean", str(d / "clean.log"), "--benign-frames", "500",
                 "--alerts-per-hour", "10") == 0
    out = capsys.readouterr().out
    assert "from 5 attack samples and 500 clean frames" in out and "calibrated: threshold" in out
    meta = json.loads((d / "adapted" / "detector.json").read_text())
    assert meta["meta"]["benign_support"] == 500 and meta["meta"]["benign_from"] == str(d / "clean.log")
    ev = meta["evidence"]
    assert ev["calibration"]["budget_per_hour"] == 10 and ev["threshold"] == ev["calibration"]["threshold"]
    assert ev["calibration"]["clean_alerts"] == 0 and ev["threshold"] >= ev["clip"]
    # The threshold raises no alert on the clean capture it was set on, as `ids detect` streams it in chunks.
    adapted = load_detector(d / "adapted")
    sc = score_capture(adapted, d / "clean.log")
    assert count_alerts(sc.log_odds, sc.clock, sc.key, adapted.alarm()) == 0
    assert main(["ids", "detect", "--detector", str(d / "adapted"), "--capture", str(d / "clean.log"),
                 "--out", str(d / "v_clean.csv"), "--chunk-size", "997", "--json", str(d / "s.json")]) == 0
    assert json.loads((d / "s.json").read_text())["evidence"]["alerts"] == 0
    # On the attack capture: the CLI's alerts are the evidence module's on the whole capture, judged per ID.
    capsys.readouterr()
    assert main(["ids", "detect", "--detector", str(d / "adapted"), "--capture", str(d / "cap.log"), "--labels",
                 str(d / "cap_labels.csv"), "--out", str(d / "v.csv"), "--chunk-size", "700",
                 "--json", str(d / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "evidence alerts (CUSUM of log-odds per CAN ID" in out and "attack occurrences caught" in out
    summary = json.loads((d / "a.json").read_text())["evidence"]
    sc = score_capture(adapted, d / "cap.log", d / "cap_labels.csv")
    whole, _ = cusum_alerts(sc.log_odds, sc.clock, sc.key, adapted.alarm())
    assert [a["frame"] for a in summary["alert_list"]] == whole.index.tolist()
    j = summary["judgement"]
    assert j["occurrences"] >= 1 and 0 <= j["caught"] <= j["occurrences"]
    # --threshold overrides without touching the folder; a huge one silences every alert.
    assert main(["ids", "detect", "--detector", str(d / "adapted"), "--capture", str(d / "cap.log"), "--out",
                 str(d / "v2.csv"), "--threshold", "1e9", "--json", str(d / "b.json")]) == 0
    assert json.loads((d / "b.json").read_text())["evidence"]["alerts"] == 0
    assert json.loads((d / "adapted" / "detector.json").read_text())["evidence"]["threshold"] == ev["threshold"]


def test_detect_clean_writes_the_threshold_and_uncalibrated_detectors_say_so(workdir, capsys):
    d = workdir
    assert adapt(d, "kk", "--shots", "5") == 0
    assert json.loads((d / "kk" / "detector.json").read_text())["evidence"] == {}
    capsys.readouterr()
    assert main(["ids", "detect", "--detector", str(d / "kk"), "--capture", str(d / "cap.log"),
                 "--out", str(d / "v3.csv")]) == 0
    assert "the detector is not calibrated: pass --clean" in capsys.readouterr().out
    assert main(["ids", "detect", "--detector", str(d / "kk"), "--capture", str(d / "cap.log"), "--clean",
                 str(d / "clean.log"), "--alerts-per-hour", "5", "--out", str(d / "v4.csv")]) == 0
    assert "calibrated (written to" in capsys.readouterr().out
    ev = json.loads((d / "kk" / "detector.json").read_text())["evidence"]
    assert ev["calibration"]["budget_per_hour"] == 5
    # A "clean" capture that holds attack frames is refused.
    assert main(["ids", "detect", "--detector", str(d / "kk"), "--capture", str(d / "cap.log"), "--clean",
                 str(d / "cap_inline.log"), "--out", str(d / "v5.csv")]) == 2
    assert "attack frames; calibrate on a clean capture" in capsys.readouterr().err


def test_judge_rules_and_detectors_on_one_path(workdir, capsys):
    d = workdir
    if not (d / "adapted").is_dir():
        pytest.skip("needs the adapted detector of the test above")
    assert main(["ids", "judge", "--detector", f"maml-s0={d / 'adapted'}", "--clean", str(d / "clean.log"),
                 "--capture", str(d / "cap_inline.log"), "--out", str(d / "judge")]) == 0
    res = json.loads((d / "judge" / "judgement.json").read_text())["results"]
    names = [r["name"] for r in res]
    assert names[0] == "maml-s0" and "rule: timing" in names and "rule: id_allow_list" in names
    for r in res:
        assert r["clean_alerts"] == r["calibration"]["clean_alerts"] == 0
        assert r["calibration"]["threshold"] >= 1.0
        cap = r["captures"][0]
        assert cap["occurrences"] >= 1 and cap["caught"] <= cap["occurrences"]
    md = (d / "judge" / "judgement.md").read_text()
    assert "## Summary (seeds pooled)" in md and "| maml | cap_inline.log | 1 |" in md
    # No signal features here, so no plausibility rule and no default union; --union names another rule.
    assert not any(r["kind"] == "union" for r in res)
    assert main(["ids", "judge", "--detector", f"maml-s0={d / 'adapted'}", "--clean", str(d / "clean.log"),
                 "--capture", str(d / "cap_inline.log"), "--union", "timing", "--out", str(d / "judge_u")]) == 0
    res_u = json.loads((d / "judge_u" / "judgement.json").read_text())["results"]
    (union,) = [r for r in res_u if r["kind"] == "union"]
    assert union["name"] == "maml-s0 + timing" and union["clean_alerts"] == 0
    # Each channel at half the budget: the detector's threshold is at least the one set for the whole budget.
    assert union["calibration"]["threshold"] >= res_u[0]["calibration"]["threshold"]
    assert union["calibration"]["budget_per_hour"] == 5
    assert "| maml + timing | cap_inline.log | 1 |" in (d / "judge_u" / "judgement.md").read_text()
    assert main(["ids", "judge", "--detector", "nonsense", "--clean", str(d / "clean.log"), "--capture",
                 str(d / "cap_inline.log"), "--out", str(d / "j2")]) == 2
    assert "is not NAME=FOLDER" in capsys.readouterr().err


def test_a_union_rule_nobody_knows_is_a_clear_error(workdir, capsys):
    from fastmaml.apps.ids.registry import load_ids_config
    from fastmaml.errors import ConfigError

    d = workdir
    if not (d / "adapted").is_dir():
        pytest.skip("needs the adapted detector of the tests above")
    assert main(["ids", "judge", "--detector", f"m={d / 'adapted'}", "--clean", str(d / "clean.log"), "--capture",
                 str(d / "cap_inline.log"), "--union", "plausibilty", "--out", str(d / "j3")]) == 2
    assert "--union 'plausibilty' is not a rule of CAN traffic" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="evidence_union 'plausibilty' is not a rule baseline"):
        load_ids_config("sim_tiny", ["eval.evidence_union=plausibilty"])
    assert load_ids_config("eth_tiny", []).eval.evidence_union == "plausibility"  # CAN's default: left out on Ethernet


def test_adapt_with_a_union_rule_stores_it_and_detect_raises_both(workdir, capsys):
    d = workdir
    assert adapt(d, "adapted_u", "--shots", "5", "--clean", str(d / "clean.log"), "--benign-frames", "500",
                 "--union", "timing") == 0
    out = capsys.readouterr().out
    assert "beside it, rule timing (each at half the budget): threshold" in out
    ev = json.loads((d / "adapted_u" / "detector.json").read_text())["evidence"]
    assert ev["calibration"]["budget_per_hour"] == 5 and ev["union"]["calibration"]["budget_per_hour"] == 5
    assert main(["ids", "detect", "--detector", str(d / "adapted_u"), "--capture", str(d / "cap.log"), "--labels",
                 str(d / "cap_labels.csv"), "--out", str(d / "vu.csv"), "--json", str(d / "vu.json"),
                 "--no-progress"]) == 0
    summary = json.loads((d / "vu.json").read_text())["evidence"]
    assert summary["union"]["rule"] == "timing"
    assert summary["alerts"] == summary["union"]["detector_alerts"] + summary["union"]["rule_alerts"]
    # Recalibrating without --union drops the stored rule.
    assert main(["ids", "detect", "--detector", str(d / "adapted_u"), "--capture", str(d / "cap.log"), "--clean",
                 str(d / "clean.log"), "--out", str(d / "vu2.csv"), "--no-progress"]) == 0
    assert "union" not in json.loads((d / "adapted_u" / "detector.json").read_text())["evidence"]


def test_same_id_draws_benign_frames_of_the_shots_ids(workdir, capsys):
    import numpy as np
    import torch

    from fastmaml.apps.ids.samples import same_key_rows

    keys = np.array([1, 2, 3, 2, 2, 5, 1])
    got = same_key_rows(keys, np.array([2, 5]), 3, torch.Generator().manual_seed(0))
    assert len(got) == 3 and set(keys[got.numpy()]) <= {2, 5}
    assert len(same_key_rows(keys, np.array([5]), 3, torch.Generator())) == 1  # as many as there are
    d = workdir
    assert adapt(d, "adapted_same", "--shots", "5", "--clean", str(d / "clean.log"), "--benign-frames", "400",
                 "--same-id", "0.5") == 0
    meta = json.loads((d / "adapted_same" / "detector.json").read_text())["meta"]
    assert meta["benign_support"] == 400 and 0 < meta["benign_same_id"] <= 200
    capsys.readouterr()
    assert adapt(d, "x", "--same-id", "0.5") != 0
    assert "needs --clean" in capsys.readouterr().err


def test_benign_per_id_draws_every_id_equally_often(workdir, capsys):
    import numpy as np
    import torch

    from fastmaml.apps.ids.samples import key_balanced_rows

    keys = np.array([7] * 90 + [3] * 8 + [5] * 2)  # a fast ID, a slow one, a very slow one
    got = key_balanced_rows(keys, 30, torch.Generator().manual_seed(0))
    ids, counts = np.unique(keys[got.numpy()], return_counts=True)
    assert ids.tolist() == [3, 5, 7] and counts.tolist() == [10, 10, 10]
    assert sorted(set(got[keys[got.numpy()] == 3].tolist())) == list(range(90, 98))  # every slow frame, none lost
    got = key_balanced_rows(keys, 31, torch.Generator().manual_seed(1))
    assert len(got) == 31 and sorted(np.unique(keys[got.numpy()], return_counts=True)[1].tolist()) == [10, 10, 11]
    d = workdir
    assert adapt(d, "adapted_per_id", "--shots", "5", "--clean", str(d / "clean.log"), "--benign-frames", "400",
                 "--benign-per-id") == 0
    meta = json.loads((d / "adapted_per_id" / "detector.json").read_text())["meta"]
    assert meta["benign_support"] == 400 and meta["benign_per_id"] is True
    # The default with --clean; --no-benign-per-id draws by frame (another support set: other weights).
    assert adapt(d, "adapted_by_frame", "--shots", "5", "--clean", str(d / "clean.log"), "--benign-frames", "400",
                 "--no-benign-per-id") == 0
    by_frame = json.loads((d / "adapted_by_frame" / "detector.json").read_text())
    assert by_frame["meta"]["benign_per_id"] is False
    from safetensors.numpy import load_file

    w1, w2 = (load_file(str(d / n / "detector.safetensors")) for n in ("adapted_per_id", "adapted_by_frame"))
    assert any(not np.allclose(w1[k], w2[k]) for k in w1)
    assert adapt(d, "adapted_default", "--shots", "5", "--clean", str(d / "clean.log"), "--benign-frames", "400") == 0
    assert json.loads((d / "adapted_default" / "detector.json").read_text())["meta"]["benign_per_id"] is True
    capsys.readouterr()
    assert adapt(d, "y", "--benign-per-id") != 0
    assert "give --clean" in capsys.readouterr().err


def test_judge_reads_side_labels_given_or_found_beside_the_capture(workdir, capsys):
    d = workdir
    if not (d / "adapted").is_dir():
        pytest.skip("needs the adapted detector of the test above")
    base = ["ids", "judge", "--detector", f"maml-s0={d / 'adapted'}", "--clean", str(d / "clean.log"), "--no-rules"]
    assert main([*base, "--capture", str(d / "cap_inline.log"), "--out", str(d / "j_inline")]) == 0
    inline = json.loads((d / "j_inline" / "judgement.json").read_text())["results"][0]["captures"][0]
    # the same frames with their side label file, named or found as CAPTURE_labels.csv (what ids simulate wrote)
    assert main([*base, "--capture", str(d / "cap.log"), "--labels", str(d / "cap_labels.csv"),
                 "--out", str(d / "j_side")]) == 0
    assert main([*base, "--capture", str(d / "cap.log"), "--out", str(d / "j_found")]) == 0
    for out in ("j_side", "j_found"):
        cap = json.loads((d / out / "judgement.json").read_text())["results"][0]["captures"][0]
        assert (cap["occurrences"], cap["caught"]) == (inline["occurrences"], inline["caught"])
    capsys.readouterr()
    assert main([*base, "--capture", str(d / "cap.log"), "--capture", str(d / "cap_inline.log"),
                 "--labels", str(d / "cap_labels.csv"), "--out", str(d / "j_bad")]) == 2
    assert "one label file per capture" in capsys.readouterr().err


def test_adapt_finds_the_side_labels_beside_the_capture(workdir, capsys):
    d = workdir
    capsys.readouterr()
    assert main(["ids", "adapt", "--detector", str(d / "trained" / "detector"), "--capture", str(d / "cap.log"),
                 "--shots", "5", "--out", str(d / "found")]) == 0  # cap_labels.csv, as ids simulate wrote it
    side = json.loads((d / "found" / "detector.json").read_text())["meta"]
    assert adapt(d, "named", "--shots", "5") == 0
    assert side["adapted_to"] == json.loads((d / "named" / "detector.json").read_text())["meta"]["adapted_to"]


def test_key_scaled_thresholds_are_calibrated_stored_and_applied(workdir, capsys):
    """`ids adapt --clean --key-scale` writes each CAN ID's threshold scale into the folder; `ids detect` raises the
    alerts the evidence module gives with those per-ID thresholds; `ids judge --key-scale` calibrates them too."""
    d = workdir
    assert adapt(d, "scaled", "--shots", "5", "--clean", str(d / "clean.log"), "--benign-frames", "500",
                 "--key-scale") == 0
    ev = json.loads((d / "scaled" / "detector.json").read_text())["evidence"]
    assert ev["key_scaled"] is True and len(ev["key_scale"]) >= 2
    assert ev["calibration"]["key_scale"] == ev["key_scale"] and ev["calibration"]["clean_alerts"] == 0
    scaled = load_detector(d / "scaled")
    alarm = scaled.alarm()
    thresholds = alarm.key_thresholds()
    assert len(set(round(v, 6) for v in thresholds.values())) >= 2  # the IDs' thresholds differ
    assert min(thresholds.values()) >= alarm.clip
    sc = score_capture(scaled, d / "cap.log", d / "cap_labels.csv")
    whole, _ = cusum_alerts(sc.log_odds, sc.clock, sc.key, alarm)
    assert main(["ids", "detect", "--detector", str(d / "scaled"), "--capture", str(d / "cap.log"), "--labels",
                 str(d / "cap_labels.csv"), "--out", str(d / "vs.csv"), "--chunk-size", "700",
                 "--json", str(d / "s2.json")]) == 0
    summary = json.loads((d / "s2.json").read_text())["evidence"]
    assert [a["frame"] for a in summary["alert_list"]] == whole.index.tolist()
    assert main(["ids", "judge", "--detector", f"maml-s0={d / 'scaled'}", "--clean", str(d / "clean.log"),
                 "--capture", str(d / "cap_inline.log"), "--key-scale", "--no-rules", "--union", "",
                 "--out", str(d / "judge_ks")]) == 0
    (res,) = json.loads((d / "judge_ks" / "judgement.json").read_text())["results"]
    assert res["calibration"]["key_scale"] and res["clean_alerts"] == 0
