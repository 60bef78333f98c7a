"""The masquerade generator (can/masquerade.py) on a clean simulated drive, and its traffic source."""

import json

import numpy as np
import pytest

from fastmaml.apps.ids.can import masquerade as M
from fastmaml.apps.ids.can import sim
from fastmaml.apps.ids.can.signals import field_values, payload_words
from fastmaml.errors import DataError


@pytest.fixture(scope="module")
def clean():
    return sim.simulate("none", 40.0, 0)


@pytest.fixture(scope="module")
def generated(clean):
    return M.generate(clean, occurrences=6, duration_s=1.5, seed=3)


def _fields_of(plan):
    return {(p["can_id"], p["start"], p["length"]) for p in plan}


def test_masquerade_keeps_every_frame_id_and_timestamp_and_changes_only_target_bits(clean, generated):
    captures, plans = generated
    for kind in M.KINDS:
        m = captures[M.attack_name(kind, "masquerade")]
        assert len(m) == len(clean)
        assert (m.timestamp == clean.timestamp).all() and (m.can_id == clean.can_id).all()
        assert (m.length == clean.length).all() and (m.dlc == clean.dlc).all()
        changed = (m.data != clean.data).any(1)
        attack = m.is_attack()
        assert changed.any() and not (changed & ~attack).any()  # only labelled frames differ
        # every labelled frame is a target frame inside an interval, and every such frame is labelled
        inside = np.zeros(len(clean), bool)
        allowed = np.zeros((len(clean), 64), bool)
        for p in plans[kind]:
            rows = (clean.can_id == p["can_id"]) & (clean.timestamp >= p["t0"]) & (clean.timestamp < p["t1"])
            inside |= rows
            allowed[np.ix_(rows, np.arange(p["start"], p["start"] + p["length"]))] = True
        assert (attack == inside).all()
        flipped = np.unpackbits(m.data[:, :8] ^ clean.data[:, :8], axis=1).astype(bool)
        assert not (flipped & ~allowed).any()  # no bit outside the target signal moved


def test_fabrication_adds_forged_frames_and_keeps_the_genuine_ones(clean, generated):
    captures, _ = generated
    masq, fab = captures["offset_masquerade"], captures["offset_fabrication"]
    assert len(fab) == len(clean) + int(masq.is_attack().sum())
    genuine = fab.select(~fab.is_attack())
    assert (genuine.timestamp == clean.timestamp).all() and (genuine.data == clean.data).all()
    forged = fab.select(fab.is_attack())
    np.testing.assert_array_equal(forged.data, masq.data[masq.is_attack()])  # the same false values
    assert (np.diff(fab.timestamp) >= 0).all()


def test_each_kind_sends_what_it_says(clean, generated):
    captures, plans = generated
    targets = {(s.can_id, s.start): s for s in M.target_signals(clean)}
    for kind in M.KINDS:
        m = captures[M.attack_name(kind, "masquerade")]
        for p in plans[kind]:
            s = targets[(p["can_id"], p["start"])]
            rows = np.flatnonzero((clean.can_id == p["can_id"]) & (clean.timestamp >= p["t0"])
                                  & (clean.timestamp < p["t1"]))
            v = field_values(payload_words(clean.data[rows]), s.start, s.length)
            f = field_values(payload_words(m.data[rows]), s.start, s.length)
            r = s.hi - s.lo
            if kind == "maximum":
                assert (f == s.hi).all()
            elif kind == "constant":
                assert len(np.unique(f)) == 1 and s.lo <= f[0] <= s.hi
            elif kind == "offset":
                assert np.allclose(np.abs(f - v), r / 4, atol=0.5)
            elif kind == "drift":
                gap = np.abs(f - v)
                assert gap[0] < 1 and gap[-1] == pytest.approx(r / 2 * (len(v) - 1) / max(len(v) - 1, 1), abs=1)
            else:  # replay: values of the same signal from earlier in the drive
                assert p["replay_from"] + 1.5 <= p["t0"] + 1e-9
                earlier = field_values(payload_words(clean.data[(clean.can_id == p["can_id"])
                                                                & (clean.timestamp < p["t0"])]), s.start, s.length)
                assert set(f.tolist()) <= set(earlier.tolist())


