"""Typed fold results read back exactly what was written (earlier results included); cache keys stay put."""

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from fastmaml.apps.ids import keys
from fastmaml.apps.ids.config import IdsConfig, SourceConfig
from fastmaml.apps.ids.registry import load_ids_config
from fastmaml.config import from_dict, to_dict
from fastmaml.errors import ConfigError
from fastmaml.apps.ids.report import markdown
from fastmaml.apps.ids.results import CompareResult, CurveSummary, FoldResult, MetricSummary

RESULTS = Path(__file__).resolve().parents[2] / "results" / "ids"
COMMITTED = sorted(RESULTS.rglob("results.json"))


@pytest.mark.parametrize("path", COMMITTED, ids=[str(p.parent.relative_to(RESULTS)) for p in COMMITTED])
def test_committed_results_read_back_byte_for_byte_and_render(path):
    """Results of every earlier version in the repository (some without traffic, operational, skipped_shots, query)."""
    text = path.read_text()
    report = CompareResult.from_dict(json.loads(text))
    assert json.dumps(report.to_dict(), indent=1) + "\n" == text
    for fold in report.folds:
        assert json.loads(json.dumps(FoldResult.from_dict(fold.to_dict()).to_dict())) == fold.to_dict()
        for a, per_k in fold.results.items():
            assert all(isinstance(k, int) and e.shots == k and e.attack == a for k, e in per_k.items())
    assert markdown(report).startswith("# Few-shot intrusion detection: ")


def test_summaries_keep_divergence_counts_and_nan():
    d = {"mean": [0.5, float("inf")], "ci95": [0.1, float("nan")], "nonfinite": [0, 2], "finite_mean": [0.5, 0.25],
         "finite_ci95": [0.1, 0.05]}
    assert json.dumps(CurveSummary.from_dict(d).to_dict()) == json.dumps(d)
    assert CurveSummary.from_dict({"mean": [1.0], "ci95": [0.0]}).to_dict() == {"mean": [1.0], "ci95": [0.0]}
    s = {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    assert json.dumps(MetricSummary.from_dict(s).to_dict()) == json.dumps(s)


# The keys as the code before keys.py computed them (experiment._eval_key / _identity, sources.data_key):
# a change here makes every cached data file, training run and fold evaluation of that config stale. The
# evaluation keys were changed on purpose twice since: eval.evidence_union added a judgement to every fold
# (eval.evidence_reference enters only when on), and per-ID CUSUM references (eval.evidence_per_key, on by default)
# changed every evidence judgement; with it off a fold keeps the key it had before (OLD_EVAL). A third time with the
# benign side of adaptation drawn per CAN ID (eval.evidence_benign_per_id, on by default): the frozen keys below are
# those of the draw by frame (BY_FRAME), which keeps them. A fourth time where signal columns are on, by the signals'
# revision (keys.SIGNALS_REVISION, 2 since copies are judged past the clean range, 3 since drives are held out
# whole): the frozen keys are revision 1's.
BY_FRAME = ["eval.evidence_benign_per_id=false"]
OLD_EVAL = {"sim": "53b1638bca2567a2", "captures": "47494e3fb3e33b5b", "cross": "b2f07069f6bac1b4",
            "eth": "1736cd330eec0eb3"}
CASES = {
    "sim": ([], "1ed9380b0b470867", "d109f4d63f376935", "b80513f746947754"),
    "captures": (["source.kind=captures", "source.captures=[{path: a.log, labels: a.csv}, {path: b.log, attack: dos}]",
                  "source.split=auto", "features.signals=true", "features.byte_order=big"],
                 "e4c899f3822488a4", "ac7a40b7b04eca72", "a2ab820a8161e039"),
    "cross": (["source.kind=sim", "train_source={kind: sim, sim_duration_s: 10.0}", "features.identity=false"],
              "61ca01e5ffb2f89b", "c6f34a8ddc808969", "4303301044c21646"),
    "eth": (["source.kind=eth_sim", "source.eth_camera=false", "model.hidden=[16]"],
            "db08b696924da10e", "885c8456ccfd8d97", "8d783cdf91e863d1"),
}


def _keys(cfg: IdsConfig) -> tuple[str, str, str]:
    dkey = keys.data_key(cfg)
    ident = keys.run_identity(cfg, "maml", ["b", "a"], 1, dkey)
    return (dkey, keys.eval_key(cfg, ["b", "a"], ["c"], dkey),
            hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16])


