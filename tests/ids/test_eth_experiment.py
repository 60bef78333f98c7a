"""The few-shot IDS comparison on the automotive-Ethernet source (tiny simulated zonal network)."""

import math

import pytest
import torch

from fastmaml.apps.ids import experiment as E
from fastmaml.apps.ids.families import load_data, save_data
from fastmaml.apps.ids.episodes import fixed_episodes
from fastmaml.apps.ids.ethernet import zonal_sim
from fastmaml.apps.ids.ethernet.features import PACKET_FEATURES
from fastmaml.apps.ids.ethernet.source import RULE_NAMES
from fastmaml.errors import ConfigError, DataError

HELD = "someip_request_flood"


@pytest.fixture(scope="module")
def cfg():
    return E.load_ids_config("eth_tiny")


@pytest.fixture(scope="module")
def data(cfg, tmp_path_factory):
    return E.prepare_data(cfg, tmp_path_factory.mktemp("eth_data"))


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(-1, x.shape[-1])}


def test_source_families_rules_and_default_holdout(data, cfg):
    assert data.traffic == "eth" and data.feature_names == list(PACKET_FEATURES)
    assert data.attacks == cfg.source.attacks
    # The held-out set by default is the new flooding attack, in one fold.
    assert data.default_holdout == [[HELD]] and E.default_folds(data) == [[HELD]]
    assert E.leave_one_out(data) == [[a] for a in cfg.source.attacks]
    for name, fam in data.families.items():
        for split in ("train", "test"):
            s, rules = fam.part(split)
            assert s.class_names == ["benign", name] and set(rules) == set(RULE_NAMES)
            counts = s.counts()
            assert 0 < counts[name] <= cfg.features.max_attack and 0 < counts["benign"] <= cfg.features.max_benign
            assert all(v.shape == (len(s),) and v.dtype == torch.bool for v in rules.values())
    # Rules line up with the samples they judge: the unknown-MAC rule is the src_mac_new feature.
    fam = data.families["mac_flooding"]
    col = PACKET_FEATURES.index("src_mac_new")
    assert torch.equal(fam.test_rules["unknown_mac"], fam.test.features[:, col] > 0.5)
    assert bool(fam.test_rules["unknown_mac"][fam.test.labels == 1].all())
    assert not bool(fam.test_rules["unknown_mac"][fam.test.labels == 0].any())
    # Episodes carry those verdicts for exactly their query samples.
    ep = fixed_episodes(data, "mac_flooding", "test", 2, 5, 3, seed=1)
    assert torch.equal(ep.rule_preds["unknown_mac"], ep.batch.query_x[..., col] > 0.5)
    assert data.stats["novelty"]["mac_flooding"]["src_mac_new"] == 1.0
    assert data.stats["novelty"][HELD]["src_mac_new"] == 0.0


def test_prepared_data_cache_keeps_traffic_and_holdout(data, tmp_path):
    save_data(data, tmp_path / "d.safetensors")
    back = load_data(tmp_path / "d.safetensors")
    assert back.traffic == "eth" and back.default_holdout == [[HELD]]
    assert back.stats["notes"] and "simulated" in back.stats["notes"][0]
    assert torch.equal(back.families[HELD].test.features, data.families[HELD].test.features)
    assert torch.equal(back.families[HELD].test_rules["rate"], data.families[HELD].test_rules["rate"])


def test_tiny_eth_compare_end_to_end(tmp_path, training_spy, cfg, data):
    """Default fold: trains on the known attacks only, every method on the same episodes, CIs, report."""
    seen_rows, seen_names = training_spy.rows, training_spy.names
    (tmp_path / "notes.md").write_text("## Notes\n\nHand-written analysis goes here.\n")
    report = E.compare(cfg, tmp_path, command="test", data=data)
    for name in ("report.md", "results.json", "f1_vs_shots.png", "f1_vs_steps.png"):
        assert (tmp_path / name).stat().st_size > 0

    # The held-out attack never reaches meta-training: no task of it and none of its attack packets.
    assert seen_names and HELD not in seen_names and set(seen_names) == set(cfg.source.attacks) - {HELD}
    fam = data.families[HELD]
    held_rows = _rows(fam.train.features[fam.train.labels == 1]) | _rows(fam.test.features[fam.test.labels == 1])
    assert held_rows and not (_rows(torch.cat(seen_rows)) & held_rows)

    fold = report.folds[0]
    assert fold.holdout == [HELD] and HELD not in fold.known
    per_k = fold.results[HELD]
    steps = cfg.eval.steps
    assert set(per_k) == set(cfg.eval.shots)
    for entry in per_k.values():
        assert set(entry.method_fingerprints) == set(cfg.methods)
        assert set(entry.method_fingerprints.values()) == {entry.fingerprint}
        for r in entry.methods.values():
            for metric in ("f1", "recall", "fpr"):
                assert len(r[metric].mean) == steps + 1 and len(r[metric].ci95) == steps + 1
                assert all(math.isfinite(c) and c >= 0 for c in r[metric].ci95)
        assert any(c > 0 for m in entry.methods.values() for c in m["f1"].ci95)
        assert set(entry.rules) == set(RULE_NAMES)
        # The flood comes from a known node on a known stream: the MAC rule cannot see it, the rate rule can.
        assert entry.rules["unknown_mac"]["recall"].mean[0] == 0.0
        assert entry.rules["rate"]["recall"].mean[0] > 0.9
    assert per_k[5].methods["maml"]["f1"].mean[steps] > 0.8

    md = (tmp_path / "report.md").read_text()
    assert "All results in this report come from simulated traffic" in md
    assert "Hand-written analysis goes here." in md and "rate rule" in md and "±" in md
    assert f"held out together: {HELD}" in md and "packet-level features" in md


