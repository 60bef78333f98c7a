"""The sinusoid experiment's evaluation: the paper's protocol, and safe steps reported beside it."""

import math

from fastmaml.config import load_config
from fastmaml.experiments import sinusoid as S


def test_safe_rows_sit_beside_the_paper_protocol_and_do_not_diverge():
    # An inner step size too large for this (untrained) network: the paper's plain steps blow up. (Safe steps
    # bound the support loss, not the query loss: with K = 5 and huge steps the query error still grows.)
    cfg = load_config(S.SinusoidConfig, None, ["maml.inner_lr=0.3", "eval.num_tasks=50", "eval.steps=10",
                                              "eval.safe_backtracks=10", "hidden=[16]"])
    learner = S.build_learner(cfg)
    out = S.evaluate(cfg, {"maml_k20": learner}, {}, 20)
    assert set(out) == {"maml_k20", "maml_safe_k20"}
    plain, safe = out["maml_k20"], out["maml_safe_k20"]
    assert plain.get("nonfinite", [0])[-1] > 25
    assert "nonfinite" not in safe and all(math.isfinite(m) for m in safe["mean"])
    assert safe["mean"][-1] < safe["mean"][0]  # still learns
    # The tail is reported: plain steps diverge on most tasks, safe ones on fewer; the worst task is named.
    assert plain["diverged"] > 25 and safe["diverged"] < plain["diverged"]
    assert safe["doubled"] <= safe["diverged"] and plain["doubled"] > 25
    assert len(safe["max"]) == 11 and safe["max"][-1] >= safe["mean"][-1]
    assert S._label("maml_safe_k20") == "MAML, steps that never raise the support loss"
    # Off by default: the paper's protocol only.
    assert set(S.evaluate(load_config(S.SinusoidConfig, None, ["eval.num_tasks=5", "hidden=[16]"]),
                          {"maml_k5": learner}, {}, 5)) == {"maml_k5"}