@pytest.fixture
def revision_1(monkeypatch):
    """The signal and CAN frame columns as they were before keys.SIGNALS_REVISION and keys.CAN_FRAMES_REVISION
    entered the keys."""
    monkeypatch.setattr(keys, "SIGNALS_REVISION", 1)
    monkeypatch.setattr(keys, "CAN_FRAMES_REVISION", 1)


@pytest.mark.parametrize("name", list(CASES))
def test_cache_keys_keep_their_values(name, revision_1):
    over, data, evaluation, identity = CASES[name]
    assert _keys(load_ids_config(None, over + BY_FRAME)) == (data, evaluation, identity)
    assert _keys(load_ids_config(None, over + BY_FRAME + ["eval.evidence_per_key=false"])) == (
        data, OLD_EVAL[name], identity)
    # The per-ID draw (the default) judges anew: another evaluation key, the same data and training runs.
    d, e, i = _keys(load_ids_config(None, over))
    assert (d, i) == (data, identity) and e != evaluation


# Each source kind's settings moved into a block of its own (source.masquerade: {occurrences: 6}); the flat names
# still work, and both forms give the keys computed from the flat form on the commit before the blocks (ae54a0a).
SETTINGS_CASES = {
    "masquerade": (["source.kind=masquerade", "source.captures=[clean.log]", "source.masquerade_occurrences=6",
                    "source.masquerade_duration_s=1.5", "source.masquerade_seed=3", "source.masquerade_targets=all",
                    "features.signals=true", "features.byte_order=big"],
                   ["source.kind=masquerade", "source.captures=[clean.log]",
                    "source.masquerade={occurrences: 6, duration_s: 1.5, seed: 3, targets: all}", "features.signals=true",
                    "features.byte_order=big"],
                   ("092c70f6741fef96", "c0b256958793e225", "447ff1c04b430c31")),
    "sim": (["source.sim_duration_s=15", "source.sim_fit_seed=5", "source.sim_train_seed=6", "source.sim_test_seed=7",
             "source.attacks=[dos]"],
            ["source.sim.duration_s=15", "source.sim.fit_seed=5", "source.sim.train_seed=6", "source.sim.test_seed=7",
             "source.attacks=[dos]"],
            ("9830f20655ebce19", "6681bda997398aea", "da70a23356a8e869")),
    "synthetic": (["source.kind=synthetic", "source.synthetic_attacks=2", "source.synthetic_samples=50",
                   "source.cic_dir=/x", "source.daga_dir=/y"],
                  ["source.kind=synthetic", "source.synthetic={attacks: 2, samples: 50}", "source.cic.dir=/x",
                   "source.daga.dir=/y"],
                  ("907dff5dcea736d3", "ef743462ebd6de1c", "7f65727ca4fabd9a")),
    "eth": (["source.kind=eth_sim", "source.sim_duration_s=4", "source.eth_camera=false",
             "train_source={kind: eth_sim, sim_duration_s: 8.0, sim_test_seed: 9}"],
            ["source.kind=eth_sim", "source.sim.duration_s=4", "source.eth_sim.camera=false",
             "train_source={kind: eth_sim, sim: {duration_s: 8.0, test_seed: 9}}"],
            ("0266248ce0b14924", "05799b4d1259f530", "fdc3a41810e5b915")),
}


def test_little_endian_signals_change_the_keys_only_where_signals_are_inferred():
    """``features.byte_order: auto`` (the default since little-endian signals) reads other signals than ``big``, so it
    makes new data keys where signals are inferred (signal features, or a masquerade source's targets) and no DBC
    gives them; ``big`` keeps the keys from before (frozen above), and where no signal is read nothing changes."""
    def data_key(over):
        return keys.data_key(load_ids_config(None, over))

    signal_cases = [CASES["captures"][0], SETTINGS_CASES["masquerade"][0],
                    ["source.kind=masquerade", "source.captures=[clean.log]"]]
    for over in signal_cases:
        auto = [o for o in over if o != "features.byte_order=big"]
        assert data_key(auto) != data_key([*auto, "features.byte_order=big"]), over
    for over in (CASES["sim"][0], CASES["eth"][0], ["source.kind=sim", "features.dbc=car.dbc", "features.signals=true"]):
        assert data_key(over) == data_key([*over, "features.byte_order=big"]), over
    with pytest.raises(ConfigError, match="byte_order"):
        load_ids_config(None, ["features.byte_order=little"])


@pytest.mark.parametrize("name", list(SETTINGS_CASES))
def test_source_settings_blocks_keep_the_keys_of_their_flat_names(name, revision_1):
    flat, block, expected = SETTINGS_CASES[name]
    a, b = load_ids_config(None, flat + BY_FRAME), load_ids_config(None, block + BY_FRAME)
    assert a == b and _keys(a) == _keys(b) == expected


