"""The weights zoo: each finished Table 1 row's meta-learned initialization, to re-test it or adapt it.

``weights/<name>.safetensors`` (in the repository, beside ``src/``) holds the meta-learner's parameters only:
re-testing and adapting need no optimizer state, which would triple the file. ``weights/<name>.json``, its
card, holds what rebuilds and judges it: the preset and full config, the test accuracy ± 95% CI, iterations,
training time, hardware, the commands that trained and tested it, and the sha256 of the safetensors file,
checked on every load so a truncated or altered file is refused instead of giving wrong accuracies.
Never pickle: safetensors cannot run code when loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastmaml.config import from_dict
from fastmaml.core.maml import MAML
from fastmaml.errors import CheckpointError, DataError
from fastmaml.fileio import atomic_save_safetensors, atomic_write_text
from fastmaml.train.checkpoint import RunDir, load_checkpoint, load_state_into

FORMAT = "fastmaml-weights-v1"
# src/fastmaml/experiments/zoo.py -> the repository root (the package is installed editable: scripts/install.sh).
ZOO = Path(__file__).resolve().parents[3] / "weights"


@dataclass
class Weights:
    """A zoo entry, checked against its card: ``state`` loads into ``build_learner(config())``."""

    path: Path
    card: dict[str, Any]
    state: dict[str, torch.Tensor]

    def config(self):
        from fastmaml.experiments.fewshot import FewShotConfig

        return from_dict(FewShotConfig, {k: v for k, v in self.card["config"].items() if k != "experiment"})

    def shipped(self) -> str:
        """The card's test figure, e.g. ``98.43 ± 0.19% (600 episodes, 3 steps)``."""
        t = self.card["test"]
        return f"{100 * t['accuracy']:.2f} ± {100 * t['ci95']:.2f}% ({t['episodes']} episodes, {t['inner_steps']} steps)"


def zoo_names(folder: Path = ZOO) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def resolve(name: str | Path, folder: Path = ZOO) -> Path:
    """A zoo name (``omniglot_5w1s_maml``) or a path to a ``.safetensors`` file -> the safetensors path."""
    p = Path(name)
    if p.suffix == ".safetensors":
        return p
    if (folder / f"{name}.json").is_file() or (folder / f"{name}.safetensors").is_file():
        return folder / f"{name}.safetensors"
    raise DataError(
        f"no weights named {str(name)!r} in the zoo {folder} (it has: {', '.join(zoo_names(folder)) or 'nothing'}); "
        "give one of those names, or a path to a .safetensors file with its .json card beside it"
    )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_weights(name: str | Path, folder: Path = ZOO) -> Weights:
    """Read a zoo entry; DataError naming the file and the fix when it is missing, truncated or altered."""
    path = resolve(name, folder)
    card_path = path.with_suffix(".json")
    restore = (f"restore it from the repository (git checkout -- {path.name}, run in its folder) or fetch it again"
               if path.parent == folder else "copy it again from where it came, or export it again")
    if not card_path.is_file():
        raise DataError(f"{card_path} not found: weights {path.name} ship with a .json card beside them; {restore}")
    try:
        card = json.loads(card_path.read_text())
        expected, size = card["sha256"], card["bytes"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{card_path} is damaged ({e}); {restore}") from e
    if not path.is_file():
        raise DataError(f"weights file {path} not found (its card {card_path.name} is there); {restore}")
    actual = path.stat().st_size
    if actual != size:
        raise DataError(f"weights file {path} is truncated or damaged: {actual} bytes, its card says {size}; {restore}")
    digest = sha256(path)
    if digest != expected:
        raise DataError(
            f"weights file {path} does not match its card {card_path.name}: sha256 {digest}, expected {expected} "
            f"(the file was altered or corrupted); {restore}"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            fmt = (f.metadata() or {}).get("format")
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' error class differs across releases; the checksum matched, so rare
        raise DataError(f"weights file {path} cannot be read ({e}); {restore}") from e
    if fmt != FORMAT:
        raise DataError(f"{path} is not a fastmaml weights file (format={fmt!r}, expected {FORMAT!r})")
    return Weights(path, card, state)


def load_learner_from(weights: Weights, cfg, pool_shape: tuple[int, ...]) -> MAML:
    """The meta-learner of ``cfg`` holding ``weights``; CheckpointError when the model config does not fit."""
    from fastmaml.experiments.fewshot import build_learner

    learner = build_learner(cfg, pool_shape)
    load_state_into(learner, weights.state, weights.path)
    return learner.to(cfg.train.device)


def export_weights(run_dir: Path, name: str, preset: str, train_commands: list[str], test_command: str,
                   folder: Path = ZOO, note: str = "") -> Path:
    """Write ``folder/<name>.safetensors`` + ``.json`` from a finished, tested run (its best checkpoint, results.json)."""
    layout = RunDir(run_dir)
    ckpt = load_checkpoint(layout.best)
    results_path = Path(run_dir) / "results.json"
    if not results_path.is_file():
        raise CheckpointError(f"{results_path} not found: test the run (fastmaml fewshot evaluate) before exporting it")
    results = json.loads(results_path.read_text())
    path = folder / f"{name}.safetensors"
    # Parameters only, as stored (float32): the optimizer moments are training state, not the model.
    atomic_save_safetensors(path, {k: v.contiguous() for k, v in ckpt["model"].items()}, {"format": FORMAT, "name": name})
    s, acc = results["reported_step"], results["test_accuracy"]
    card = {
        "name": name,
        "preset": preset,
        "dataset": results["dataset"],
        "setting": results["setting"],
        "method": results["method"],
        "test": {"accuracy": acc["mean"][s], "ci95": acc["ci95"][s], "episodes": results["config"]["eval"]["episodes"],
                 "inner_steps": s, "episode_seed": results["config"]["eval"]["seed"]},
        "iterations": results["iterations_trained"],
        "best_iteration": ckpt["meta"].get("best_iteration"),
        "best_validation_accuracy": ckpt["meta"].get("best"),
        "train_minutes": round(results["train_seconds"] / 60, 1),
        "hardware": results["environment"],
        "train_commands": train_commands,
        "test_command": test_command,
        "retest_command": f"fastmaml fewshot test --weights {name} --data-root DATA/omniglot",
        "source": f"{Path(run_dir).as_posix()}/checkpoints/best.safetensors",
        "note": note,
        "config": {k: v for k, v in ckpt["meta"]["config"].items()},
        "bytes": path.stat().st_size,
        "sha256": sha256(path),
    }
    atomic_write_text(path.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    return path
