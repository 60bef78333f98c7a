"""Checkpoints: tensors in safetensors (never pickle), everything else as JSON metadata.

A checkpoint holds the meta-learner's state dict (model + learned inner rates), the
optimizer's state, the iteration and the run's config. Files are written to a
temporary name and moved into place with ``os.replace``, so a crash mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import safetensors
from safetensors import safe_open
from safetensors.torch import load_file

from fastmaml.errors import CheckpointError
from fastmaml.fileio import atomic_save_safetensors

FORMAT = "fastmaml-checkpoint-v1"
# The error class was renamed across safetensors releases; catch whichever this one has.
_SafetensorError = getattr(safetensors, "SafetensorError", RuntimeError)


def save_checkpoint(
    path: str | Path,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Atomically save ``model_state`` (+ optimizer state) with JSON-serializable ``meta``."""
    path = Path(path)
    tensors = {f"model/{k}": v.detach().contiguous().cpu() for k, v in model_state.items()}
    opt_meta = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, state in sd["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"optim/{idx}/{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(idx), {})[key] = value
        opt_meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    header = {"format": FORMAT, "meta": json.dumps(meta or {}), "optimizer": json.dumps(opt_meta)}
    atomic_save_safetensors(path, tensors, header)


def _read_header(path: Path) -> dict[str, str]:
    """The safetensors header of a fastmaml checkpoint; CheckpointError for a missing, corrupt or foreign file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the run folder or start without --resume")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (_SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _corrupt(path, e) from e
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a fastmaml checkpoint (format={header.get('format')!r}, "
            f"expected {FORMAT!r}); point to a checkpoint written by fastmaml"
        )
    return header


def _corrupt(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is truncated or corrupt ({e}); delete it to start over, or resume from another "
        "checkpoint (training writes atomically, so an earlier one in the run folder is intact)"
    )


def _json_field(header: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(header[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has a damaged header ({e}); it cannot be resumed") from e


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata (iteration, best score, config, ...) from its header alone, without its tensors.

    Raises :class:`CheckpointError` as :func:`load_checkpoint` does.
    """
    path = Path(path)
    return _json_field(_read_header(path), "meta", path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint: ``{"model": state_dict, "optimizer": state_dict | None, "meta": dict}``.

    Raises :class:`CheckpointError` for a missing, truncated, corrupt or foreign file.
    """
    path = Path(path)
    header = _read_header(path)
    meta = _json_field(header, "meta", path)
    opt_meta = _json_field(header, "optimizer", path)
    try:
        tensors = load_file(str(path), device=str(map_location))
    except (_SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _corrupt(path, e) from e
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    optimizer = None
    if opt_meta is not None:
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim/"):
                _, idx, key = k.split("/", 2)
                state.setdefault(int(idx), {})[key] = v
        for idx, scalars in opt_meta["scalars"].items():
            state.setdefault(int(idx), {}).update(scalars)
        optimizer = {"state": state, "param_groups": opt_meta["param_groups"]}
    return {"model": model, "optimizer": optimizer, "meta": meta}


def load_state_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``module.load_state_dict(state)`` with an error that says which checkpoint does not fit."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model (was it trained with another config?): {e}"
        ) from e


class RunDir:
    """The layout of a training run folder, in one place for every experiment.

    ``config.json``, ``metrics.jsonl`` (one JSON line per logged iteration), and
    ``checkpoints/last.safetensors`` (resume point) / ``checkpoints/best.safetensors`` (best
    validation score), each with a JSON sidecar.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.safetensors"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    def best_or_last(self) -> Path:
        """The best checkpoint where the run validated, else the last one."""
        return self.best if self.best.exists() else self.last

    def checkpoint(self, which: str = "last") -> Path:
        """``"last"``, or ``"best"`` (falling back to last where the run did not validate)."""
        return self.best_or_last() if which == "best" else self.last


def load_run_into(module: torch.nn.Module, run_dir: str | Path, which: str = "last") -> torch.nn.Module:
    """Load a run folder's ``last`` (or ``best``, falling back to last) checkpoint into ``module``; returns it."""
    layout = RunDir(run_dir)
    path = layout.checkpoint(which)
    load_state_into(module, load_checkpoint(path)["model"], path)
    return module
