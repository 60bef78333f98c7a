"""N-way K-shot image classification as in the MAML paper (section 5.2, Table 1).

Omniglot and MiniImagenet with the 4-block conv net or the non-convolutional MLP,
MAML or first-order MAML; presets carry the paper's hyperparameters (appendix A.1).
Training keeps the checkpoint with the best validation accuracy; the final test uses
``eval.episodes`` (600) fixed episodes of held-out classes and reports accuracy after
each inner step, mean ± 95% CI.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.config import to_dict
from fastmaml.core.maml import MAML, MAMLConfig, accuracy
from fastmaml.core.step_size import PerElement, PerLayerStep
from fastmaml.errors import ConfigError, DataError
from fastmaml.eval.environment import environment
from fastmaml.eval.plots import plot_curves, save_figure
from fastmaml.eval.stats import fmt, summarize
from fastmaml.fileio import atomic_write_text
from fastmaml.models.conv import ConvNet
from fastmaml.models.mlp import NonConvNet
from fastmaml.models.resnet12 import ResNet12
from fastmaml.tasks.batch import TaskBatch
from fastmaml.tasks.episodes import EpisodeSampler, uint8_images_to_float
from fastmaml.train.checkpoint import RunDir, load_run_into
from fastmaml.train.loop import TrainConfig, eval_precision, meta_train


@dataclass
class DataConfig:
    dataset: str = "omniglot"  # omniglot | miniimagenet
    root: str = "data/omniglot"  # omniglot: folder with images_{background,evaluation}.zip; mini: image folder
    splits_dir: str = ""  # miniimagenet: folder with train.csv/val.csv/test.csv (default: root)
    split: str = "paper"  # omniglot: paper (1200/423 characters) | lake (background/evaluation)
    image_size: int = 28
    val_characters: int = 100  # omniglot: characters moved from meta-train to validation
    cache_dir: str | None = None


@dataclass
class ModelConfig:
    kind: str = "conv"  # conv | nonconv | resnet12 (widths 64-160-320-640; hidden/strided/global_pool unused)
    hidden: int = 64  # conv filters (64 Omniglot, 32 MiniImagenet)
    strided: bool = True  # Omniglot: strided convolutions instead of max-pooling
    global_pool: bool = True  # Omniglot (Finn's code): average the last feature map over space
    channels_last: bool = False
    # max-pool nets: pool before the ReLU (exactly the same outputs and gradients; the ReLU sees a quarter of the values)
    pool_before_relu: bool = False


@dataclass
class FewShotEvalConfig:
    episodes: int = 600
    seed: int = 2017
    q_query: int = 15  # query images per class in test episodes
    val_episodes: int = 100
    batch: int = 25  # test episodes per vectorized call (memory)
    # Also test with steps that never raise the support loss (MAML.adaptation_curve(safe_backtracks=k):
    # α, α/2, ..., α/2^k, else no step), reported beside the paper's plain steps. None: plain steps only.
    safe_backtracks: int | None = None
    # Test precision: trained (what the run trained in, from its config.json) | auto | fp32 | bf16 (core/precision.py)
    precision: str = "trained"


@dataclass
class FewShotConfig:
    n_way: int = 5
    k_shot: int = 1
    q_query: int = 1  # query images per class while meta-training (Finn's Omniglot code: K)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    maml: MAMLConfig = field(default_factory=lambda: MAMLConfig(inner_lr=0.4, inner_steps=1, eval_inner_steps=3))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(iterations=60_000, meta_batch_size=32, meta_lr=1e-3,
                                            checkpoint_every=500, log_every=100, validate_every=500,
                                            precision="auto", tune_batching=True)
    )
    eval: FewShotEvalConfig = field(default_factory=FewShotEvalConfig)


# ------------------------------------------------------------------ data
def load_pools(cfg: FewShotConfig) -> dict[str, torch.Tensor]:
    """uint8 image pools per split: ``[classes, examples, H, W]`` (Omniglot) or ``[..., 3, H, W]``.

    On a GPU the pools move there once (Omniglot is ~70 MB as uint8), so episodes are gathered
    on the device and never cross the bus.
    """
    pools = _load_pools(cfg)
    if cfg.train.device != "cpu":
        pools = {k: v.to(cfg.train.device) for k, v in pools.items()}
    return pools


def _load_pools(cfg: FewShotConfig) -> dict[str, torch.Tensor]:
    d = cfg.data
    if d.dataset == "omniglot":
        from fastmaml.data.omniglot import load_omniglot, omniglot_splits

        data = load_omniglot(d.root, d.image_size, cache_dir=d.cache_dir)
        splits = omniglot_splits(data, d.split, n_val=d.val_characters)
        return {name: s.images for name, s in splits.items()}
    if d.dataset == "miniimagenet":
        from fastmaml.data.miniimagenet import load_miniimagenet

        splits_dir = d.splits_dir or d.root
        return {s: load_miniimagenet(d.root, s, splits_dir, d.image_size, cache_dir=d.cache_dir).images
                for s in ("train", "val", "test")}
    raise ConfigError(f"unknown dataset {d.dataset!r}; use 'omniglot' or 'miniimagenet'")


def sampler(cfg: FewShotConfig, pool: torch.Tensor, q_query: int, device: str = "cpu") -> EpisodeSampler:
    if pool.shape[0] < cfg.n_way:
        raise DataError(f"{cfg.n_way}-way episodes need {cfg.n_way} classes, but this split has {pool.shape[0]}")
    transform = functools.partial(uint8_images_to_float, add_channel=pool.dim() == 4)  # [C, n, H, W]: grayscale
    if cfg.model.channels_last:
        transform = _channels_last(transform)
    return EpisodeSampler(pool, cfg.n_way, cfg.k_shot, q_query, transform=transform, device=device)


def _channels_last(fn):
    def wrapped(x: torch.Tensor) -> torch.Tensor:
        y = fn(x)
        return y.contiguous(memory_format=torch.channels_last) if y.dim() == 4 else y

    return wrapped


def build_model(cfg: FewShotConfig, pool_shape: tuple[int, ...]) -> nn.Module:
    channels = 1 if len(pool_shape) == 4 else pool_shape[2]
    if cfg.model.kind == "conv":
        return ConvNet(channels, cfg.n_way, cfg.model.hidden, cfg.data.image_size, strided=cfg.model.strided,
                       global_pool=cfg.model.global_pool, pool_before_relu=cfg.model.pool_before_relu)
    if cfg.model.kind == "nonconv":
        return NonConvNet(channels * cfg.data.image_size ** 2, cfg.n_way)
    if cfg.model.kind == "resnet12":
        return ResNet12(channels, cfg.n_way)
    raise ConfigError(f"unknown model kind {cfg.model.kind!r}; use 'conv', 'nonconv' or 'resnet12'")


def build_learner(cfg: FewShotConfig, pool_shape: tuple[int, ...]) -> MAML:
    torch.manual_seed(cfg.train.seed)
    return cfg.maml.build(build_model(cfg, pool_shape), F.cross_entropy)


def fixed_episodes(cfg: FewShotConfig, pool: torch.Tensor, n: int, seed: int, device: str) -> list[TaskBatch]:
    """``n`` episodes drawn once from ``seed``, in chunks of ``eval.batch``."""
    s = sampler(cfg, pool, cfg.eval.q_query, device)
    g = torch.Generator().manual_seed(seed)
    out, left = [], n
    while left > 0:
        out.append(s.sample(min(cfg.eval.batch, left), g))
        left -= cfg.eval.batch
    return out


def accuracy_curve(learner: MAML, episodes: list[TaskBatch], steps: int,
                   safe_backtracks: int | None = None) -> torch.Tensor:
    """``[episodes, steps + 1]`` query accuracy after 0..steps inner steps (plain, or safe with ``safe_backtracks``)."""
    parts = [learner.adaptation_curve(b, steps, metrics={"accuracy": accuracy}, safe_backtracks=safe_backtracks)
             .metrics["accuracy"] for b in episodes]
    return torch.cat(parts).cpu()


def _spread(acc: torch.Tensor) -> dict[str, Any]:
    """How far single episodes fall: the worst accuracy per step, and episodes that end below their step-1 accuracy."""
    return {"min": acc.min(0).values.tolist(), "worse_than_step1_at_end": int((acc[:, -1] < acc[:, 1] - 1e-9).sum())}


# ------------------------------------------------------------------ train / evaluate
def train(cfg: FewShotConfig, run_dir: Path, resume: bool = False, pools: dict | None = None) -> dict[str, Any]:
    pools = pools or load_pools(cfg)
    device = cfg.train.device
    learner = build_learner(cfg, tuple(pools["train"].shape))
    train_sampler = sampler(cfg, pools["train"], cfg.q_query, device)
    val_pool = pools["val"] if len(pools.get("val", [])) >= cfg.n_way else pools["train"]
    val_episodes = fixed_episodes(cfg, val_pool, cfg.eval.val_episodes, cfg.eval.seed + 1, device)
    steps = cfg.maml.eval_inner_steps

    def validate(l: MAML) -> dict[str, float]:
        return {"accuracy": accuracy_curve(l, val_episodes, steps)[:, -1].mean().item()}

    return meta_train(
        learner, lambda g: train_sampler.sample(cfg.train.meta_batch_size, g), cfg.train, run_dir,
        resume=resume, validate=validate, select_metric="accuracy", select_mode="max",
        run_config={"experiment": "fewshot", **to_dict(cfg)},
    )


def load_learner(cfg: FewShotConfig, run_dir: Path, pool_shape: tuple[int, ...], which: str = "best") -> MAML:
    return load_run_into(build_learner(cfg, pool_shape), run_dir, which).to(cfg.train.device)


def test_episodes(cfg: FewShotConfig, pool: torch.Tensor) -> list[TaskBatch]:
    """The test protocol's episodes: ``eval.episodes`` drawn from ``eval.seed`` (the same for every test of a row)."""
    return fixed_episodes(cfg, pool, cfg.eval.episodes, cfg.eval.seed, cfg.train.device)


