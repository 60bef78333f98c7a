"""``fastmaml fewshot {train,evaluate,adapt,download}``: the paper's Table 1 and using a trained model."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

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
    a = acts.add_parser("adapt", help="adapt a trained model to your own labelled images and classify others")
    a.add_argument("--run-dir", type=Path, required=True, help="a trained fewshot run")
    a.add_argument("--support", type=Path, required=True, help="folder with one subfolder of images per class")
    a.add_argument("--query", type=Path, required=True, help="folder of images to classify")
    a.add_argument("--steps", type=int, default=None, help="inner steps (default: the run's test setting)")
    a.add_argument("--out", type=Path, default=None, help="CSV of predictions (default: print only)")
    a.add_argument("--device", default="cpu")
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
    if args.action == "adapt":
        adapt(args)
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


def adapt(args: argparse.Namespace) -> None:
    """Adapt to ``--support`` (class subfolders) and print/write the class of each ``--query`` image."""
    from fastmaml.config import from_dict
    from fastmaml.data.images import list_images, load_image_folder, load_images
    from fastmaml.experiments import fewshot as FS
    from fastmaml.train.checkpoint import RunDir, load_checkpoint

    ckpt_path = RunDir(args.run_dir).best_or_last()
    meta = load_checkpoint(ckpt_path)["meta"]
    cfg_dict = {k: v for k, v in meta.get("config", {}).items() if k != "experiment"}
    if not cfg_dict:
        raise DataError(f"{ckpt_path} carries no fewshot config; was it written by `fastmaml fewshot train`?")
    cfg = from_dict(FS.FewShotConfig, cfg_dict)
    cfg.train.device = args.device
    omniglot = cfg.data.dataset == "omniglot"
    channels = 1 if omniglot else 3
    # Omniglot models saw bright ink on black; user scans are usually dark ink on white.
    support = load_image_folder(args.support, cfg.data.image_size, channels, dtype=torch.float32, invert=omniglot)
    if len(support.classes) != cfg.n_way:
        raise DataError(
            f"{args.support} has {len(support.classes)} class folders ({', '.join(support.classes)}) but the model "
            f"was meta-trained for {cfg.n_way}-way tasks; give exactly {cfg.n_way} classes"
        )
    files = list_images(args.query)
    if not files:
        raise DataError(f"{args.query}: no images to classify")
    query, _ = load_images(files, cfg.data.image_size, channels, dtype=torch.float32, invert=omniglot)
    shape = (len(support.classes), 20, cfg.data.image_size, cfg.data.image_size) if omniglot else (
        len(support.classes), 20, 3, cfg.data.image_size, cfg.data.image_size)
    learner = FS.load_learner(cfg, args.run_dir, shape)
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
