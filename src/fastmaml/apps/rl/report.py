"""The meta-RL report: a Markdown table, the return-vs-steps figure and the learning curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from fastmaml.eval.plots import plot_curves, save_figure
from fastmaml.eval.stats import fmt_summary

LABELS = {"maml": "MAML", "pretrained": "pretrained", "random": "random", "oracle": "oracle"}
# Finn et al. 2017, 2D navigation: MAML's average return after 0, 1, 2 steps and the oracle's (the
# values quoted for Figure 5; the baselines' curves are only plotted there, so they are not listed).
PAPER = {"nav2d": {"maml": [-40.4, -11.7, -3.3], "oracle": [-2.3]}}


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    env = report["environment"]
    results = report["results"]
    steps = len(next(iter(results.values()))["mean"])
    train_scale = cfg["maml"].get("later_step_scale", 1.0)
    test_scale = cfg["eval"].get("later_step_scale", 1.0)
    test_scale = train_scale if test_scale is None else test_scale

    def later(scale: float) -> str:
        return f", then {scale:g} α" if scale != 1.0 else ""

    head = "| method | " + " | ".join(f"{s} step{'s' if s != 1 else ''}" for s in range(steps)) + " |"
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
        f"Test: {cfg['eval']['num_tasks']} tasks (seed {cfg['eval']['seed']}), {cfg['eval']['trajectories']} "
        "trajectories per task and step; average return ± 95% confidence interval over tasks after 0.."
        f"{steps - 1} policy-gradient steps (step size α{later(test_scale)}).",
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
    lines += ["", "![returns](returns_vs_steps.png)", "", "![learning curve](learning_curve.png)", ""]
    return "\n".join(lines)


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
        recs = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
        recs = [r for r in recs if "return_post" in r]
        it = [r["iteration"] for r in recs]
        if kind == "maml":
            ax.plot(it, [r["return_pre"] for r in recs], label="MAML, before adaptation", alpha=0.8)
            for key in sorted(k for k in recs[-1] if k.startswith("return_step")) if recs else []:
                ax.plot(it, [r.get(key) for r in recs], label=f"MAML, after {key[len('return_step'):]} step(s)", alpha=0.8)
            last = 1 + sum(k.startswith("return_step") for k in recs[-1]) if recs else 1
            ax.plot(it, [r["return_post"] for r in recs], label=f"MAML, after {last} step{'s' if last > 1 else ''}", alpha=0.8)
        else:
            ax.plot(it, [r["return_post"] for r in recs], label=LABELS.get(kind, kind), alpha=0.8)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("average return (training tasks)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
