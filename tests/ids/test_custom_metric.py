"""A detection metric added in one place (metrics.METRICS) reaches every method and rule, results.json and report.md."""

import json

import pytest

from fastmaml.apps.ids import experiment as E
from fastmaml.apps.ids.metrics import METRICS, Metric
from fastmaml.eval.stats import fmt


def test_a_metric_registered_once_runs_end_to_end(tmp_path, monkeypatch):
    # The share of attack samples missed: 1 - detection rate, episode by episode.
    monkeypatch.setitem(METRICS, "miss_rate", Metric("miss_rate", lambda c: c.fn / (c.tp + c.fn).clamp_min(1.0),
                                                     "miss rate"))
    cfg = E.load_ids_config("sim_tiny", ["methods=[scratch, maml]", "train.iterations=10", "eval.episodes=6",
                                         "eval.tuning_episodes=4", "eval.finetune_lrs=[0.3]"])
    E.compare(cfg, tmp_path, folds=[["dos"]])

    res = json.loads((tmp_path / "results.json").read_text())
    per_k = res["folds"][0]["results"]["dos"]
    assert set(per_k) == {"1", "5"}
    md = (tmp_path / "report.md").read_text()
    steps = [s for s in cfg.eval.report_steps if s <= cfg.eval.steps]
    for k, entry in per_k.items():
        scored = list(entry["methods"].items()) + list(entry["rules"].items())
        assert [name for name, _ in scored] == ["scratch", "maml", "id_allow_list", "timing", "payload_range"]
        for name, r in scored:
            miss, recall = r["miss_rate"], r["recall"]
            assert len(miss["mean"]) == len(recall["mean"]) == (1 if name in entry["rules"] else cfg.eval.steps + 1)
            # Per episode miss = 1 - recall: the means add up to 1 and the CIs are the same.
            assert miss["mean"] == pytest.approx([1 - x for x in recall["mean"]], abs=1e-6)  # float32 per episode
            assert miss["ci95"] == pytest.approx(recall["ci95"], abs=1e-6)
        # Not a constant: the untrained detector misses differently from the adapted one somewhere.
        assert len({round(x, 6) for r in entry["methods"].values() for x in r["miss_rate"]["mean"]}) > 1
        # Its row in the per-attack table, after MCC, with the values of results.json.
        for method, r in entry["methods"].items():
            row = "|  | miss rate | " + " | ".join(fmt(r["miss_rate"]["mean"][s], r["miss_rate"]["ci95"][s])
                                                   for s in steps) + " |"
            mcc = "|  | MCC | " + " | ".join(fmt(r["mcc"]["mean"][s], r["mcc"]["ci95"][s]) for s in steps) + " |"
            assert mcc + "\n" + row in md
    assert md.count("| miss rate |") == 2 * 2  # 2 methods x 2 Ks; rules keep their F1 / detection rate / FPR row
