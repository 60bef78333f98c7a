"""The few-shot classification experiment end to end (tiny budgets), and adapting to user images."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastmaml.cli import PRESETS
from fastmaml.config import load_config
from fastmaml.errors import ConfigError, DataError
from fastmaml.experiments import fewshot as FS

ROOT = Path(__file__).resolve().parents[1]


def blob_pools(n_classes=12, per_class=20, size=28, seed=0):
    """Synthetic Omniglot-shaped pools: each class is a bright square at its own place, plus noise."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 40, (n_classes, per_class, size, size), generator=g, dtype=torch.uint8)
    for c in range(n_classes):
        r, col = divmod(c, 4)
        images[c, :, 2 + 6 * r: 8 + 6 * r, 2 + 6 * col: 8 + 6 * col] = 255
    return {"train": images[:8], "val": images[8:], "test": images[4:9]}, images


def tiny_cfg(**over):
    overrides = ["train.iterations=30", "train.validate_every=15", "train.checkpoint_every=15", "train.progress=false",
                 "eval.episodes=20", "eval.val_episodes=10", "eval.batch=10", "train.meta_batch_size=4"]
    overrides += [f"{k}={v}" for k, v in over.items()]
    return load_config(FS.FewShotConfig, PRESETS / "fewshot_omniglot_5w1s.yaml", overrides)


def test_train_keeps_best_checkpoint_and_evaluates(tmp_path):
    pools, _ = blob_pools()
    cfg = tiny_cfg()
    FS.train(cfg, tmp_path, pools=pools)
    assert (tmp_path / "checkpoints" / "best.safetensors").exists()
    log = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in log if "val_accuracy" in r]
    assert [r["iteration"] for r in vals] == [15, 30]
    report = FS.evaluate(cfg, tmp_path, pools)
    acc = report["test_accuracy"]
    assert len(acc["mean"]) == 11 and all(c >= 0 for c in acc["ci95"])
    # Chance is 20%; the squares are trivially separable after adaptation.
    assert acc["mean"][cfg.maml.eval_inner_steps] > 0.6
    assert acc["mean"][cfg.maml.eval_inner_steps] > acc["mean"][0]
    assert (tmp_path / "results.md").read_text().count("±") >= 4
    assert (tmp_path / "accuracy.png").stat().st_size > 1000


def test_safe_steps_are_reported_beside_the_paper_protocol(tmp_path):
    pools, _ = blob_pools()
    cfg = tiny_cfg(**{"train.iterations": 15, "eval.safe_backtracks": 6})
    FS.train(cfg, tmp_path, pools=pools)
    # A step size far too large at test time: plain steps wreck some episodes, safe ones cannot raise
    # the support loss, so they never fall below the unadapted network by much and beat plain steps.
    cfg.maml.inner_lr = 50.0
    report = FS.evaluate(cfg, tmp_path, pools)
    plain, safe = report["test_accuracy"]["mean"], report["safe_steps"]["test_accuracy"]["mean"]
    assert plain[0] == safe[0]  # same episodes, same unadapted network
    assert safe[-1] > plain[-1] + 0.05
    assert report["safe_steps"]["worse_than_step1_at_end"] <= report["test_spread"]["worse_than_step1_at_end"]
    text = (tmp_path / "results.md").read_text()
    assert "safe steps (≤ 6 halvings)" in text and "Single episodes" in text


def test_first_order_and_nonconv_presets_train(tmp_path):
    pools, _ = blob_pools()
    for i, over in enumerate(({"maml.first_order": "true"}, {"model.kind": "nonconv"})):
        cfg = tiny_cfg(**over, **{"train.iterations": 4, "train.validate_every": 0})
        summary = FS.train(cfg, tmp_path / str(i), pools=pools)
        assert summary["iterations"] == 4


def test_fixed_test_episodes_are_reproducible():
    pools, _ = blob_pools()
    cfg = tiny_cfg()
    a = FS.fixed_episodes(cfg, pools["test"], 7, seed=5, device="cpu")
    b = FS.fixed_episodes(cfg, pools["test"], 7, seed=5, device="cpu")
    assert sum(x.num_tasks for x in a) == 7
    assert all(torch.equal(x.query_x, y.query_x) and torch.equal(x.support_y, y.support_y) for x, y in zip(a, b))


def test_too_few_classes_is_a_clear_error():
    pools, _ = blob_pools()
    cfg = tiny_cfg(n_way=20)
    with pytest.raises(DataError, match="20-way episodes need 20 classes"):
        FS.sampler(cfg, pools["test"], 1)