def test_a_new_signals_revision_makes_new_keys_only_where_signal_columns_are_on(monkeypatch):
    """Data prepared with signal columns before a change to what they hold is not reused, nor the runs trained and
    folds evaluated on it; configs without signal columns keep every key."""
    monkeypatch.setattr(keys, "CAN_FRAMES_REVISION", 1)  # frame columns as they were: only the signal revision moves
    now = {name: _keys(load_ids_config(None, case[0] + BY_FRAME)) for name, case in CASES.items()}
    monkeypatch.setattr(keys, "SIGNALS_REVISION", 1)
    before = {name: _keys(load_ids_config(None, case[0] + BY_FRAME)) for name, case in CASES.items()}
    for name, case in CASES.items():
        if "features.signals=true" in case[0]:
            assert all(a != b for a, b in zip(now[name], before[name])), name
        else:
            assert now[name] == before[name], name


def _other_value(v):
    """A value of the type of ``v`` other than ``v``."""
    return (not v) if isinstance(v, bool) else v + 3 if isinstance(v, int) else v + 0.5 if isinstance(v, float) \
        else v + "x"


def test_every_block_setting_has_one_flat_name_and_both_set_it():
    blocks = {f.name: getattr(SourceConfig(), f.name) for f in dataclasses.fields(SourceConfig)
              if dataclasses.is_dataclass(getattr(SourceConfig(), f.name))}
    paths = sorted(f"{b}.{f.name}" for b, d in blocks.items() for f in dataclasses.fields(d))
    assert sorted(SourceConfig.RENAMED_KEYS.values()) == paths  # the one table: every block setting, once
    assert not set(SourceConfig.RENAMED_KEYS) & {f.name for f in dataclasses.fields(SourceConfig)}
    for old, new in SourceConfig.RENAMED_KEYS.items():
        block, key = new.split(".")
        v = _other_value(getattr(blocks[block], key))
        by_old = load_ids_config(None, [f"source.{old}={json.dumps(v)}"])
        assert getattr(getattr(by_old.source, block), key) == v
        assert by_old == load_ids_config(None, [f"source.{new}={json.dumps(v)}"])
        assert keys.flat_source(by_old.source)[old] == v  # and the cache keys hash it under its flat name


def test_flat_and_block_forms_mix_and_the_later_layer_wins(tmp_path):
    (tmp_path / "flat.yaml").write_text("source:\n  kind: masquerade\n  masquerade_occurrences: 7\n"
                                        "  masquerade_targets: all\n  sim_duration_s: 11\n")
    (tmp_path / "block.yaml").write_text("extends: flat.yaml\nsource:\n  masquerade:\n    seed: 4\n"
                                         "    occurrences: 8\n")
    m = load_ids_config(tmp_path / "flat.yaml", []).source
    assert (m.masquerade.occurrences, m.masquerade.targets, m.sim.duration_s) == (7, "all", 11.0)
    m = load_ids_config(tmp_path / "block.yaml", []).source.masquerade
    assert (m.occurrences, m.seed, m.targets) == (8, 4, "all")
    assert load_ids_config(tmp_path / "flat.yaml", ["source.masquerade.occurrences=3"]).source.masquerade.occurrences == 3
    assert load_ids_config(tmp_path / "block.yaml", ["source.masquerade_seed=9"]).source.masquerade.seed == 9
    assert load_ids_config("masquerade", ["source.masquerade_targets=partnered"]).source.masquerade.targets == "partnered"
    # A whole train_source in the flat form, then its keys in either form.
    t = load_ids_config("sim", ["train_source={kind: sim, sim_duration_s: 10.0}", "train_source.sim.fit_seed=5",
                                "train_source.sim_test_seed=8"]).train_source.sim
    assert (t.duration_s, t.fit_seed, t.train_seed, t.test_seed) == (10.0, 5, 1, 8)


@pytest.mark.parametrize("path", COMMITTED, ids=[str(p.parent.relative_to(RESULTS)) for p in COMMITTED])
def test_committed_configs_load_and_hash_their_flat_keys_as_written(path):
    """A results.json config (flat source keys, or the blocks of later runs) loads; every source key it wrote enters
    the cache keys as written."""
    config = json.loads(path.read_text())["config"]
    cfg = from_dict(IdsConfig, config)
    for key in ("source", "train_source"):
        if config.get(key) is not None:
            src = getattr(cfg, key)
            flat = keys.flat_source(src)
            for k, v in config[key].items():
                if k == "captures":
                    continue
                assert (to_dict(getattr(src, k)) if isinstance(v, dict) else flat[k]) == v, (key, k)
    again = from_dict(IdsConfig, to_dict(cfg))  # written now: the blocks
    assert again == cfg and keys.data_key(again) == keys.data_key(cfg)


