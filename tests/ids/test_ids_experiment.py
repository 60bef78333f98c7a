import dataclasses
import math

import pytest
import torch

from fastmaml.apps.ids import experiment as E
from fastmaml.apps.ids.families import IdsData, TaskFamily, families_from_sample_sets
from fastmaml.apps.ids.episodes import fixed_episodes, make_train_sampler
from fastmaml.apps.ids.keys import data_key
from fastmaml.apps.ids.metrics import rates
from fastmaml.apps.ids.can.features import FRAME_FEATURES, IDENTITY_FEATURES
from fastmaml.apps.ids.samples import SampleSet
from fastmaml.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tiny_cfg():
    return E.load_ids_config("tiny")


@pytest.fixture(scope="module")
def tiny_data(tiny_cfg):
    return E.prepare_data(tiny_cfg)


def test_tiny_compare_end_to_end(tmp_path, training_spy, tiny_cfg):
    """One leave-one-out fold on the synthetic source: trains, evaluates, reports, resumes."""
    seen_rows, seen_names = training_spy.rows, training_spy.names
    report = E.compare(tiny_cfg, tmp_path, folds=[["attack0"]], command="test")
    for name in ("report.md", "results.json", "f1_vs_shots.png", "f1_vs_steps.png"):
        assert (tmp_path / name).stat().st_size > 0

    # The held-out attack never reaches meta-training: no task of it, and no sample of it
    # (attack0 is the only class with feature 0 above 0.75).
    assert seen_names and "attack0" not in seen_names and set(seen_names) == {"attack1", "attack2", "attack3"}
    assert float(torch.cat(seen_rows)[:, 0].max()) <= 0.75

    steps = tiny_cfg.eval.steps
    per_k = report.folds[0].results["attack0"]
    assert set(per_k) == set(tiny_cfg.eval.shots)
    for k, entry in per_k.items():
        # Every method was scored on the very same episodes.
        assert set(entry.method_fingerprints) == set(tiny_cfg.methods)
        assert set(entry.method_fingerprints.values()) == {entry.fingerprint}
        for m, r in entry.methods.items():
            for metric in ("f1", "recall", "fpr", "accuracy", "loss"):
                assert len(r[metric].mean) == steps + 1 and len(r[metric].ci95) == steps + 1
                assert all(math.isfinite(c) and c >= 0 for c in r[metric].ci95)
        assert any(c > 0 for c in entry.methods["maml"]["f1"].ci95)

    k5 = per_k[5].methods
    # Adaptation helps: one step lowers MAML's query loss; after all steps MAML separates the
    # held-out attack far better than the untrained network does.
    assert k5["maml"]["loss"].mean[1] < k5["maml"]["loss"].mean[0]
    assert k5["maml"]["f1"].mean[steps] > 0.6
    assert k5["maml"]["f1"].mean[steps] > k5["scratch"]["f1"].mean[0] + 0.3

    md = (tmp_path / "report.md").read_text()
    assert "±" in md and "Where MAML does and does not beat" in md and "attack0" in md

    # A second call reuses the finished fold instead of retraining.
    seen_names.clear()
    again = E.compare(tiny_cfg, tmp_path, folds=[["attack0"]], command="test")
    assert not seen_names
    assert again.folds[0].results == report.folds[0].results
    # ... read back from evals/attack0.json as it was written
    assert again.folds[0].to_dict() == report.folds[0].to_dict()


def test_episode_labels_and_rule_alignment(tiny_data):
    """Label 1 is the attack in every episode, and rule verdicts line up with query samples."""
    fam = tiny_data.families["attack2"]  # attack2 moves feature 1 up by 0.5
    truth = fam.test.labels == 1
    data = IdsData({"attack2": TaskFamily("attack2", fam.train, fam.test, {}, {"oracle": truth, "never": ~truth & False})},
                     tiny_data.feature_names, None)
    ep = fixed_episodes(data, "attack2", "test", 3, 7, 25, seed=1)
    b = ep.batch
    assert torch.equal(b.support_y == 1, b.support_x[..., 1] > 0.75)
    assert torch.equal(b.query_y == 1, b.query_x[..., 1] > 0.75)
    vals = E.rule_values(ep)
    assert torch.all(vals["oracle"]["f1"] == 1) and torch.all(vals["oracle"]["fpr"] == 0)
    assert torch.all(vals["never"]["recall"] == 0)
    # Same seed, same episodes; another seed, others.
    assert fixed_episodes(data, "attack2", "test", 3, 7, 25, seed=1).fingerprint == ep.fingerprint
    assert fixed_episodes(data, "attack2", "test", 3, 7, 25, seed=2).fingerprint != ep.fingerprint