def test_all_presets_load():
    names = sorted(p.name for p in PRESETS.glob("fewshot_*.yaml"))
    assert len(names) >= 12
    for name in names:
        cfg = load_config(FS.FewShotConfig, PRESETS / name)
        assert cfg.train.meta_lr == 1e-3 and cfg.eval.episodes == 600
        mamlpp = name.endswith("_mamlpp.yaml")
        if "mini" in name:
            assert cfg.maml.inner_steps == 5 and cfg.maml.eval_inner_steps == (5 if mamlpp else 10)
            assert cfg.q_query == 15 and cfg.model.hidden == 32 and cfg.train.grad_clip == 10
        if "20w" in name:
            assert cfg.maml.inner_lr == 0.1 and cfg.train.meta_batch_size == 16
        assert cfg.maml.first_order == name.endswith("_fo.yaml")
        assert (cfg.maml.inner_params is not None) == name.endswith("_anil.yaml")
        assert cfg.maml.per_step_bn == mamlpp and (cfg.train.lr_schedule == "cosine") == mamlpp
        assert (cfg.maml.step_size == "per_layer_step") == mamlpp
        variant = name.removesuffix(".yaml").rsplit("_", 1)[-1]
        assert FS.method_name(cfg.maml) == {"mamlpp": "MAML++", "anil": "ANIL", "fo": "FOMAML"}.get(variant, "MAML")
    # Every Table 1 row has its MAML, FOMAML, MAML++ and ANIL preset.
    for row in ("omniglot_5w1s", "omniglot_5w5s", "omniglot_20w1s", "omniglot_20w5s", "mini_5w1s", "mini_5w5s"):
        for variant in ("", "_fo", "_mamlpp", "_anil"):
            assert f"fewshot_{row}{variant}.yaml" in names


def test_preset_extends_a_sibling_and_rejects_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("n_way: 7\nmaml:\n  inner_steps: 3\n  inner_lr: 0.2\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nmaml:\n  inner_steps: 4\n")
    cfg = load_config(FS.FewShotConfig, tmp_path / "child.yaml", ["maml.inner_lr=0.3"])
    assert (cfg.n_way, cfg.maml.inner_steps, cfg.maml.inner_lr) == (7, 4, 0.3)  # base < child < overrides
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(FS.FewShotConfig, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: ../elsewhere.yaml\n")
    with pytest.raises(ConfigError, match="same folder"):
        load_config(FS.FewShotConfig, tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(FS.FewShotConfig, tmp_path / "d.yaml")


def test_anil_preset_adapts_only_the_head(tmp_path):
    pools, _ = blob_pools()
    cfg = load_config(FS.FewShotConfig, PRESETS / "fewshot_omniglot_5w1s_anil.yaml",
                      ["train.iterations=20", "train.validate_every=0", "train.progress=false", "train.meta_batch_size=4"])
    learner = FS.build_learner(cfg, tuple(pools["train"].shape))
    assert learner.inner_names == ["head.weight", "head.bias"]
    batch = FS.sampler(cfg, pools["train"], 1).sample(4, torch.Generator().manual_seed(0))
    before = {k: v.detach().clone() for k, v in learner.params().items()}
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0], steps=3)
    changed = sorted(k for k in adapted if not torch.equal(adapted[k], before[k]))
    assert changed == ["head.bias", "head.weight"]
    # The body is still meta-learned (outer loop), only not adapted (inner loop).
    FS.train(cfg, tmp_path, pools=pools)
    trained = FS.load_learner(cfg, tmp_path, tuple(pools["train"].shape), which="last").params()
    body = [k for k in before if not k.startswith("head.")]
    assert body and any(not torch.equal(trained[k], before[k]) for k in body)


def test_adapt_command_on_user_images(tmp_path):
    """Train briefly, then `fastmaml fewshot adapt` on a folder of PNG/JPEG files of other sizes."""
    pools, images = blob_pools(seed=1)
    cfg = tiny_cfg()
    FS.train(cfg, tmp_path / "run", pools=pools)
    support, query = tmp_path / "support", tmp_path / "query"
    truth = {}
    for c in range(5):
        (support / f"class_{c}").mkdir(parents=True)
        # Users scan dark ink on white: the command inverts Omniglot-style inputs back.
        Image.fromarray(255 - images[c, 0].numpy()).resize((56, 56)).save(support / f"class_{c}" / "a.png")
        for j in range(1, 4):
            name = f"q{c}_{j}.jpg"
            query.mkdir(exist_ok=True)
            Image.fromarray(255 - images[c, j].numpy()).convert("RGB").resize((40, 40)).save(query / name, quality=95)
            truth[name] = f"class_{c}"
    out = tmp_path / "pred.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "fastmaml.cli", "fewshot", "adapt", "--run-dir", str(tmp_path / "run"),
                        "--support", str(support), "--query", str(query), "--steps", "5", "--out", str(out)],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(truth)
    correct = sum(row["predicted_class"] == truth[Path(row["image"]).name] for row in rows)
    assert correct / len(rows) >= 0.8
    assert all(0.0 <= float(row["probability"]) <= 1.0 for row in rows)

    (support / "class_5").mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(support / "class_5" / "x.png")
    r = subprocess.run([sys.executable, "-m", "fastmaml.cli", "fewshot", "adapt", "--run-dir", str(tmp_path / "run"),
                        "--support", str(support), "--query", str(query)], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "6 class folders" in r.stderr and "5-way" in r.stderr


def test_real_omniglot_pipeline(shared_data, tmp_path):
    """The real Omniglot data through the paper split, a few iterations, and the test protocol."""
    cfg = tiny_cfg(**{"data.root": str(shared_data / "omniglot"), "data.cache_dir": str(tmp_path / "cache"),
                      "train.iterations": 2, "train.validate_every": 0})
    pools = FS.load_pools(cfg)
    assert pools["train"].shape == (4400, 20, 28, 28) and pools["test"].shape == (1692, 20, 28, 28)
    FS.train(cfg, tmp_path / "run", pools=pools)
    report = FS.evaluate(cfg, tmp_path / "run", pools)
    assert 0.0 < report["test_accuracy"]["mean"][0] < 0.5  # unadapted: near chance (20%)
