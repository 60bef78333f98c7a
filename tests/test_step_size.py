"""Inner step-size rules (core/step_size.py): a rule written by a user trains end to end, and configs
written before ``maml.step_size`` (presets, committed runs) still load, with the same rule."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.config import from_dict, load_config
from fastmaml.core.maml import MAML
from fastmaml.core.step_size import Fixed, PerElement, PerLayerStep, describe, from_config
from fastmaml.errors import ConfigError
from fastmaml.tasks.sinusoid import SinusoidTasks
from fastmaml.train.checkpoint import load_checkpoint
from fastmaml.train.loop import TrainConfig, meta_train

ROOT = Path(__file__).resolve().parents[1]


class PerTensor:
    """One learned α per parameter tensor, shared by every inner step (the README's example rule)."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def init(self, params, steps):
        return {name: torch.tensor(self.alpha, dtype=p.dtype) for name, p in params.items()}

    def rate(self, learned, name, step):
        return learned[name]


def sinusoid_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def test_a_user_written_rule_trains_end_to_end(tmp_path):
    learner = MAML(sinusoid_net(), F.mse_loss, inner_lr=PerTensor(0.01), inner_steps=2)
    assert sorted(learner.inner_lrs) == ["0__bias", "0__weight", "2__bias", "2__weight", "4__bias", "4__weight"]
    tasks = SinusoidTasks()
    batch = tasks.sample(5, torch.Generator().manual_seed(1))[0]

    # At its initial values the rule is Fixed(0.01): the same meta-gradient for θ.
    fixed = MAML(sinusoid_net(), F.mse_loss, inner_lr=0.01, inner_steps=2)
    learner.meta_backward(batch)
    fixed.meta_backward(batch)
    for (name, p), q in zip(learner.model.named_parameters(), fixed.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    learner.zero_grad(set_to_none=True)

    cfg = TrainConfig(iterations=20, meta_batch_size=5, checkpoint_every=20, log_every=10, progress=False, threads=1)
    summary = meta_train(learner, lambda g: tasks.sample(5, g)[0], cfg, tmp_path / "run")
    assert summary["iterations"] == 20
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")["model"]
    rates = {k: v for k, v in saved.items() if k.startswith("inner_lrs.")}
    assert len(rates) == 6 and any(float(v) != pytest.approx(0.01) for v in rates.values()), "the rates did not learn"
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_built_in_rules_and_their_config_spelling():
    assert MAML(nn.Linear(1, 1), F.mse_loss, inner_lr=0.3).inner_lr == Fixed(0.3)
    for spec, rule in [("fixed", Fixed(0.1)), ("fixed(later=0.5)", Fixed(0.1, later=0.5)),
                       ("per_layer_step", PerLayerStep(0.1)), ("per_element", PerElement(0.1))]:
        assert from_config(spec, 0.1) == rule and describe(rule) == spec
    assert describe(PerTensor(0.1)) == "PerTensor"
    for bad in ["adam", "fixed(later=0)", "fixed(later=x)", "per_element(later=0.5)"]:
        with pytest.raises(ConfigError, match="maml.step_size"):
            from_config(bad, 0.1)
    learner = MAML(nn.Linear(2, 1), F.mse_loss, inner_lr=PerLayerStep(0.2), inner_steps=3)
    assert learner.inner_lrs["weight"].tolist() == pytest.approx([0.2] * 3)
    assert float(learner.step_size("weight", 7).detach()) == pytest.approx(0.2)  # beyond the trained steps: the last one


@pytest.mark.parametrize("run", ["results/fewshot/cpu/omniglot_5w1s_full/config.json"])
def test_committed_run_configs_with_the_old_keys_still_load(run):
    from fastmaml.experiments import fewshot as FS

    data = json.loads((ROOT / run).read_text())
    assert "inner_lr_mode" in data["maml"], "this test is about configs written before maml.step_size"
    cfg = from_dict(FS.FewShotConfig, {k: v for k, v in data.items() if k != "experiment"})
    assert cfg.maml.step_size == "fixed" and cfg.maml.step_size_rule() == Fixed(cfg.maml.inner_lr)
    learner = FS.build_learner(cfg, (cfg.n_way, 20, cfg.data.image_size, cfg.data.image_size))
    state = load_checkpoint(ROOT / run.replace("config.json", "checkpoints/last.safetensors"))["model"]
    learner.load_state_dict(state)  # strict: the same parameter names as when it was written


def test_old_keys_in_results_and_overrides_map_to_rules():
    from fastmaml.apps.rl.config import RLConfig
    from fastmaml.apps.rl.report import step_size_rule

    for path, rule in [("results/rl/nav2d_lvc_lslr/results.json", PerLayerStep(0.1)),
                       ("results/rl/nav2d_2step_all_half/results.json", Fixed(0.1, later=0.5))]:
        maml = json.loads((ROOT / path).read_text())["config"]["maml"]
        assert step_size_rule(maml) == rule, path
    old = load_config(RLConfig, None, ["maml.inner_lr_mode=per_element"])
    assert old.maml.step_size == "per_element"
    half = load_config(RLConfig, ROOT / "src/fastmaml/apps/rl/presets/rl_nav2d_2step_all_half.yaml")
    assert half.maml.step_size_rule() == Fixed(0.1, later=0.5)
