"""``fastmaml fewshot {train,evaluate,test,adapt,lake-runs,download}``: the paper's Table 1 and using a trained model."""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fastmaml.cliargs import add_common, command_line, config_overrides, preset_names, preset_path
from fastmaml.errors import DataError

PRESETS = Path(__file__).parent / "presets"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fewshot", help="N-way K-shot image classification (Omniglot, MiniImagenet)")
    acts = p.add_subparsers(dest="action", required=True)
    for name, help_ in (("train", "meta-train, keeping the best validation checkpoint, then test"),
                        ("evaluate", "test a trained run on 600 fixed episodes of held-out classes")):
        a = acts.add_parser(name, help=help_)
        add_common(a, "omniglot_5w1s", preset_names(PRESETS, "fewshot"), data_root=True,
                   precision="train.precision" if name == "train" else "eval.precision")
        a.add_argument("--run-dir", type=Path, required=True)
        if name == "train":
            a.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
            a.add_argument("--no-test", action="store_true", help="skip the final 600-episode test")
    t = acts.add_parser("test", help="re-test shipped weights (weights/) on the row's test episodes")
    add_common(t, None, preset_names(PRESETS, "fewshot"), data_root=True)
    t.add_argument("--weights", required=True, help="a zoo name (weights/<name>.json) or a .safetensors path")
    a = acts.add_parser("adapt", help="adapt a trained model to your own labelled images and classify others")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", type=Path, help="a trained fewshot run")
    src.add_argument("--weights", help="a zoo name (weights/<name>.json) or a .safetensors path")
    a.add_argument("--support", type=Path, required=True, help="folder with one subfolder of images per class")
    a.add_argument("--query", type=Path, required=True, help="folder of images to classify")
    a.add_argument("--steps", type=int, default=None, help="inner steps (default: the run's test setting)")
    a.add_argument("--out", type=Path, default=None, help="CSV of predictions (default: print only)")
    a.add_argument("--device", default="cpu")
    r = acts.add_parser("lake-runs", help="Lake et al.'s 20 one-shot runs (all_runs.zip, unpacked): error per run")
    r.add_argument("runs", type=Path, help="folder holding run01 ... run20 (training/, test/, class_labels.txt)")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", type=Path, help="a trained fewshot run (20-way, for the official runs)")
    src.add_argument("--weights", help="a zoo name (weights/<name>.json) or a .safetensors path")
    r.add_argument("--steps", type=int, default=None, help="inner steps (default: the model's test setting)")
    r.add_argument("--device", default="cpu")
    d = acts.add_parser("download", help="download Omniglot's official zips (needs network)")
    d.add_argument("--root", type=Path, default=Path("data/omniglot"))
    p.set_defaults(handler=run)


def _config(args: argparse.Namespace):
    from fastmaml.config import load_config
    from fastmaml.experiments.fewshot import FewShotConfig

    return load_config(FewShotConfig, preset_path(args.preset, PRESETS, "fewshot"), config_overrides(args, "data.root"))


def run(args: argparse.Namespace) -> None:
    from fastmaml.eval.stats import fmt
    from fastmaml.experiments import fewshot as FS

    if args.action == "download":
        from fastmaml.data.omniglot import download_omniglot

        for path in download_omniglot(args.root):
            print(path)
        return
    if args.action in ("adapt", "test", "lake-runs"):
        {"adapt": adapt, "test": test, "lake-runs": lake_runs}[args.action](args)
        return
    cfg = _config(args)
    pools = FS.load_pools(cfg)
    if args.action == "train":
        summary = FS.train(cfg, args.run_dir, resume=args.resume, pools=pools)
        print(json.dumps(summary))
        if args.no_test:
            return
    report = FS.evaluate(cfg, args.run_dir, pools, command=command_line())
    s, acc = report["reported_step"], report["test_accuracy"]
    print(f"{report['dataset']} {report['setting']} {report['method']}: "
          f"{fmt(acc['mean'][s], acc['ci95'][s], percent=True)} after {s} step(s) "
          f"({len(acc['mean']) and report['config']['eval']['episodes']} test episodes); {args.run_dir / 'results.md'}")


