"""The paper's sinusoid regression experiment (Finn et al. 2017, section 5.1), with its baselines.

* MAML: MLP 1-40-40-1 (ReLU), K support + K query points per task, 1 inner step with
  α = 0.01, Adam β = 1e-3, meta-batch 25, 70,000 meta-iterations; one model per K.
* pretrained: the same network trained on all tasks with the same data budget (every
  task's 2K points as ordinary regression data), then fine-tuned at test time with a
  step size tuned on held-out tasks. It is meta-training with 0 inner steps.
* oracle: receives the true amplitude and phase as extra inputs (no adaptation).

Evaluation: ``eval.num_tasks`` fixed tasks drawn from ``eval.seed`` (the same tasks for
every method and K), K support points, ``eval.query_points`` query points; MSE after
0..10 gradient steps, mean ± 95% CI over tasks.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.config import to_dict
from fastmaml.core.maml import MAML, MAMLConfig
from fastmaml.models.mlp import MLP
from fastmaml.eval.plots import plot_curves, save_figure
from fastmaml.eval.environment import environment
from fastmaml.eval.stats import fmt_summary, summarize
from fastmaml.tasks.batch import TaskBatch
from fastmaml.tasks.sinusoid import SinusoidTasks, oracle_inputs, target
from fastmaml.fileio import atomic_write_text
from fastmaml.eval.tuning import tune_inner_lr
from fastmaml.train.checkpoint import RunDir, checkpoint_meta, load_run_into
from fastmaml.train.loop import TrainConfig, meta_train, eval_precision

PRESETS = Path(__file__).parent / "presets"


@dataclass
class SinusoidEvalConfig:
    num_tasks: int = 600
    seed: int = 2017  # the held-out tasks' own seed, never used in training
    shots: list[int] = field(default_factory=lambda: [5, 10, 20])
    steps: int = 10
    query_points: int = 100
    # Step sizes tried for fine-tuning the pretrained baseline (tuned on separate tasks).
    finetune_lrs: list[float] = field(default_factory=lambda: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1])
    tuning_tasks: int = 200
    tuning_seed: int = 4242
    # Test precision: trained (what each run trained in, from its config.json) | auto | fp32 | bf16 (core/precision.py)
    precision: str = "trained"
    # Also report each adapted method with test-time steps that never raise the support loss
    # (MAML.adaptation_curve(safe_backtracks=k): α, α/2, ... α/2^k, else no step), beside the
    # paper's plain steps. None: the paper's protocol only.
    safe_backtracks: int | None = None


@dataclass
class SinusoidConfig:
    k_shot: int = 10  # support (and query) points per task in meta-training
    hidden: list[int] = field(default_factory=lambda: [40, 40])
    maml: MAMLConfig = field(default_factory=MAMLConfig)
    # The compiled meta-iteration by default (falls back to eager, with one log line, where it cannot compile): on
    # this 40-40 MLP it runs several times eager's rate, and with dynamic shots the 3 MAML networks share one compile.
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        iterations=70_000, meta_batch_size=25, meta_lr=1e-3, compile="auto", compile_dynamic_shots=True))
    eval: SinusoidEvalConfig = field(default_factory=SinusoidEvalConfig)
    shots: list[int] = field(default_factory=lambda: [5, 10, 20])  # reproduce: one MAML model per K
    baselines: bool = True  # reproduce: also train the pretrained and oracle baselines


def make_mlp(hidden: list[int], in_features: int = 1) -> nn.Module:
    # The bare Sequential keeps parameter names flat ("0.weight", ...) in checkpoints.
    return MLP(in_features, hidden, 1).net


def build_learner(cfg: SinusoidConfig, kind: str = "maml", seed: int | None = None) -> MAML:
    """``kind``: ``maml``, ``pretrained`` (0 inner steps) or ``oracle`` (0 steps, 3 inputs)."""
    torch.manual_seed(cfg.train.seed if seed is None else seed)
    model = make_mlp(cfg.hidden, in_features=3 if kind == "oracle" else 1)
    maml_cfg = cfg.maml if kind == "maml" else dataclasses.replace(cfg.maml, inner_steps=0, step_size="fixed")
    return maml_cfg.build(model, F.mse_loss)


def batch_sampler(cfg: SinusoidConfig, kind: str = "maml"):
    """The meta-batch of one iteration, for each kind of training."""
    tasks = SinusoidTasks()
    k = cfg.k_shot

    def sample(g: torch.Generator) -> TaskBatch:
        batch, amp, phase = tasks.sample(cfg.train.meta_batch_size, g, k_support=k, k_query=k)
        if kind == "maml":
            return batch
        # Same data budget as MAML: all 2K points of each task are regression data.
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        if kind == "oracle":
            x = oracle_inputs(x, amp, phase)
        return TaskBatch(x[:, :k], y[:, :k], x, y)

    return sample


def train(cfg: SinusoidConfig, run_dir: Path, kind: str = "maml", resume: bool = False) -> dict[str, Any]:
    learner = build_learner(cfg, kind)
    return meta_train(learner, batch_sampler(cfg, kind), cfg.train, run_dir, resume=resume,
                      run_config={"experiment": "sinusoid", "kind": kind, **to_dict(cfg)})


def load_learner(cfg: SinusoidConfig, run_dir: Path, kind: str = "maml") -> MAML:
    learner = load_run_into(build_learner(cfg, kind), run_dir)
    learner.precision = eval_precision(cfg.eval.precision, run_dir, cfg.train.precision, cfg.train.device)[0]
    return learner


def eval_tasks(cfg: SinusoidConfig, k: int, num_tasks: int | None = None, seed: int | None = None):
    """The fixed held-out tasks: K support points and ``query_points`` query points each."""
    e = cfg.eval
    g = torch.Generator().manual_seed(e.seed if seed is None else seed)
    tasks = SinusoidTasks()
    n = e.num_tasks if num_tasks is None else num_tasks
    amp, phase = tasks.sample_params(n, g)
    xs, xq = tasks.sample_x(n, k, g), tasks.sample_x(n, e.query_points, g)
    batch = TaskBatch(xs, target(xs, amp, phase), xq, target(xq, amp, phase))
    return batch, amp, phase


def tune_finetune_lr(cfg: SinusoidConfig, pretrained: MAML, k: int) -> tuple[float, dict[str, float]]:
    """The pretrained baseline's fine-tuning step size: best MSE after ``eval.steps`` steps on tuning tasks."""
    batch, _, _ = eval_tasks(cfg, k, cfg.eval.tuning_tasks, cfg.eval.tuning_seed)
    return tune_inner_lr(pretrained, batch, cfg.eval.finetune_lrs, cfg.eval.steps)


