"""The meta-RL report: a Markdown table, the return-vs-steps figure and the learning curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from fastmaml.core.maml import MAMLConfig
from fastmaml.core.step_size import Fixed, StepSizeRule, describe, from_config
from fastmaml.eval.plots import plot_curves, save_figure
from fastmaml.eval.stats import fmt_summary, summarize

LABELS = {"maml": "MAML", "pretrained": "pretrained", "random": "random", "oracle": "oracle"}
# Finn et al. 2017, 2D navigation: MAML's average return after 0, 1, 2 steps and the oracle's (the
# values quoted for Figure 5; the baselines' curves are only plotted there, so they are not listed).
PAPER = {"nav2d": {"maml": [-40.4, -11.7, -3.3], "oracle": [-2.3]}}


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    env = report["environment"]
    results = report["results"]
    steps = len(next(iter(results.values()))["mean"])
    train_rule = step_size_rule(cfg["maml"])
    train_scale = train_rule.later if isinstance(train_rule, Fixed) else 1.0
    test_scale = cfg["eval"].get("later_step_scale", 1.0)
    test_scale = train_scale if test_scale is None else test_scale

    def later(scale: float) -> str:
        return f", then {scale:g} α" if scale != 1.0 else ""

    head = "| method | " + step_headers(steps)
    lines = [
        f"# MAML for reinforcement learning: {report['env']} (Finn et al. 2017, section 5.3)",
        "",
        f"Command: `{report['command']}`  ",
        f"Training: seed {cfg['train']['seed']}; MAML {report['iterations'].get('maml')} meta-iterations "
        f"({cfg['maml']['inner_steps']} inner step{'s' if cfg['maml']['inner_steps'] != 1 else ''}, "
        f"meta-batch {cfg['train']['meta_batch_size']} tasks, {cfg['pg']['trajectories']} trajectories per task and step, "
        f"α = {cfg['maml']['inner_lr']}{later(train_scale)}, TRPO KL ≤ {cfg['trpo']['max_kl']}, {cfg['trpo']['cg_iters']} CG iterations"
        f"{', TRPO on the policy after every inner step' if cfg['trpo'].get('all_steps') else ''}); "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["train_seconds"].items())
        + f" on {env['processor']} ({env['threads']} threads), torch {env['torch']}.  ",
        *selection_lines(report),
        f"Test: {cfg['eval']['num_tasks']} tasks (seed {cfg['eval']['seed']}), {cfg['eval']['trajectories']} "
        "trajectories per task and step; average return ± 95% confidence interval over tasks after 0.."
        f"{steps - 1} policy-gradient steps (step size α{later(test_scale)}"
        f"{'; MAML with its learned step sizes' if report.get('learned_inner_lrs') else ''}).",
        *learned_rate_lines(report),
        "",
        head,
        "|---|" + "---:|" * steps,
    ]
    for name, r in results.items():
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(fmt_summary(r, s, digits=2) for s in range(steps)) + " |")
    paper = PAPER.get(report["env"])
    if paper:
        lines += ["", "Paper (section 5.3; the oracle is not adapted):", "", head, "|---|" + "---:|" * steps]
        for name, values in paper.items():
            cells = [f"{values[s]:.1f}" if s < len(values) else ("" if name != "oracle" else f"{values[0]:.1f}")
                     for s in range(steps)]
            lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    lines += paired_table(report["per_task_returns"], steps)
    lines += group_table(report, steps)
    lines += ["", "![returns](returns_vs_steps.png)", "", "![learning curve](learning_curve.png)", ""]
    return "\n".join(lines)


def selection_lines(report: dict[str, Any]) -> list[str]:
    """Which checkpoint of each trained policy was evaluated, when the runs validated (else none: the last)."""
    cfg = report["config"]
    every = cfg["train"].get("validate_every", 0)
    chosen = report.get("evaluated_iteration")
    if not every or not chosen:
        return []
    ev = cfg["eval"]
    return [f"Checkpoint: the best of every {every} meta-iterations by the mean return after 1..{ev['steps']} steps "
            f"(0 for the oracle) on {ev['validation_tasks']} validation tasks (seed {ev['validation_seed']}), never the "
            "test tasks: " + ", ".join(f"{k} iteration {chosen[k]} of {report['iterations'][k]}" for k in chosen) + ".  "]


def learned_rate_lines(report: dict[str, Any]) -> list[str]:
    """MAML's learned inner step sizes (``maml.step_size``): per parameter tensor, per step, or their
    mean and range where they are per element (Meta-SGD)."""
    rates = report.get("learned_inner_lrs")
    if not rates:
        return []

    def cell(values: Any) -> str:
        if isinstance(values, dict):
            return f"mean {values['mean']:.3g} ({values['min']:.3g} to {values['max']:.3g})"
        return " / ".join(f"{v:.3g}" for v in values)

    mode = describe(step_size_rule(report["config"]["maml"]))
    what = "per inner step" if mode == "per_layer_step" else "per element"
    return [f"Learned step sizes ({mode}, {what}; started at α = {report['config']['maml']['inner_lr']}): "
            + "; ".join(f"{name} {cell(v)}" for name, v in rates.items()) + ".  "]


def step_size_rule(maml: dict[str, Any]) -> StepSizeRule:
    """The step-size rule of a run's ``maml`` config section (runs written before ``maml.step_size``
    carry ``inner_lr_mode`` / ``later_step_scale`` instead, read the same way)."""
    maml = MAMLConfig.upgrade_config(maml)
    return from_config(maml.get("step_size", "fixed"), maml["inner_lr"])


def step_headers(steps: int) -> str:
    """``0 steps | 1 step | … |``: the step columns of every table."""
    return " | ".join(f"{i} step{'s' if i != 1 else ''}" for i in range(steps)) + " |"


def paired_table(per_task: Mapping[str, list], steps: int) -> list[str]:
    """MAML minus each adapted baseline on the same test tasks: mean ± 95% CI, and on how many tasks MAML is ahead.

    Tasks differ far more from each other than methods do (forward against backward running), so an
    unpaired comparison can overlap where the per-task difference is clear.
    """
    if "maml" not in per_task:
        return []
    maml = torch.tensor(per_task["maml"], dtype=torch.float64)
    rows = []
    for name in ("pretrained", "random"):
        if name not in per_task:
            continue
        diff = maml - torch.tensor(per_task[name], dtype=torch.float64)
        s = summarize(diff)
        cells = [f"{s['mean'][i]:+.2f} ± {s['ci95'][i]:.2f} ({int((diff[:, i] > 0).sum())} of {diff.shape[0]})"
                 for i in range(steps)]
        rows.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    caption = ("MAML minus the baseline on the same test tasks (mean ± 95% CI of the per-task difference; tasks "
               "where MAML is ahead):")
    return ["", caption, "", "| MAML minus | " + step_headers(steps), "|---|" + "---:|" * steps, *rows]


def group_table(report: Mapping[str, Any], steps: int, max_groups: int = 4) -> list[str]:
    """Results per distinct test task when the tasks repeat and there are only a few (goal direction: ±1)."""
    tasks = report.get("test_tasks")
    if not tasks:
        return []
    keys = [tuple(t) if isinstance(t, list) else (t,) for t in tasks]
    groups = sorted(set(keys))
    if len(groups) > max_groups or len(groups) == len(keys):  # continuous goals: one task each
        return []
    lines = ["", "Per test task (the distribution has only these):", "",
             "| method | task | " + step_headers(steps),
             "|---|---|" + "---:|" * steps]
    for name, values in report["per_task_returns"].items():
        r = torch.tensor(values, dtype=torch.float64)
        for g in groups:
            mask = torch.tensor([k == g for k in keys])
            s = summarize(r[mask])
            label = ", ".join(f"{v:g}" for v in g)
            lines.append(f"| {LABELS.get(name, name)} | {label} ({int(mask.sum())} tasks) | "
                         + " | ".join(fmt_summary(s, i, digits=2) for i in range(steps)) + " |")
    return lines


def figure_returns(results: Mapping[str, Any], path: Path) -> None:
    """Average return against policy-gradient steps, one line (with 95% CI band) per method."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8))
    styles = {"MAML": {"marker": "o"}, "pretrained": {"marker": "s"}, "random": {"marker": "^"},
              "oracle": {"linestyle": "--", "color": "k"}}
    plot_curves(ax, {LABELS.get(m, m): (r["mean"], r["ci95"]) for m, r in results.items()},
                xlabel="policy-gradient steps", ylabel="average return", styles=styles)
    save_figure(fig, path)