def test(args: argparse.Namespace) -> None:
    """Re-test shipped weights with the evaluation's own episodes and accuracy curve; print beside the card's figure."""
    from fastmaml.config import to_dict
    from fastmaml.errors import ConfigError
    from fastmaml.eval.stats import fmt, summarize
    from fastmaml.experiments import fewshot as FS
    from fastmaml.experiments.zoo import load_learner_from, load_weights

    weights = load_weights(args.weights)
    args.preset = args.preset or weights.card["preset"]
    cfg, trained = _config(args), weights.config()
    # The model is rebuilt from the preset, so it must be the one the weights were trained as.
    built = (cfg.n_way, to_dict(cfg.model), cfg.data.dataset, cfg.data.image_size)
    if built != (trained.n_way, to_dict(trained.model), trained.data.dataset, trained.data.image_size):
        raise ConfigError(f"preset {args.preset!r} builds another model than weights {weights.path.name} "
                          f"(trained with preset {weights.card['preset']!r}); use --preset {weights.card['preset']}")
    pools = FS.load_pools(cfg)
    learner = load_learner_from(weights, cfg, tuple(pools["test"].shape))
    s = cfg.maml.eval_inner_steps
    acc = summarize(FS.accuracy_curve(learner, FS.test_episodes(cfg, pools["test"]), s))
    print(f"{weights.card['dataset']} {weights.card['setting']} {weights.card['method']}, weights {weights.path.name}: "
          f"{fmt(acc['mean'][s], acc['ci95'][s], percent=True)} after {s} step(s) on {cfg.eval.episodes} test "
          f"episodes (seed {cfg.eval.seed}); shipped: {weights.shipped()}")


def _learner_for(args: argparse.Namespace, pool_shape_of: Callable[[Any], tuple[int, ...]]) -> tuple[Any, Any]:
    """``(cfg, learner)`` from ``--run-dir`` (its best checkpoint) or ``--weights`` (a zoo entry).

    ``pool_shape_of(cfg)`` gives the pool shape the model is built for (channels from it).
    """
    from fastmaml.config import from_dict
    from fastmaml.experiments import fewshot as FS
    from fastmaml.experiments.zoo import load_learner_from, load_weights
    from fastmaml.train.checkpoint import RunDir, checkpoint_meta

    if args.weights:
        weights = load_weights(args.weights)
        cfg = weights.config()
        cfg.train.device = args.device
        return cfg, load_learner_from(weights, cfg, pool_shape_of(cfg))
    ckpt_path = RunDir(args.run_dir).best_or_last()
    meta = checkpoint_meta(ckpt_path)
    cfg_dict = {k: v for k, v in meta.get("config", {}).items() if k != "experiment"}
    if not cfg_dict:
        raise DataError(f"{ckpt_path} carries no fewshot config; was it written by `fastmaml fewshot train`?")
    cfg = from_dict(FS.FewShotConfig, cfg_dict)
    cfg.train.device = args.device
    return cfg, FS.load_learner(cfg, args.run_dir, pool_shape_of(cfg))


def _pool_shape(cfg) -> tuple[int, ...]:
    # Only the layout matters (4 dims: grayscale, 5: RGB); 20 examples as in Omniglot.
    size = cfg.data.image_size
    return (cfg.n_way, 20, size, size) if cfg.data.dataset == "omniglot" else (cfg.n_way, 20, 3, size, size)


def _image_options(cfg) -> dict[str, Any]:
    """Read user images as the training data was: Omniglot grayscale, Lanczos-resized, ink bright on black."""
    omniglot = cfg.data.dataset == "omniglot"
    # Omniglot models saw bright ink on black; user scans (and Omniglot's own PNGs) are dark ink on white.
    return {"channels": 1 if omniglot else 3, "dtype": torch.float32, "invert": omniglot,
            "resample": "lanczos" if omniglot else "bilinear"}