def evaluate(cfg: SinusoidConfig, learners: dict[str, MAML], finetune_lr: dict[str, float], k: int) -> dict[str, Any]:
    """MSE after 0..steps gradient steps on the fixed test tasks, for each method at shot ``k``."""
    batch, amp, phase = eval_tasks(cfg, k)
    out: dict[str, Any] = {}
    for name, learner in learners.items():
        if name == "oracle":
            ob = TaskBatch(oracle_inputs(batch.support_x, amp, phase), batch.support_y,
                           oracle_inputs(batch.query_x, amp, phase), batch.query_y)
            losses = learner.adaptation_curve(ob, steps=0).losses.expand(-1, cfg.eval.steps + 1)
        else:
            runner = learner.with_inner_lr(finetune_lr[name]) if name in finetune_lr else learner
            losses = runner.adaptation_curve(batch, steps=cfg.eval.steps).losses
            if cfg.eval.safe_backtracks is not None:
                base, sep, shot = name.partition("_k")
                safe = runner.adaptation_curve(batch, steps=cfg.eval.steps, safe_backtracks=cfg.eval.safe_backtracks)
                out[f"{base}_safe{sep}{shot}"] = summarize_tasks(safe.losses)
        out[name] = summarize_tasks(losses)
    return out


def summarize_tasks(losses: torch.Tensor) -> dict[str, Any]:
    """Mean ± CI per step, plus the tail a mean hides: the worst task's MSE per step, and how many
    tasks diverged — ended up, at some step, worse than before adapting at all."""
    out: dict[str, Any] = summarize(losses)
    out["max"] = losses.max(0).values.tolist()
    out["diverged"] = int((~(losses[:, 1:] <= losses[:, :1])).any(1).sum()) if losses.shape[1] > 1 else 0  # NaN counts
    # ... and those whose MSE more than doubled: the strict count above includes tasks fit almost exactly
    # before adapting (MSE ~0.01) that end a hair worse.
    out["doubled"] = int((~(losses[:, 1:] <= 2 * losses[:, :1])).any(1).sum()) if losses.shape[1] > 1 else 0
    return out


