"""The weights zoo (weights/): shipped weights load only when they match their card; test, adapt and lake-runs use them."""

import csv
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from fastmaml.errors import DataError
from fastmaml.experiments.zoo import ZOO, load_weights

ROOT = Path(__file__).resolve().parents[1]
NAME = "omniglot_5w1s_maml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastmaml.cli", "fewshot", *args], env=ENV, capture_output=True,
                          text=True, timeout=600)


def draw_shape(kind: int, path: Path, rng: random.Random) -> None:
    """A 105x105 Omniglot-like drawing (dark strokes on white) of one of five shapes, jittered per image."""
    im = Image.new("L", (105, 105), 255)
    d = ImageDraw.Draw(im)
    s, x, y = rng.randint(26, 34), 52 + rng.randint(-6, 6), 52 + rng.randint(-6, 6)
    w = 4
    if kind == 0:
        d.ellipse((x - s, y - s, x + s, y + s), outline=0, width=w)
    elif kind == 1:
        d.rectangle((x - s, y - s, x + s, y + s), outline=0, width=w)
    elif kind == 2:
        d.line((x - s, y - s, x + s, y + s), fill=0, width=w)
        d.line((x - s, y + s, x + s, y - s), fill=0, width=w)
    elif kind == 3:
        d.line((x - s, y, x + s, y), fill=0, width=w)
    else:
        d.line((x, y - s, x, y + s), fill=0, width=w)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def test_shipped_weights_match_their_card_and_hold_parameters_only():
    w = load_weights(NAME)
    assert w.path == ZOO / f"{NAME}.safetensors" and w.path.stat().st_size < 1_000_000
    assert not any(k.startswith("optim") for k in w.state)  # no Adam moments: re-testing does not need them
    card = w.card
    assert card["preset"] == "omniglot_5w1s" and card["iterations"] == 60_000 and card["best_iteration"] == 54_000
    assert w.shipped() == "98.43 ± 0.19% (600 episodes, 3 steps)"
    assert card["train_commands"] and card["test_command"].startswith("fastmaml fewshot evaluate")
    assert w.config().n_way == 5 and w.config().model.hidden == 64


@pytest.fixture
def copy_of_zoo_entry(tmp_path) -> Path:
    for suffix in (".safetensors", ".json"):
        shutil.copy(ZOO / f"{NAME}{suffix}", tmp_path / f"{NAME}{suffix}")
    return tmp_path / f"{NAME}.safetensors"


def test_truncated_altered_or_missing_weights_are_clear_errors(copy_of_zoo_entry):
    path = copy_of_zoo_entry
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"is truncated or damaged: \d+ bytes, its card says \d+; copy it again"):
        load_weights(path)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(DataError, match="does not match its card .*sha256"):
        load_weights(path)
    path.unlink()
    with pytest.raises(DataError, match=f"weights file .*{NAME}.safetensors not found"):
        load_weights(path)
    path.write_bytes(data)
    load_weights(path)  # intact again
    path.with_suffix(".json").unlink()
    with pytest.raises(DataError, match="ship with a .json card beside them"):
        load_weights(path)
    with pytest.raises(DataError, match="no weights named 'nope' in the zoo .*it has: omniglot_5w1s_maml"):
        load_weights("nope")


def test_test_command_reports_a_damaged_file_and_exits_2(copy_of_zoo_entry):
    path = copy_of_zoo_entry
    path.write_bytes(path.read_bytes()[:1000])
    r = cli("test", "--weights", str(path), "eval.episodes=2")
    assert r.returncode == 2 and "truncated or damaged" in r.stderr and str(path) in r.stderr


def test_test_command_refuses_a_preset_that_builds_another_model():
    r = cli("test", "--weights", NAME, "--preset", "omniglot_20w1s")
    assert r.returncode == 2 and "trained with preset 'omniglot_5w1s'); use --preset omniglot_5w1s" in r.stderr