def adapt(args: argparse.Namespace) -> None:
    """Adapt to ``--support`` (class subfolders) and print/write the class of each ``--query`` image."""
    from fastmaml.data.images import list_images, load_image_folder, load_images

    cfg, learner = _learner_for(args, _pool_shape)
    opts = _image_options(cfg)
    support = load_image_folder(args.support, cfg.data.image_size, **opts)
    if len(support.classes) != cfg.n_way:
        raise DataError(
            f"{args.support} has {len(support.classes)} class folders ({', '.join(support.classes)}) but the model "
            f"was meta-trained for {cfg.n_way}-way tasks; give exactly {cfg.n_way} classes"
        )
    files = list_images(args.query)
    if not files:
        raise DataError(f"{args.query}: no images to classify")
    query, _ = load_images(files, cfg.data.image_size, **opts)
    steps = cfg.maml.eval_inner_steps if args.steps is None else args.steps
    params = learner.adapt(support.x.to(args.device), support.y.to(args.device), steps=steps)
    probs = learner.predict(params, query.to(args.device)).softmax(-1).cpu()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", "predicted_class", "probability"])
    for path, p in zip(files, probs):
        i = int(p.argmax())
        writer.writerow([str(path), support.classes[i], f"{float(p[i]):.4f}"])
    print(buf.getvalue(), end="")
    if args.out:
        from fastmaml.fileio import atomic_write_text

        atomic_write_text(args.out, buf.getvalue())


def lake_runs(args: argparse.Namespace) -> None:
    """Lake et al. (2015)'s one-shot runs: adapt on each run's ``training/`` (one image per class), classify ``test/``.

    ``class_labels.txt`` pairs each test image with its training image (``run01/test/item01.png
    run01/training/class12.png``); paths are taken relative to the run folder, by their last two parts.
    """
    from fastmaml.data.images import load_images

    cfg, learner = _learner_for(args, _pool_shape)
    opts = _image_options(cfg)
    runs = sorted(p for p in args.runs.glob("run*") if (p / "class_labels.txt").is_file())
    if not runs:
        raise DataError(f"{args.runs}: no run folders with class_labels.txt (unpack Lake's all_runs.zip there)")
    steps = cfg.maml.eval_inner_steps if args.steps is None else args.steps
    errors = []
    for run in runs:
        pairs = [line.split() for line in (run / "class_labels.txt").read_text().splitlines() if line.strip()]
        if any(len(p) != 2 for p in pairs):
            raise DataError(f"{run / 'class_labels.txt'}: expected lines 'test/<image> training/<image>'")
        train_files = sorted({Path(*Path(t).parts[-2:]) for _, t in pairs})
        if len(train_files) != cfg.n_way:
            raise DataError(f"{run} has {len(train_files)} classes but the model was meta-trained for {cfg.n_way}-way "
                            "tasks; Lake's runs are 20-way: use 20-way weights")
        support, _ = load_images([run / f for f in train_files], cfg.data.image_size, **opts)
        query, _ = load_images([run / Path(*Path(q).parts[-2:]) for q, _ in pairs], cfg.data.image_size, **opts)
        truth = torch.tensor([train_files.index(Path(*Path(t).parts[-2:])) for _, t in pairs])
        params = learner.adapt(support.to(args.device), torch.arange(cfg.n_way, device=args.device), steps=steps)
        pred = learner.predict(params, query.to(args.device)).argmax(-1).cpu()
        errors.append(100.0 * float((pred != truth).float().mean()))
        print(f"{run.name}: error {errors[-1]:.1f}% ({int((pred != truth).sum())} of {len(pairs)})")
    print(f"mean error over {len(runs)} runs: {sum(errors) / len(errors):.2f}% (Lake et al. 2015 report 20-way "
          "one-shot errors on these runs: people 4.5%, BPL 3.3%)")