def figure_predictions(cfg: SinusoidConfig, learners: dict[str, MAML], finetune_lr: dict[str, float],
                       shots: list[int], path: Path) -> None:
    """Figure 2 of the paper: a test task, its K points, MAML vs pretrained after 1 and 10 steps."""
    import matplotlib.pyplot as plt

    methods = [m for m in ("maml", "pretrained") if any(n.startswith(m + "_k") for n in learners)]
    fig, axes = plt.subplots(len(shots), len(methods), figsize=(5 * len(methods), 3.6 * len(shots)), squeeze=False)
    grid = torch.linspace(-5, 5, 200).view(-1, 1)
    for row, k in enumerate(shots):
        batch, amp, phase = eval_tasks(cfg, k, num_tasks=1)
        xs, ys = batch.support_x[0], batch.support_y[0]
        for col, method in enumerate(methods):
            name = f"{method}_k{k}"
            if name not in learners:
                axes[row, col].axis("off")
                continue
            learner = learners[name]
            runner = learner.with_inner_lr(finetune_lr[name]) if name in finetune_lr else learner
            ax = axes[row, col]
            ax.plot(grid, amp[0] * torch.sin(grid + phase[0]), color="red", label="ground truth")
            for steps, style in ((0, ":"), (1, "--"), (cfg.eval.steps, "-")):
                params = runner.adapt(xs, ys, steps=steps)
                ax.plot(grid, runner.predict(params, grid), style, color="tab:green" if steps else "tab:blue",
                        alpha=0.6 if steps == 1 else 1.0, label=f"after {steps} step{'s' if steps != 1 else ''}")
            ax.scatter(xs, ys, marker="^", color="purple", zorder=5, label=f"{k} used for grad")
            ax.set_title(f"{name.split('_k')[0]}, K={k}")
            ax.set_ylim(-6, 6)
            ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def figure_curves(results: dict[str, Any], path: Path) -> None:
    """Figure 3 of the paper: MSE against gradient steps for MAML, pretrained and oracle."""
    import matplotlib.pyplot as plt

    shots = sorted(results, key=int)
    fig, axes = plt.subplots(1, len(shots), figsize=(5 * len(shots), 3.8), squeeze=False)
    styles = {"MAML": {"marker": "o"}, "pretrained": {"marker": "s"}, "oracle": {"linestyle": "--", "color": "k"}}
    for ax, k in zip(axes[0], shots):
        curves = {_label(m): (r["mean"], r["ci95"]) for m, r in results[k].items()}
        plot_curves(ax, curves, ylabel="mean squared error", title=f"K = {k}", styles=styles)
        ax.set_yscale("log")
    save_figure(fig, path)


def _label(method: str) -> str:
    base = method.split("_k")[0]
    safe = base.endswith("_safe")
    label = {"maml": "MAML", "pretrained": "pretrained", "oracle": "oracle"}[base.removesuffix("_safe")]
    return label + (", steps that never raise the support loss" if safe else "")


def training_seconds(run_dir: Path) -> float:
    """Training time of a run as logged (cumulative over resumes)."""
    log = RunDir(run_dir).metrics
    times = [json.loads(line).get("time", 0.0) for line in log.read_text().splitlines()] if log.exists() else []
    return max(times, default=0.0)


def training_line(summary: dict[str, Any]) -> str:
    """One network's training in a line: iterations, seconds, rate, and the compiled step's first call."""
    done = summary["iterations"] - summary["resumed_from"]
    line = f"{done} iterations in {summary['seconds']:.1f} s"
    if not summary["resumed_from"] and summary["seconds"] > 0:
        line += f" ({done / summary['seconds']:.0f} it/s overall)"
    if summary.get("compile_seconds") is not None:
        line += f", of which {summary['compile_seconds']:.1f} s the compiled step's first call (compilation)"
    return line


def is_finished(run_dir: Path, iterations: int) -> bool:
    path = RunDir(run_dir).last
    if not path.exists():
        return False
    return checkpoint_meta(path).get("iteration") == iterations