def test_rates_match_hand_counts():
    p = torch.tensor([[1, 1, 0, 0, 1, 0]]).bool()
    t = torch.tensor([[1, 0, 1, 0, 1, 0]]).bool()  # tp=2 fp=1 fn=1 tn=2
    r = rates(p, t)
    assert r["f1"].item() == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert r["recall"].item() == pytest.approx(2 / 3)
    assert r["fpr"].item() == pytest.approx(1 / 3)
    assert r["accuracy"].item() == pytest.approx(4 / 6)


def test_pooled_sampler_keeps_the_data_budget(tiny_data):
    s = make_train_sampler(tiny_data, ["attack1", "attack2"], 2, 5, pooled=True)
    b, names = s(6, torch.Generator().manual_seed(0))
    assert b.query_x.shape[:2] == (6, 14) and b.support_x.shape[:2] == (6, 4)
    assert set(names) <= {"attack1", "attack2"}


def test_families_from_sample_sets_for_other_sources():
    """Any source giving multi-class SampleSets + rule verdicts (e.g. automotive Ethernet) plugs in."""
    x = torch.rand(9, 3)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 0])
    s = SampleSet(x, y, ["benign", "flood", "spoof"], ["a", "b", "c"], "eth")
    rules = {"rate": y == 1}
    fams = families_from_sample_sets(s, s, rules, rules)
    assert list(fams) == ["flood", "spoof"]
    f = fams["spoof"]
    assert f.train.class_names == ["benign", "spoof"] and f.train.counts() == {"benign": 4, "spoof": 3}
    assert not f.train_rules["rate"].any() and fams["flood"].test_rules["rate"].sum() == 2


def test_too_small_known_attack_is_named_with_split_and_counts(tmp_path, tiny_cfg, tiny_data):
    # A known attack whose training part is too small for the tuning episodes: named, with its split and counts.
    # (5 samples: too few for K = 5 even with the query set shrunk to one sample per class.)
    fam = tiny_data.families["attack1"]
    small = fam.train.select(torch.cat([torch.nonzero(fam.train.labels == 0).squeeze(1),
                                        torch.nonzero(fam.train.labels == 1).squeeze(1)[:5]]))
    data = IdsData({**tiny_data.families, "attack1": TaskFamily("attack1", small, fam.test)}, tiny_data.feature_names,
                   None)
    cfg = E.load_ids_config("tiny", ["methods=[scratch]", "eval.shots=[5]", "eval.query=10"])
    with pytest.raises(DataError, match=r"train part of attack 'attack1' has 5 'attack1' samples but episodes need "
                                        r"K \+ Q = 5 \+ 10; lower eval.shots"):
        E.run_fold(cfg, data, ["attack0"], tmp_path)


def test_bad_input_errors(tmp_path, tiny_cfg, tiny_data):
    with pytest.raises(DataError, match=r"unknown held-out attack \['nope'\].*valid attacks: \['attack0'"):
        E.compare(tiny_cfg, tmp_path, folds=[["nope"]], data=tiny_data)
    with pytest.raises(DataError, match="more than one fold"):
        E.compare(tiny_cfg, tmp_path, folds=[["attack0"], ["attack0", "attack1"]], data=tiny_data)
    big = E.load_ids_config("tiny", ["eval.shots=[500]"])
    with pytest.raises(DataError, match=r"has 200 'benign' samples but episodes need K \+ Q = 500 \+ 10; lower eval.shots"):
        E.run_fold(big, tiny_data, ["attack0"], tmp_path)
    with pytest.raises(ConfigError, match="unknown config key"):
        E.load_ids_config("tiny", ["eval.shotz=[1]"])
    with pytest.raises(ConfigError, match="needs window samples"):
        E.load_ids_config("tiny", ["model.name=cnn"])
    with pytest.raises(ConfigError, match=r"unknown IDS preset 'nope'; choose from \[.*'sim'"):
        E.load_ids_config("nope")
    with pytest.raises(ConfigError, match="methods"):
        E.load_ids_config("tiny", ["methods=[maml, reptile]"])
    with pytest.raises(DataError, match="CICIoV2024 folder .*none not found; pass --data-root"):
        E.prepare_data(E.load_ids_config("cic", [f"source.cic.dir={tmp_path / 'none'}"]))