def test_unknown_key_in_a_block_names_the_block_and_its_keys(tmp_path):
    valid = r"valid keys in section 'source\.masquerade': \['duration_s', 'occurrences', 'seed', 'targets'\]"
    with pytest.raises(ConfigError, match=r"unknown config key 'source\.masquerade\.occurence'.*" + valid):
        load_ids_config("masquerade", ["source.masquerade.occurence=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'source\.masquerade\.occurence'.*" + valid):
        load_ids_config("masquerade", ["source.masquerade={occurence: 3}"])
    (tmp_path / "p.yaml").write_text("source:\n  masquerade:\n    occurence: 3\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: unknown config key 'source\.masquerade\.occurence'.*" + valid):
        load_ids_config(tmp_path / "p.yaml", [])
    with pytest.raises(ConfigError, match=r"'train_source\.sim\.seed'.*valid keys in section 'train_source\.sim': "
                                          r"\['duration_s', 'fit_seed', 'test_seed', 'train_seed'\]"):
        load_ids_config("sim", ["train_source={kind: sim, sim: {seed: 1}}"])
    with pytest.raises(ConfigError, match=r"\['occurence'\] in section 'source\.masquerade'; valid keys: "
                                          r"\['duration_s', 'occurrences', 'seed', 'targets'\]"):
        from_dict(SourceConfig, {"masquerade": {"occurence": 3}}, "source")
    with pytest.raises(ConfigError, match=r"source\.sim_duration_s and source\.sim\.duration_s both given"):
        from_dict(SourceConfig, {"sim_duration_s": 3.0, "sim": {"duration_s": 4.0}}, "source")


def test_keys_ignore_what_cannot_change_a_result():
    base = load_ids_config(None, [])
    same = load_ids_config(None, ["source.data_root=/elsewhere", "source.eth_camera=false", "source.split=occurrences",
                                  "features.identity=true", "train.threads=4", "train.log_every=7"])
    assert keys.data_key(base) == keys.data_key(same)
    dkey = keys.data_key(base)
    assert keys.eval_key(base, ["a"], ["b"], dkey) == keys.eval_key(same, ["a"], ["b"], dkey)
    other = load_ids_config(None, ["source.split=time"])
    assert keys.data_key(other) != keys.data_key(base)
    # Training iterations continue a run: not part of its identity, but of the evaluation.
    more = load_ids_config(None, ["train.iterations=9"])
    assert keys.run_identity(more, "maml", ["a"], 0, "d") == keys.run_identity(base, "maml", ["a"], 0, "d")
    assert keys.eval_key(more, ["a"], ["b"], "d") != keys.eval_key(base, ["a"], ["b"], "d")


def test_evidence_reference_enters_the_evaluation_key_only_when_on():
    base = load_ids_config(None, [])
    dkey = keys.data_key(base)
    off = load_ids_config(None, ["eval.evidence_reference=0"])
    on = load_ids_config(None, ["eval.evidence_reference=0.999"])
    assert keys.eval_key(base, ["a"], ["b"], dkey) == keys.eval_key(off, ["a"], ["b"], dkey)
    assert keys.eval_key(base, ["a"], ["b"], dkey) != keys.eval_key(on, ["a"], ["b"], dkey)
    with pytest.raises(ConfigError, match="evidence_reference"):
        load_ids_config(None, ["eval.evidence_reference=1.5"]).validate()


def test_a_new_can_frames_revision_makes_new_keys_for_can_sources_only(monkeypatch):
    """CAN data featurized before a change to the frame columns (byte-change scales from MIN_SCALE_FRAMES frames) is
    not reused, nor the runs and folds built on it; Ethernet keeps every key."""
    now = {name: _keys(load_ids_config(None, case[0] + BY_FRAME)) for name, case in CASES.items()}
    monkeypatch.setattr(keys, "CAN_FRAMES_REVISION", 1)
    before = {name: _keys(load_ids_config(None, case[0] + BY_FRAME)) for name, case in CASES.items()}
    for name in CASES:
        if name == "eth":
            assert now[name] == before[name]
        else:
            assert all(a != b for a, b in zip(now[name], before[name])), name