def evaluate(cfg: FewShotConfig, run_dir: Path, pools: dict | None = None, command: str = "") -> dict[str, Any]:
    """Test accuracy on ``eval.episodes`` fixed episodes of the test classes; writes results files."""
    pools = pools or load_pools(cfg)
    run_dir = Path(run_dir)
    learner = load_learner(cfg, run_dir, tuple(pools["test"].shape))
    learner.precision, precision_why = eval_precision(cfg.eval.precision, run_dir, cfg.train.precision, cfg.train.device)
    episodes = test_episodes(cfg, pools["test"])
    steps = max(cfg.maml.eval_inner_steps, 10)
    t0 = time.perf_counter()
    acc = accuracy_curve(learner, episodes, steps)
    summary = summarize(acc)
    safe = None
    if cfg.eval.safe_backtracks is not None:
        safe_acc = accuracy_curve(learner, episodes, steps, cfg.eval.safe_backtracks)
        safe = {"backtracks": cfg.eval.safe_backtracks, "test_accuracy": summarize(safe_acc), **_spread(safe_acc)}
    log = _read_log(RunDir(run_dir).metrics)
    report = {
        "experiment": "fewshot",
        "command": command,
        "dataset": cfg.data.dataset,
        "setting": f"{cfg.n_way}-way {cfg.k_shot}-shot",
        "method": method_name(cfg.maml) + f" ({cfg.model.kind})",
        "test_accuracy": summary,
        "test_spread": _spread(acc),
        "safe_steps": safe,
        "reported_step": cfg.maml.eval_inner_steps,
        "iterations_trained": max((r["iteration"] for r in log), default=0),
        "train_seconds": max((r.get("time", 0.0) for r in log), default=0.0),
        "eval_seconds": time.perf_counter() - t0,
        "validation": [r for r in log if "val_accuracy" in r],
        "config": to_dict(cfg),
        "precision": {"test": learner.precision.name, "why": precision_why,
                      "trained": _trained_precision_name(run_dir)},
        "environment": environment(),
    }
    atomic_write_text(run_dir / "results.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(run_dir / "results.md", markdown(report))
    figure(report, run_dir / "accuracy.png")
    return report


def _trained_precision_name(run_dir: Path) -> str | None:
    try:
        return json.loads(RunDir(run_dir).config.read_text())["train"].get("precision_resolved", "fp32")
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None


def precision_note(report: dict[str, Any]) -> str:
    """``; trained in bf16, tested in fp32`` for the hardware line of results.md (empty for reports without it)."""
    prec = report.get("precision")
    if not prec:
        return ""
    trained = prec.get("trained") or "?"
    if trained == prec["test"]:
        return f"; {trained} (train.precision {report['config']['train'].get('precision', 'fp32')})"
    return f"; trained in {trained}, tested in {prec['test']}"


def method_name(m: MAMLConfig) -> str:
    """The name a paper would give these settings: MAML, FOMAML, MAML++, Meta-SGD or ANIL."""
    rule = m.step_size_rule()
    if m.per_step_bn or m.multi_step_loss_iterations or m.first_order_iterations or isinstance(rule, PerLayerStep):
        name = "MAML++"
        if m.per_step_bn and m.bn_eval_stats == "running":
            name += ", running BN statistics at test"
        return name
    if isinstance(rule, PerElement):
        return "Meta-SGD"
    if m.inner_params is not None:
        return "ANIL" if all(p.startswith("head.") for p in m.inner_params) else "MAML, inner loop on " + ", ".join(m.inner_params)
    return "FOMAML" if m.first_order else "MAML"


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["reported_step"]
    acc = report["test_accuracy"]
    cfg = report["config"]
    steps_shown = sorted({0, 1, s, len(acc["mean"]) - 1})
    lines = [
        f"# {report['dataset']} {report['setting']}: {report['method']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Seed {cfg['train']['seed']}; {report['iterations_trained']} meta-iterations in "
        f"{report['train_seconds'] / 60:.1f} min on {report['environment']['processor']} "
        f"({report['environment']['threads']} threads{', ' + report['environment']['cuda'] if report['environment']['cuda'] else ''}"
        f"{precision_note(report)}); "
        f"torch {report['environment']['torch']}.  ",
        f"Test: {cfg['eval']['episodes']} episodes of held-out classes, {cfg['eval']['q_query']} queries per class; "
        "accuracy ± 95% CI.",
        "",
        f"**Accuracy after {s} inner step(s) (the paper's protocol): {fmt(acc['mean'][s], acc['ci95'][s], percent=True)}**",
        "",
        "| inner steps | " + " | ".join(str(i) for i in steps_shown) + " |",
        "|---|" + "---:|" * len(steps_shown),
        "| accuracy | " + " | ".join(fmt(acc["mean"][i], acc["ci95"][i], percent=True) for i in steps_shown) + " |",
    ]
    safe = report.get("safe_steps")
    if safe:
        sacc = safe["test_accuracy"]
        lines.append(f"| accuracy, safe steps (≤ {safe['backtracks']} halvings) | "
                     + " | ".join(fmt(sacc["mean"][i], sacc["ci95"][i], percent=True) for i in steps_shown) + " |")
    spreads = [("plain steps", report.get("test_spread"))] + ([("safe steps", safe)] if safe else [])
    if report.get("test_spread"):
        lines += ["", "Single episodes: worst accuracy after " + ", ".join(str(i) for i in steps_shown) + " steps; "
                  f"episodes that end (step {len(acc['mean']) - 1}) below their accuracy after 1 step:", ""]
        for name, sp in spreads:
            lines.append(f"- {name}: " + " / ".join(f"{100 * sp['min'][i]:.1f}%" for i in steps_shown)
                         + f"; {sp['worse_than_step1_at_end']} of {cfg['eval']['episodes']}")
    lines += [
        "",
        "![accuracy](accuracy.png)",
        "",
    ]
    return "\n".join(lines)


def figure(report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    val = report["validation"]
    if val:
        a.plot([r["time"] / 60 for r in val], [100 * r["val_accuracy"] for r in val], marker=".")
    a.set_xlabel("wall time (min)")
    a.set_ylabel("validation accuracy (%)")
    a.set_title("accuracy against training time")
    a.grid(alpha=0.3)
    acc = report["test_accuracy"]
    curves = {report["method"]: ([100 * m for m in acc["mean"]], [100 * c for c in acc["ci95"]])}
    if report.get("safe_steps"):
        sacc = report["safe_steps"]["test_accuracy"]
        curves[report["method"] + ", safe steps"] = ([100 * m for m in sacc["mean"]], [100 * c for c in sacc["ci95"]])
    plot_curves(b, curves,
                ylabel="test accuracy (%)", title="accuracy against inner steps")
    save_figure(fig, path)