def test_twins_share_times_and_targets_and_kinds_differ(generated):
    _, plans = generated
    assert len({json.dumps(plans[k]) for k in M.KINDS}) == len(M.KINDS)
    assert all(len(plans[k]) == 6 for k in M.KINDS)


def test_generator_errors_name_the_fix(clean):
    with pytest.raises(DataError, match=r"source\.masquerade\.occurrences"):
        M.plan(clean, "offset", M.target_signals(clean), 40, 1.5, 0)
    with pytest.raises(DataError, match="kind 'nope' unknown"):
        M.plan(clean, "nope", M.target_signals(clean), 4, 1.5, 0)
    attacked = sim.simulate("dos", 10.0, 0)
    with pytest.raises(DataError, match="needs a clean capture"):
        M.inject(attacked, [], "masquerade", "x", {})


def test_masquerade_source_holds_each_kind_out_with_both_variants(tmp_path, clean):
    from fastmaml.apps.ids.config import CaptureSpec, FeatureConfig, MasqueradeSettings, SourceConfig
    from fastmaml.apps.ids.experiment import default_folds

    path = tmp_path / "clean.log"
    sim.write_candump(clean, path)  # candump log of the clean drive
    src = SourceConfig(kind="masquerade", captures=[CaptureSpec(path=str(path), format="candump")],
                       attacks=["offset_masquerade", "offset_fabrication", "maximum_masquerade",
                                "maximum_fabrication"], masquerade=MasqueradeSettings(occurrences=6, duration_s=1.5),
                       test_fraction=0.35)
    data = M.prepare_masquerade(src, FeatureConfig(signals=True, max_benign=2000), lambda m: None)
    assert sorted(map(sorted, default_folds(data))) == [["maximum_fabrication", "maximum_masquerade"],
                                                        ["offset_fabrication", "offset_masquerade"]]
    # a 40 s drive has not shown the signals' ranges and still runs: those columns are left out, and said so
    assert data.feature_names[-4:] == ["sig_jump", "sig_residual", "sig_residual_8", "sig_has_partner"]
    assert any("sig_range, sig_edge, sig_stuck, sig_leap left out" in n for n in data.stats["notes"])
    assert any("sig_full left to the plausibility rule" in n for n in data.stats["notes"])  # judged, not learned
    for name, fam in data.families.items():
        assert fam.train.counts()[name] > 0 and fam.test.counts()[name] > 0
    assert set(data.stats["masquerade"]["injections"]) == {"offset", "maximum"}


def test_further_clean_captures_are_fitted_on_not_attacked(tmp_path, clean):
    from fastmaml.apps.ids.config import CaptureSpec, FeatureConfig, MasqueradeSettings, SourceConfig

    paths = [tmp_path / "clean0.log", tmp_path / "clean1.log"]
    sim.write_candump(clean, paths[0])
    sim.write_candump(sim.simulate("none", 30.0, 7), paths[1])  # another drive, 30 s

    def prepare(n: int) -> tuple[object, list[str]]:
        src = SourceConfig(kind="masquerade", captures=[CaptureSpec(path=str(p), format="candump") for p in paths[:n]],
                           attacks=["offset_masquerade", "offset_fabrication"], test_fraction=0.35,
                           masquerade=MasqueradeSettings(occurrences=6, duration_s=1.5))
        lines: list[str] = []
        return M.prepare_masquerade(src, FeatureConfig(signals=True, max_benign=2000), lines.append), lines
    one, _ = prepare(1)
    two, lines = prepare(2)
    # the second drive's 30 s enter the fit, and the log names it; the attacks are generated on the first only
    assert two.feature_state["clean_seconds"] > one.feature_state["clean_seconds"] + 25
    assert any(str(paths[1]) in line and "also fitted on" in line for line in lines)
    assert two.stats["masquerade"]["injections"] == one.stats["masquerade"]["injections"]
    for name in ("offset_masquerade", "offset_fabrication"):
        assert two.families[name].train.counts() == one.families[name].train.counts()