def test_eth_captures_source(tmp_path):
    """Labelled pcaps: one pass per capture, time split, state fitted on benign train packets only."""
    for attack, seed in (("can_dos", 1), ("someip_spoofing", 2)):
        zonal_sim.simulate(attack, 3.0, seed, camera=False).write(tmp_path / f"{attack}.pcap", tmp_path / f"{attack}.csv")
    caps = [f"{{path: {tmp_path / a}.pcap, labels: {tmp_path / a}.csv}}" for a in ("can_dos", "someip_spoofing")]
    cfg = E.load_ids_config("eth_tiny", ["source.kind=eth_captures", "source.attacks=[]", "source.test_fraction=0.3",
                                          f"source.captures=[{', '.join(caps)}]"])
    data = E.prepare_data(cfg, log=lambda m: None)
    assert data.attacks == ["can_dos", "someip_spoofing"] and data.default_holdout is None
    assert E.default_folds(data) == [["can_dos"], ["someip_spoofing"]]
    for fam in data.families.values():
        assert fam.train.counts()[fam.name] > 0 and fam.test.counts()[fam.name] > 0
        # Benign packets of both captures are in every family.
        assert fam.train.counts()["benign"] > 1000


def test_window_samples_flag_a_window_when_any_packet_is(cfg, tmp_path):
    wcfg = E.load_ids_config("eth_tiny", ["features.window=4", "source.attacks=[mac_flooding, can_dos]",
                                          "source.sim.duration_s=3"])
    data = E.prepare_data(wcfg, log=lambda m: None)
    fam = data.families["mac_flooding"]
    assert fam.test.features.shape[1:] == (4, len(PACKET_FEATURES))
    col = PACKET_FEATURES.index("src_mac_new")
    assert torch.equal(fam.test_rules["unknown_mac"], (fam.test.features[..., col] > 0.5).any(1))


def test_bad_eth_sources_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"unknown zonal-network attack\(s\) \['nope'\]; valid attacks"):
        E.prepare_data(E.load_ids_config("eth_tiny", ["source.attacks=[nope]"]), log=lambda m: None)
    with pytest.raises(ConfigError, match="eth_captures needs source.captures"):
        E.prepare_data(E.load_ids_config("eth_tiny", ["source.kind=eth_captures"]), log=lambda m: None)
    (tmp_path / "x.log").write_text("(1.0) can0 123#00\n")
    (tmp_path / "x.csv").write_text("index,attack\n0,benign\n")
    bad = E.load_ids_config("eth_tiny", ["source.kind=eth_captures",
                                         f"source.captures=[{{path: {tmp_path}/x.log, labels: {tmp_path}/x.csv}}]"])
    with pytest.raises(DataError, match="is not a pcap/pcapng file.*source.kind=captures"):
        E.prepare_data(bad, log=lambda m: None)
    zonal_sim.simulate("none", 1.0, 1, camera=False).write(tmp_path / "b.pcap")
    nolab = E.load_ids_config("eth_tiny", ["source.kind=eth_captures", f"source.captures=[{{path: {tmp_path}/b.pcap}}]"])
    with pytest.raises(ConfigError, match="has no label file"):
        E.prepare_data(nolab, log=lambda m: None)
    with pytest.raises(ConfigError, match="source.kind .ethernet. unknown; use one of cic, sim, captures, daga, masquerade, synthetic, eth_sim, eth_captures"):
        E.load_ids_config("eth_tiny", ["source.kind=ethernet"])
