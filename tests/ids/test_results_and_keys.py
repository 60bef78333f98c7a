"""Typed fold results read back exactly what was written (earlier results included); cache keys stay put."""

import hashlib
import json
from pathlib import Path

import pytest

from fastmaml.apps.ids import keys
from fastmaml.apps.ids.registry import load_ids_config
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
# evaluation keys were changed on purpose once since: eval.evidence_union added a judgement to every fold.
CASES = {
    "sim": ([], "1ed9380b0b470867", "53b1638bca2567a2", "b80513f746947754"),
    "captures": (["source.kind=captures", "source.captures=[{path: a.log, labels: a.csv}, {path: b.log, attack: dos}]",
                  "source.split=auto", "features.signals=true"],
                 "e4c899f3822488a4", "47494e3fb3e33b5b", "a2ab820a8161e039"),
    "cross": (["source.kind=sim", "train_source={kind: sim, sim_duration_s: 10.0}", "features.identity=false"],
              "61ca01e5ffb2f89b", "b2f07069f6bac1b4", "4303301044c21646"),
    "eth": (["source.kind=eth_sim", "source.eth_camera=false", "model.hidden=[16]"],
            "db08b696924da10e", "1736cd330eec0eb3", "8d783cdf91e863d1"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cache_keys_keep_their_values(name):
    over, data, evaluation, identity = CASES[name]
    cfg = load_ids_config(None, over)
    dkey = keys.data_key(cfg)
    ident = keys.run_identity(cfg, "maml", ["b", "a"], 1, dkey)
    assert (dkey, keys.eval_key(cfg, ["b", "a"], ["c"], dkey),
            hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]) == (data, evaluation, identity)


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