def figure_learning_curves(logs: Mapping[str, Path], path: Path) -> None:
    """Average return of the meta-batch's rollouts against meta-iterations (before and after adaptation)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for kind, log in logs.items():
        if not Path(log).exists():
            continue
        logged = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
        recs = [r for r in logged if "return_post" in r]  # training rows; validation rows carry val_return
        it = [r["iteration"] for r in recs]
        if kind == "maml":
            ax.plot(it, [r["return_pre"] for r in recs], label="MAML, before adaptation", alpha=0.8)
            for key in sorted(k for k in recs[-1] if k.startswith("return_step")) if recs else []:
                ax.plot(it, [r.get(key) for r in recs], label=f"MAML, after {key[len('return_step'):]} step(s)", alpha=0.8)
            last = 1 + sum(k.startswith("return_step") for k in recs[-1]) if recs else 1
            ax.plot(it, [r["return_post"] for r in recs], label=f"MAML, after {last} step{'s' if last > 1 else ''}", alpha=0.8)
            val = [r for r in logged if "val_return" in r]
            if val:
                ax.plot([r["iteration"] for r in val], [r["val_return"] for r in val], "k.",
                        label="MAML, validation (mean after 1.. test steps)")
        else:
            ax.plot(it, [r["return_post"] for r in recs], label=LABELS.get(kind, kind), alpha=0.8)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("average return (training tasks)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
