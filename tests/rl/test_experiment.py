"""The RL application end to end: resume after a crash, config errors, the reproduce command."""

import json

import pytest
import torch

from fastmaml.apps.rl import experiment as E
from fastmaml.apps.rl.config import RLConfig, validate
from fastmaml.apps.rl.trpo import TRPOStep
from fastmaml.cli import main
from fastmaml.config import load_config
from fastmaml.core.step_size import Fixed
from fastmaml.errors import ConfigError
from fastmaml.train.checkpoint import load_checkpoint

TINY = ["policy.hidden=[16]", "pg.trajectories=3", "env.horizon=15", "train.meta_batch_size=3", "train.threads=1",
        "train.progress=false", "train.checkpoint_every=1", "train.max_minutes=null", "eval.num_tasks=3",
        "eval.trajectories=3", "eval.steps=1", "baseline_train.iterations=2"]


def tiny_cfg(*more):
    return load_config(RLConfig, None, TINY + list(more))


def params_of(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.safetensors")["model"]


@pytest.mark.parametrize("inner_steps, mode", [(1, "fixed"), (2, "fixed"), (1, "per_layer_step")])
def test_crashed_run_resumes_to_the_same_parameters(tmp_path, monkeypatch, inner_steps, mode):
    cfg = tiny_cfg("train.iterations=4", f"maml.inner_steps={inner_steps}", f"maml.step_size={mode}")
    E.train(cfg, tmp_path / "straight")

    real = TRPOStep.__call__

    def crash_at_3(self, batch, iteration=0):
        if iteration == 2:  # the third meta-iteration dies after two were checkpointed
            raise KeyboardInterrupt
        return real(self, batch, iteration)

    monkeypatch.setattr(TRPOStep, "__call__", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        E.train(cfg, tmp_path / "crashed")
    assert load_checkpoint(tmp_path / "crashed" / "checkpoints" / "last.safetensors")["meta"]["iteration"] == 2
    monkeypatch.setattr(TRPOStep, "__call__", real)
    E.train(cfg, tmp_path / "crashed", resume=True)
    a, b = params_of(tmp_path / "straight"), params_of(tmp_path / "crashed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    first = E.build_learner(cfg).state_dict()
    assert any(not torch.equal(first[k], a[k]) for k in a), "training did not change the policy"
    if mode != "fixed":  # the learned step sizes are checkpointed, resumed and trained like θ
        assert any(k.startswith("inner_lrs.") and not torch.equal(first[k], a[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4]
    assert all({"return_pre", "return_post", "kl"} <= set(r) for r in log)


@pytest.mark.parametrize("override, words", [
    ("pg.trajectories=0", "pg.trajectories"),
    ("pg.discount=1.5", "pg.discount"),
    ("pg.inner_loss=dice", "pg.inner_loss"),
    ("trpo.max_kl=-0.1", "trpo.max_kl"),
    ("trpo.backtrack_ratio=1.0", "trpo.backtrack_ratio"),
    ("trpo.hvp_tasks=0", "trpo.hvp_tasks"),
    ("maml.inner_steps=-1", "maml.inner_steps"),
    ("maml.step_size=adam", "maml.step_size"),
    ("maml.step_size=fixed(later=-1)", "maml.step_size"),
    ("maml.step_size=fixed(slower=0.5)", "maml.step_size"),
    # configs written before maml.step_size: the old keys are read, and checked, as before
    ("maml.inner_lr_mode=adam", "maml.step_size"),
    ("maml.inner_lr_mode=per_element maml.later_step_scale=0.5", "maml.later_step_scale"),
    ("policy.activation=gelu", "policy.activation"),
    ("eval.num_tasks=1", "eval.num_tasks"),
    ("eval.later_step_scale=0", "eval.later_step_scale"),
    ("maml.later_step_scale=-1", "maml.later_step_scale"),
    ("baselines=[pretrained,bogus]", "bogus"),
])
def test_bad_config_values_give_clear_errors(override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        validate(tiny_cfg(*override.split()))


@pytest.mark.parametrize("overrides, scale", [
    (["eval.later_step_scale=1.0"], 1.0),
    (["eval.later_step_scale=0.5"], 0.5),
    (["maml.step_size=fixed(later=0.5)"], 0.5),  # eval null: tested as meta-trained
    (["maml.later_step_scale=0.5"], 0.5),  # the same in a config written before maml.step_size
    (["maml.later_step_scale=0.5", "eval.later_step_scale=1.0"], 1.0),  # an explicit test protocol wins
])
def test_test_time_steps_use_alpha_then_the_later_step_scale(monkeypatch, overrides, scale):
    """The original test script's protocol: α for the first step, scale × α for the later ones."""
    cfg = tiny_cfg("eval.steps=3", "maml.inner_lr=0.2", *overrides)
    seen = []
    real = E.adapt_tasks

    def spy(learner, params, x, y, step=0, per_task=False, lr=None):
        seen.append((step, lr))
        return real(learner, params, x, y, step=step, per_task=per_task, lr=lr)

    monkeypatch.setattr(E, "adapt_tasks", spy)
    learner = E.build_learner(cfg)
    returns = E.adaptation_returns(learner, E.task_distribution(cfg), E.test_tasks(cfg), 3, 3, cfg, seed=0)
    assert returns.shape == (3, 4)
    assert seen == [(0, 0.2), (1, 0.2 * scale), (2, 0.2 * scale)]


def test_learned_step_sizes_adapt_maml_at_test_time_and_the_baselines_keep_the_protocol(monkeypatch):
    """With a learned maml.step_size, MAML's test-time steps use its learned rates (step s: the rate of step
    min(s, S−1)); pretrained and random, which learned none, are fine-tuned with α then α·scale."""
    cfg = tiny_cfg("eval.steps=3", "maml.inner_lr=0.2", "maml.step_size=per_layer_step", "maml.inner_steps=2",
                   "eval.later_step_scale=0.5")
    learner = E.build_learner(cfg)
    with torch.no_grad():
        for rate in learner.inner_lrs.values():
            rate.copy_(torch.tensor([0.0625, 0.25], dtype=rate.dtype))  # exact in float32
    seen = []
    real = learner.inner_step

    def spy(params, x, y, step, first_order):
        seen.append({n: float(learner.step_size(n, step)) for n in learner.inner_names})
        return real(params, x, y, step, first_order)

    monkeypatch.setattr(learner, "inner_step", spy)
    tasks, dist = E.test_tasks(cfg), E.task_distribution(cfg)
    E.adaptation_returns(learner, dist, tasks, 3, 3, cfg, seed=0, kind="maml")
    assert [set(s.values()) for s in seen] == [{0.0625}, {0.25}, {0.25}]

    fixed = []
    real_adapt = E.adapt_tasks

    def spy_adapt(learner, params, x, y, step=0, per_task=False, lr=None):
        fixed.append(lr)
        return real_adapt(learner, params, x, y, step=step, per_task=per_task, lr=lr)

    monkeypatch.setattr(E, "adapt_tasks", spy_adapt)
    E.adaptation_returns(learner, dist, tasks, 3, 3, cfg, seed=0, kind="random")
    assert fixed == [0.2, 0.1, 0.1]
    # the baselines take no inner step in training and learn no step sizes: their checkpoints hold none
    for kind in ("pretrained", "oracle"):
        baseline = E.build_learner(cfg, kind)
        assert isinstance(baseline.inner_lr, Fixed) and not any(k.startswith("inner_lrs") for k in baseline.state_dict())
        assert E.rate_summary(baseline) == {}
    summary = E.rate_summary(learner)
    assert summary and all(v == [0.0625, 0.25] for v in summary.values())
    assert set(summary) == set(learner.inner_names)  # parameter names as the model has them, not the ParameterDict keys


def test_unknown_env_key_and_device_are_errors():
    with pytest.raises(ConfigError, match="unknown env 'cheetah'"):
        E.task_distribution(tiny_cfg("env.name=cheetah"))
    with pytest.raises(ConfigError, match="unknown config key"):
        tiny_cfg("trpo.max_kll=0.1")
    with pytest.raises(ConfigError, match="train.device=cpu"):
        E.build_learner(tiny_cfg("train.device=cuda"))


def test_reproduce_command_writes_results_and_resumes(tmp_path, capsys):
    out = tmp_path / "rl"
    args = ["rl", "reproduce", "--preset", "nav2d_smoke", "--out", str(out), *TINY, "train.iterations=2"]
    assert main(args) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"maml", "pretrained", "random", "oracle"}
    assert len(report["results"]["maml"]["mean"]) == 2 and len(report["per_task_returns"]["maml"]) == 3
    assert all(v < 0 for r in report["results"].values() for v in r["mean"])  # returns are negative distances
    oracle = report["results"]["oracle"]["mean"]
    assert oracle[0] == oracle[1]  # not adapted
    for name in ("results.md", "returns_vs_steps.png", "learning_curve.png"):
        assert (out / name).stat().st_size > 0
    assert "| MAML |" in (out / "results.md").read_text()
    assert len(report["test_tasks"]) == 3 and "| MAML minus |" in (out / "results.md").read_text()
    # a second run into the same folder needs --resume, which reuses the finished policies
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    before = (out / "maml" / "checkpoints" / "last.safetensors").read_bytes()
    assert main(args + ["--resume"]) == 0
    assert (out / "maml" / "checkpoints" / "last.safetensors").read_bytes() == before
    assert json.loads((out / "results.json").read_text())["results"] == report["results"]


def test_rl_presets_load_and_keep_the_paper_settings():
    from fastmaml.apps.rl.cli import PRESETS
    from fastmaml.apps.rl.config import RLConfig, validate
    from fastmaml.config import load_config

    cfgs = {p.stem: validate(load_config(RLConfig, p)) for p in sorted(PRESETS.glob("rl_*.yaml"))}
    assert {"rl_nav2d", "rl_nav2d_2step", "rl_nav2d_2step_all", "rl_cheetah_vel", "rl_cheetah_dir"} <= set(cfgs)
    for name, cfg in cfgs.items():
        if "smoke" in name:
            continue
        assert cfg.maml.inner_lr == 0.1 and cfg.trpo.max_kl == 0.01 and cfg.pg.trajectories == 20, name
        assert cfg.eval.num_tasks >= 40, f"{name}: the issue asks for at least 40 test tasks"
    assert cfgs["rl_nav2d_2step"].maml.inner_steps == 2 and not cfgs["rl_nav2d_2step"].trpo.all_steps
    assert cfgs["rl_nav2d_2step_all"].maml.inner_steps == 2 and cfgs["rl_nav2d_2step_all"].trpo.all_steps
    assert cfgs["rl_cheetah_dir"].env.name == "cheetah_dir" and cfgs["rl_cheetah_vel"].env.name == "cheetah_vel"
    lvc = cfgs["rl_nav2d_lvc"]  # the paper's one-step setup, only the inner estimator and the test schedule differ
    assert lvc.pg.inner_loss == "lvc" and lvc.maml.inner_steps == 1 and lvc.eval.later_step_scale == 0.5
    assert lvc.train.validate_every > 0 and lvc.eval.validation_seed != lvc.eval.seed
    assert cfgs["rl_nav2d"].pg.inner_loss == "reinforce"
    lslr = cfgs["rl_nav2d_lvc_lslr"]  # the best found: two steps, every step judged, LVC, learned per-step sizes
    assert (lslr.maml.inner_steps, lslr.trpo.all_steps, lslr.pg.inner_loss, lslr.maml.step_size) == (
        2, True, "lvc", "per_layer_step")
    assert lslr.train.validate_every > 0 and lslr.eval.later_step_scale == 0.5


def test_nav2d_diagnosis_reproduces_the_evaluation_and_its_noise_floor(tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "rl_nav2d_diagnose.py"
    spec = importlib.util.spec_from_file_location("rl_nav2d_diagnose", script)
    diagnosis = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnosis)
    out = tmp_path / "rl"
    overrides = [*TINY, "train.iterations=2", "eval.num_tasks=4"]
    assert main(["rl", "reproduce", "--preset", "nav2d_smoke", "--out", str(out), *overrides]) == 0
    report = json.loads((out / "results.json").read_text())
    cfg = validate(load_config(RLConfig, None, overrides))
    found = diagnosis.diagnose(cfg, out)
    # the stochastic column is the evaluation itself: the same rollouts, step by step
    for step, row in enumerate(found["steps"]):
        assert row["returns"].tolist() == pytest.approx([r[step] for r in report["per_task_returns"]["maml"]])
        assert 0.0 <= row["reached"] <= 1.0 and row["distance_at_horizon"] > 0
        assert 0.0 < row["explored"] <= 15 * 0.1 * 2 ** 0.5  # farthest from the start: ≤ horizon × the largest move
    floor = found["noise_floor_returns"]
    assert floor.shape == (4,) and bool((floor <= 0).all())  # the oracle's returns on the same 4 goals
    with pytest.raises(ConfigError, match="this diagnosis is for nav2d"):
        diagnosis.diagnose(validate(load_config(RLConfig, None, overrides + ["env.name=cheetah_vel"])), out)


def test_validation_picks_the_evaluated_checkpoint_on_its_own_goals(tmp_path):
    """train.validate_every: each policy is scored on validation goals (never the test goals) and the best
    checkpoint is the one evaluated and reported."""
    out = tmp_path / "rl"
    overrides = [*TINY, "train.iterations=4", "baseline_train.iterations=3", "train.validate_every=1",
                 "eval.validation_tasks=3", "baselines=[pretrained,oracle]"]
    assert main(["rl", "reproduce", "--preset", "nav2d_smoke", "--out", str(out), *overrides]) == 0
    cfg = validate(load_config(RLConfig, None, overrides))
    assert not torch.equal(E.validation_tasks(cfg), E.test_tasks(cfg))
    report = json.loads((out / "results.json").read_text())
    for kind in ("maml", "pretrained", "oracle"):
        val = [json.loads(line) for line in (out / kind / "metrics.jsonl").read_text().splitlines() if "val_return" in line]
        assert [r["iteration"] for r in val] == list(range(1, report["iterations"][kind] + 1))
        best = max(val, key=lambda r: r["val_return"])  # the first of equals: only a strictly better score replaces
        assert report["evaluated_iteration"][kind] == best["iteration"]
        assert load_checkpoint(out / kind / "checkpoints" / "best.safetensors")["meta"]["best"] == best["val_return"]
    # the validation score is the test protocol's mean return after steps 1.., measured on the validation goals
    learner = E.load_learner(cfg, out / "maml")
    scores = E.validation_scores(cfg, learner, "maml")
    assert scores["return"] == pytest.approx(best_maml := max(
        json.loads(line)["val_return"] for line in (out / "maml" / "metrics.jsonl").read_text().splitlines()
        if "val_return" in line))
    assert scores["return"] == pytest.approx(scores["return_step1"])  # eval.steps=1: the one adapted step
    # and the evaluation ran on that checkpoint: the report's MAML returns are the best checkpoint's
    again = E.evaluate(cfg, {"maml": learner})["maml"]
    torch.testing.assert_close(again, torch.tensor(report["per_task_returns"]["maml"]))
    assert "Checkpoint: the best of every 1 meta-iterations" in (out / "results.md").read_text()
    assert best_maml <= 0


def test_validation_goals_must_not_be_the_test_goals():
    with pytest.raises(ConfigError, match="eval.validation_seed must differ"):
        validate(tiny_cfg("eval.validation_seed=2017"))


def test_the_evaluated_policy_is_the_best_checkpoint_not_the_last(tmp_path, monkeypatch):
    calls = {}

    def falling_scores(cfg, learner, kind):  # every validation worse than the one before: the best is the first
        calls[kind] = calls.get(kind, 0) + 1
        return {"return": -float(calls[kind])}

    monkeypatch.setattr(E, "validation_scores", falling_scores)
    out = tmp_path / "rl"
    overrides = [*TINY, "train.iterations=3", "train.validate_every=1", "baselines=[]"]
    assert main(["rl", "reproduce", "--preset", "nav2d_smoke", "--out", str(out), *overrides]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["evaluated_iteration"] == {"maml": 1} and report["iterations"] == {"maml": 3}
    cfg = validate(load_config(RLConfig, None, overrides))
    learner = E.build_learner(cfg)
    learner.load_state_dict(load_checkpoint(out / "maml" / "checkpoints" / "best.safetensors")["model"])
    torch.testing.assert_close(E.evaluate(cfg, {"maml": learner})["maml"], torch.tensor(report["per_task_returns"]["maml"]))
    learner.load_state_dict(params_of(out / "maml"))  # the last checkpoint scores otherwise
    assert not torch.allclose(E.evaluate(cfg, {"maml": learner})["maml"], torch.tensor(report["per_task_returns"]["maml"]))