def test_cli_writes_a_labelled_masquerade_capture_of_a_clean_log(tmp_path):
    from fastmaml.apps.ids.can.readers import open_capture
    from fastmaml.cli import main

    clean_log = tmp_path / "clean.log"
    main(["ids", "simulate", "--attack", "none", "--duration", "40", "--out", str(clean_log)])
    out = tmp_path / "drift.log"
    main(["ids", "masquerade", "--capture", str(clean_log), "--kind", "drift", "--occurrences", "6",
          "--duration", "1.5", "--out", str(out)])
    clean = open_capture(clean_log).read_all()
    got = open_capture(out, labels=tmp_path / "drift_labels.csv").read_all()
    assert len(got) == len(clean) and (got.can_id == clean.can_id).all()
    np.testing.assert_allclose(got.timestamp, clean.timestamp, atol=1e-6)
    attack = got.is_attack()
    assert got.label_names[1] == "drift_masquerade" and attack.sum() > 0
    assert not (got.data != clean.data).any(1)[~attack].any()
    plan = json.loads((tmp_path / "drift_injections.json").read_text())
    assert plan["kind"] == "drift" and len(plan["injections"]) == 6


def test_compare_judges_the_detector_alone_and_with_the_plausibility_rule_at_the_budget(tmp_path, clean):
    """End to end on a simulated clean drive: identity-free detector, evidence judgement, the union column."""
    from fastmaml.apps.ids import experiment as E
    from fastmaml.apps.ids.can.features import IDENTITY_FEATURES

    path = tmp_path / "clean.log"
    sim.write_candump(clean, path)
    cfg = E.load_ids_config("masquerade", [
        f"source.captures=[{path}]", "source.attacks=[offset_masquerade, offset_fabrication, constant_masquerade, "
        "constant_fabrication]", "source.masquerade={occurrences: 6, duration_s: 1.5}",
        "features.max_benign=2000", "features.identity=false", "methods=[maml]", "seeds=[0]", "train.iterations=20",
        "train.meta_batch_size=4", "eval.shots=[5]", "eval.episodes=4", "eval.query=5", "eval.tuning_episodes=4",
        "eval.operational_episodes=2", "eval.evidence_benign=256", "eval.report_steps=[0, 10]"])
    report = E.compare(cfg, tmp_path / "out")
    ops = [o for f in report.folds for o in f.operational.values()]
    assert ops
    for o in ops:
        maml = o.methods["maml"]
        for pre in ("evidence/", "evidence+plausibility/"):
            v = maml[pre + "attack/caught_rate"]
            assert v.n == 2 and 0.0 <= v.mean <= 1.0
        assert "evidence/attack/caught_rate" in o.rules["plausibility"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| MAML + plausibility (½ budget each) |" in md
    samples = next(line for line in md.splitlines() if line.startswith("* **Samples.**"))
    assert "sig_residual" in samples and not any(f"{c}," in samples or f"{c}:" in samples for c in IDENTITY_FEATURES)


def test_flip_sets_each_state_to_another_value_the_car_shows_and_only_on_request(clean):
    assert "flip" not in M.KINDS  # not in the default folds
    captures, plans = M.generate(clean, kinds=["flip"], occurrences=6, duration_s=1.5, seed=3)
    m = captures["flip_masquerade"]
    words, clean_words = payload_words(m.data), payload_words(clean.data)
    inside = np.zeros(len(m), bool)
    for p in plans["flip"]:
        cid, start, length = p["can_id"], p["start"], p["length"]
        rows = (m.can_id == cid) & (m.timestamp >= p["t0"]) & (m.timestamp < p["t1"])
        inside |= rows
        new, old = field_values(words[rows], start, length), field_values(clean_words[rows], start, length)
        seen = set(field_values(clean_words[clean.can_id == cid], start, length).tolist())
        assert (new != old).all() and set(new.tolist()) <= seen  # changed, to values the clean drive shows
    assert (m.is_attack() == inside).all()
    with pytest.raises(DataError, match="unknown"):
        M.plan(clean, "toggle", [], 1, 1.0, 0)