def test_retest_shipped_weights_on_real_omniglot(shared_data, tmp_path):
    """The shipped model on 20 of the paper's test episodes: far above chance (20%), near its 98.4%."""
    r = cli("test", "--weights", NAME, "--data-root", str(shared_data / "omniglot"), "eval.episodes=20",
            f"data.cache_dir={tmp_path / 'cache'}", "train.threads=1")
    assert r.returncode == 0, r.stderr
    m = re.search(r": ([\d.]+) ± ([\d.]+)% after 3 step\(s\) on 20 test episodes", r.stdout)
    assert m, r.stdout
    assert float(m.group(1)) >= 90.0
    assert "shipped: 98.43 ± 0.19% (600 episodes, 3 steps)" in r.stdout


def test_adapt_shipped_weights_to_drawn_shapes(tmp_path):
    """Five pen-drawn shapes, one example each: the shipped initialization adapts and classifies new drawings."""
    rng = random.Random(0)
    names = ["circle", "square", "cross", "hline", "vline"]
    truth = {}
    for c, name in enumerate(names):
        draw_shape(c, tmp_path / "support" / name / "a.png", rng)
        for j in range(3):
            draw_shape(c, tmp_path / "query" / f"{name}_{j}.png", rng)
            truth[f"{name}_{j}.png"] = name
    out = tmp_path / "pred.csv"
    r = cli("adapt", "--weights", NAME, "--support", str(tmp_path / "support"), "--query", str(tmp_path / "query"),
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 15
    correct = sum(row["predicted_class"] == truth[Path(row["image"]).name] for row in rows)
    assert correct >= 14, rows


def write_lake_run(run: Path, n_classes: int, rng: random.Random) -> None:
    """A run in the layout of Lake's all_runs.zip: training/classNN.png, test/itemNN.png, class_labels.txt."""
    order = list(range(n_classes))
    rng.shuffle(order)  # test item i shows class order[i]
    lines = []
    for i in range(n_classes):
        draw_shape(i % 5, run / "training" / f"class{i + 1:02d}.png", rng)
        draw_shape(order[i] % 5, run / "test" / f"item{i + 1:02d}.png", rng)
        lines.append(f"{run.name}/test/item{i + 1:02d}.png {run.name}/training/class{order[i] + 1:02d}.png")
    (run / "class_labels.txt").write_text("\n".join(lines) + "\n")


def test_lake_runs_on_generated_runs(tmp_path):
    rng = random.Random(1)
    for name in ("run01", "run02"):
        write_lake_run(tmp_path / "runs" / name, 5, rng)
    r = cli("lake-runs", str(tmp_path / "runs"), "--weights", NAME)
    assert r.returncode == 0, r.stderr
    assert re.search(r"run01: error [\d.]+% \(\d of 5\)", r.stdout) and "run02: error" in r.stdout
    m = re.search(r"mean error over 2 runs: ([\d.]+)%", r.stdout)
    assert m and float(m.group(1)) <= 10.0, r.stdout
    # Lake's official runs are 20-way: 5-way weights are refused with the reason.
    write_lake_run(tmp_path / "runs20" / "run01", 20, rng)
    r = cli("lake-runs", str(tmp_path / "runs20"), "--weights", NAME)
    assert r.returncode == 2 and "has 20 classes but the model was meta-trained for 5-way" in r.stderr


def test_every_shipped_entry_matches_its_card_and_its_preset():
    from fastmaml.experiments.zoo import zoo_names

    names = zoo_names()
    assert {"omniglot_5w1s_maml", "omniglot_5w5s_maml"} <= set(names)
    for name in names:
        w = load_weights(name)  # checks size and sha256 against the card
        card = w.card
        assert name.startswith(card["preset"]) and card["name"] == name
        assert 0.2 < card["test"]["accuracy"] <= 1.0 and card["test"]["episodes"] == 600
        assert card["best_iteration"] <= card["iterations"]
        cfg = w.config()
        assert f"{cfg.n_way}w{cfg.k_shot}s" in card["preset"]