def reproduce(cfg: SinusoidConfig, out_dir: Path, resume: bool = False, command: str = "") -> dict[str, Any]:
    """Train MAML per K (+ baselines), evaluate all, write results JSON/Markdown and figures."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    learners: dict[str, MAML] = {}
    timings: dict[str, float] = {}
    compile_seconds: dict[str, float] = {}
    jobs = [("maml", k) for k in cfg.shots]
    if cfg.baselines:
        jobs += [("pretrained", k) for k in cfg.shots] + [("oracle", cfg.k_shot)]
    for kind, k in jobs:
        name = f"{kind}_k{k}" if kind != "oracle" else "oracle"
        kcfg = dataclasses.replace(cfg, k_shot=k)
        run_dir = out_dir / name
        if not (resume and is_finished(run_dir, cfg.train.iterations)):
            print(f"[sinusoid] training {name} ({cfg.train.iterations} iterations) -> {run_dir}", file=sys.stderr)
            summary = train(kcfg, run_dir, kind, resume=resume)
            print(f"[sinusoid] {name}: {training_line(summary)}", file=sys.stderr)
            if summary.get("compile_seconds") is not None:
                compile_seconds[name] = summary["compile_seconds"]
        timings[name] = training_seconds(run_dir)
        learners[name] = load_learner(kcfg, run_dir, kind)

    finetune_lr, tuning = {}, {}
    for k in cfg.shots:
        if f"pretrained_k{k}" in learners:
            lr, scores = tune_finetune_lr(cfg, learners[f"pretrained_k{k}"], k)
            finetune_lr[f"pretrained_k{k}"], tuning[f"pretrained_k{k}"] = lr, scores

    results: dict[str, Any] = {}
    for k in cfg.eval.shots:
        chosen = {n: l for n, l in learners.items() if n == "oracle" or n.endswith(f"_k{k}")}
        if f"maml_k{k}" not in chosen:  # evaluating at a K no model was trained for: use the training K
            chosen = {n: l for n, l in learners.items() if n == "oracle" or n.endswith(f"_k{cfg.k_shot}")}
        results[str(k)] = {n.split("_k")[0]: v for n, v in evaluate(cfg, chosen, finetune_lr, k).items()}

    figure_curves(results, out_dir / "fig3_mse_vs_steps.png")
    fig_shots = [k for k in (5, 10) if k in cfg.shots] or cfg.shots[:2]
    figure_predictions(cfg, {n: l for n, l in learners.items() if n != "oracle"}, finetune_lr, fig_shots,
                       out_dir / "fig2_predictions.png")
    report = {
        "experiment": "sinusoid",
        "command": command,
        "config": to_dict(cfg),
        "results": results,
        "finetune_lr": finetune_lr,
        "finetune_lr_tuning_mse": tuning,
        "train_seconds": timings,
        "compile_seconds": compile_seconds,  # first calls of the compiled step, included in train_seconds
        "total_seconds": time.perf_counter() - t0,
        "precision": {n: l.precision.name for n, l in learners.items()},
        "environment": environment(),
    }
    atomic_write_text(out_dir / "results.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    show = [0, 1, 5, 10]
    lines = [
        "# Sinusoid regression (MAML paper, section 5.1)",
        "",
        f"Command: `{report['command']}`  ",
        f"Seed: {cfg['train']['seed']} (training), {cfg['eval']['seed']} (test tasks); "
        f"{cfg['train']['iterations']} meta-iterations, meta-batch {cfg['train']['meta_batch_size']}, "
        f"α = {cfg['maml']['inner_lr']}, {cfg['maml']['inner_steps']} inner step(s), "
        f"{'first' if cfg['maml']['first_order'] else 'second'}-order.  ",
        f"Test: {cfg['eval']['num_tasks']} tasks, {cfg['eval']['query_points']} query points each; "
        "mean squared error ± 95% confidence interval over tasks.  ",
        f"Training time: {sum(report['train_seconds'].values()):.0f} s for {len(report['train_seconds'])} networks "
        f"(MAML {', '.join(f'{k}: {v:.0f} s' for k, v in report['train_seconds'].items() if k.startswith('maml'))}) "
        f"on {report['environment']['processor']} ({report['environment']['threads']} threads"
        f"{', ' + '/'.join(sorted(set(report['precision'].values()))) if report.get('precision') else ''}), "
        f"torch {report['environment']['torch']}.",
        "",
    ]
    for k, methods in report["results"].items():
        steps = [s for s in show if s < len(next(iter(methods.values()))["mean"])]
        lines += [f"## K = {k}", "", "| method | " + " | ".join(f"{s} step{'s' if s != 1 else ''}" for s in steps) + " |",
                  "|---|" + "---:|" * len(steps)]
        for name, r in methods.items():
            label = _label(name)
            if name == "pretrained" and f"pretrained_k{k}" in report["finetune_lr"]:
                label += f" (step {report['finetune_lr'][f'pretrained_k{k}']})"
            lines.append(f"| {label} | " + " | ".join(fmt_summary(r, s) for s in steps) + " |")
        lines.append("")
        tails = {name: r for name, r in methods.items() if "diverged" in r and name != "oracle"}
        if tails:
            lines += [f"Single tasks at K = {k}: the worst of {cfg['eval']['num_tasks']} tasks' MSE after "
                      + ", ".join(str(s) for s in steps[1:]) + " steps, the tasks whose MSE rose above their "
                      "unadapted MSE at some step, and those whose MSE more than doubled:", ""]
            lines += [f"- {_label(name)}: " + " / ".join(f"{r['max'][s]:.3g}" for s in steps[1:])
                      + f"; {r['diverged']} above unadapted, {r.get('doubled', '?')} more than doubled"
                      for name, r in tails.items()]
            lines.append("")
    lines += ["![Figure 2](fig2_predictions.png)", "", "![Figure 3](fig3_mse_vs_steps.png)", ""]
    return "\n".join(lines)