def test_data_location_comes_from_flag_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTMAML_DATA_ROOT", raising=False)
    with pytest.raises(ConfigError, match="where is the DAGA data.*--data-root DIR.*FASTMAML_DATA_ROOT"):
        E.prepare_data(E.load_ids_config("daga"))
    monkeypatch.setenv("FASTMAML_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataError, match=f"DAGA folder {tmp_path}/ids/daga not found"):
        E.prepare_data(E.load_ids_config("daga"))
    (tmp_path / "ids" / "daga").mkdir(parents=True)
    with pytest.raises(DataError, match="DAGA file .*clean/V40_03.can.zip not found|DAGA file .*infected/"):
        E.prepare_data(E.load_ids_config("daga", [f"source.data_root={tmp_path}"]))


def test_sim_source_reuses_ids_and_caches(tmp_path):
    cfg = E.load_ids_config("sim_tiny")
    data = E.prepare_data(cfg, tmp_path)
    assert data.attacks == ["dos", "fuzzing"] and data.feature_state["clock"] == "time"
    for a in data.attacks:
        # Simulated attacks reuse legitimate IDs: the allow-list flags (almost) nothing.
        assert data.stats["unseen_id_fraction"][a]["attack"] == 0.0
        assert float(data.families[a].test_rules["id_allow_list"].float().mean()) < 0.01
    cached = E.prepare_data(cfg, tmp_path)  # read back from the cache file
    for a in data.attacks:
        for part in ("train", "test"):
            assert torch.equal(getattr(cached.families[a], part).features, getattr(data.families[a], part).features)
        assert torch.equal(cached.families[a].test_rules["timing"], data.families[a].test_rules["timing"])
    with pytest.raises(DataError, match=r"unknown simulator attack\(s\) \['nope'\]; valid attacks: \['dos'"):
        E.prepare_data(E.load_ids_config("sim_tiny", ["source.attacks=[nope]"]))


def test_feature_drop(tmp_path):
    cfg = E.load_ids_config("sim_tiny", ["features.drop=[id_known, id_scaled]", "source.attacks=[dos]",
                                         "source.sim.duration_s=15"])
    data = E.prepare_data(cfg)
    assert "id_known" not in data.feature_names and len(data.feature_names) == len(FRAME_FEATURES) - 2
    assert data.families["dos"].train.features.shape[-1] == len(FRAME_FEATURES) - 2
    with pytest.raises(ConfigError, match=r"features.drop \['nope'\] are not feature names"):
        E.prepare_data(E.load_ids_config("sim_tiny", ["features.drop=[nope]", "source.attacks=[dos]",
                                                      "source.sim.duration_s=15"]))


def test_identity_false_leaves_out_the_id_and_payload_columns(tmp_path):
    over = ["source.attacks=[dos]", "source.sim.duration_s=15"]
    data = E.prepare_data(E.load_ids_config("sim_tiny", over + ["features.identity=false", "features.drop=[b0]"]))
    assert [n for n in FRAME_FEATURES if n not in IDENTITY_FEATURES] == data.feature_names
    assert data.families["dos"].test.features.shape[-1] == len(FRAME_FEATURES) - len(IDENTITY_FEATURES)
    # identity=true (the default) keeps the cache key it had before the option existed.
    assert data_key(E.load_ids_config("sim_tiny", over)) == data_key(
        E.load_ids_config("sim_tiny", over + ["features.identity=true"]))
    assert data_key(E.load_ids_config("sim_tiny", over)) != data_key(
        E.load_ids_config("sim_tiny", over + ["features.identity=false"]))
    with pytest.raises(ConfigError, match="defines no identity columns"):
        E.prepare_data(E.load_ids_config("eth_tiny", ["features.identity=false"]))
    with pytest.raises(ConfigError, match="evidence_same_id"):
        E.load_ids_config("sim_tiny", over + ["features.identity=false", "eval.evidence_same_id=0.5"]).validate()


def test_cross_source_meta_trains_on_one_source_and_tests_on_the_other(tmp_path, training_spy):
    cfg = E.load_ids_config("tiny", ["train_source={kind: synthetic, synthetic: {attacks: 2}, sim: {train_seed: 7}}",
                                     "source.synthetic.attacks=4", "methods=[scratch, maml]", "eval.shots=[5]"])
    report = E.compare(cfg, tmp_path)
    (fold,) = report.folds
    assert fold.holdout == ["attack0", "attack1", "attack2", "attack3"]
    assert fold.known == ["synthetic:attack0", "synthetic:attack1"]
    # Meta-training saw only the training source's families, never a test-source attack.
    assert set(training_spy.names) == {"synthetic:attack0", "synthetic:attack1"}
    test_rows = torch.cat([E.prepare_data(dataclasses.replace(cfg, train_source=None)).families[a].test.features
                           for a in fold.holdout])
    seen = torch.cat(training_spy.rows)
    assert not (seen[:, None, :] == test_rows[None, :, :]).all(-1).any()
    with pytest.raises(ConfigError, match="same traffic"):
        E.load_ids_config("tiny", ["train_source={kind: eth_sim}"])
