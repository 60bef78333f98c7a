"""Every cache key of the IDS comparison, in one place.

* :func:`data_key`: the prepared data (``data/data-<key>.safetensors``): source(s) + features;
* :func:`run_identity`: a training run (stored in its checkpoints; another identity in the same
  folder is refused, raising ``train.iterations`` continues the run);
* :func:`eval_key`: a fold's evaluation (``evals/<fold>.json`` is reused while its key matches).

Config keys added after results were cached enter a key only when set off their default, so
earlier caches stay valid: when adding a config key, add it to :data:`_LATER_DEFAULTS` (source),
:data:`_LATER_TRAIN_DEFAULTS` (the training loop), :func:`feature_key` (features) or :data:`_NO_EFFECT` (what
cannot change a result). A setting
added to a source's settings block (``source.masquerade``, ...), or a new block, needs nothing:
it enters the key as ``<block>.<key>`` only when off its default.

The source enters the keys in its flat form from before the settings blocks
(``masquerade_occurrences``, not ``masquerade: {occurrences}``; :func:`flat_source`), so the
blocks changed no key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from fastmaml.apps.ids.config import FeatureConfig, IdsConfig, SourceConfig
from fastmaml.apps.ids.registry import TRAFFIC, source_kind
from fastmaml.config import to_dict

# Keys added later, left out of cache keys while at their defaults (so earlier runs stay valid);
# where the data live (data_root, cic_dir, daga_dir) never changes what is read from them. Flat names, as the
# source enters the keys (flat_source).
_LATER_DEFAULTS = {"split": "occurrences", "occurrence_gap_s": 0.05, "min_occurrences": 2, "skip_malformed": False,
                   "bad_id": "error", "masquerade_occurrences": 20, "masquerade_duration_s": 2.0,
                   "masquerade_seed": 0, "masquerade_targets": "partnered", "eth_camera": True}
_LOCATION_KEYS = ("data_root", "cic_dir", "daga_dir")
# What cannot change an evaluation (IDS training has no validation, so train.patience does nothing here).
_NO_EFFECT = ("progress", "threads", "device", "checkpoint_every", "log_every", "patience")
# Training-loop keys added later, left out of evaluation keys while at their defaults.
_LATER_TRAIN_DEFAULTS = {"tune_batching": False, "compile_dynamic_shots": False}


def _hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# The signal columns' revision: bumped when a code change alters what they hold for an unchanged config, so that data
# prepared before it (and the runs trained and folds evaluated on that data) are not reused from an --out folder.
# 1 (not in the key): up to the fourteenth session; 2: copies judged past the clean range, partners fitted on
# several captures checked capture by capture (can/signals.py, 2026-12-07); 3: that check holds out drives, not
# files (captures of one drive joined by features.drive_index; 2026-12-07, sixteenth session).
SIGNALS_REVISION = 3
# The CAN frame columns' revision (every CAN source, signal columns on or off), as SIGNALS_REVISION: 1 (not in the key)
# until 2026-12-08; 2: byte changes judged against an ID's own clean scale only from can.features.MIN_SCALE_FRAMES
# clean frames on (eighteenth session).
CAN_FRAMES_REVISION = 2


def feature_key(feat: FeatureConfig, source_kind: str = "") -> dict[str, Any]:
    """The features config as it enters cache keys (``signals`` / ``dbc`` only when on, ``byte_order`` only off
    ``big``, so earlier runs stay valid; with signals on, :data:`SIGNALS_REVISION` from 2 on; for a CAN source,
    :data:`CAN_FRAMES_REVISION` from 2 on).

    A DBC enters with a hash of its contents: an edited file gives other signals.
    """
    d = to_dict(feat)
    if CAN_FRAMES_REVISION > 1 and source_kind in TRAFFIC["can"].sources:
        d["can_frames_revision"] = CAN_FRAMES_REVISION
    if d.get("identity", True):
        d.pop("identity", None)
    if not d.get("signals"):
        d.pop("signals", None)
    elif SIGNALS_REVISION > 1:
        d["signals_revision"] = SIGNALS_REVISION
    # How signals are read shapes the data only where signals are inferred (the features', or a masquerade source's
    # targets) and no DBC gives them; "big", the reading before little-endian signals, keeps earlier keys.
    reads_signals = (feat.signals or source_kind == "masquerade") and not feat.dbc
    if d.get("byte_order", "big") == "big" or not reads_signals:
        d.pop("byte_order", None)
    if not d.get("dbc"):
        d.pop("dbc", None)
    elif Path(feat.dbc).expanduser().is_file():
        d["dbc_sha256"] = hashlib.sha256(Path(feat.dbc).expanduser().read_bytes()).hexdigest()
    return d


def _blocks(src: SourceConfig) -> list[str]:
    """The names of the source's settings blocks (``sim``, ``masquerade``, ...): its dataclass-valued fields."""
    return [f.name for f in dataclasses.fields(src) if dataclasses.is_dataclass(getattr(src, f.name))]


def flat_source(src: SourceConfig) -> dict[str, Any]:
    """The source config in its flat form from before the settings blocks, as the cache keys hash it.

    Each block setting under its old flat name (:data:`SourceConfig.RENAMED_KEYS` backwards:
    ``masquerade.occurrences`` -> ``masquerade_occurrences``); a block setting without one (added
    since) as ``<block>.<key>``, and only when off its default.
    """
    d = to_dict(src)
    blocks = {b: d.pop(b) for b in _blocks(src)}
    for old, new in SourceConfig.RENAMED_KEYS.items():
        block, key = new.split(".")
        d[old] = blocks[block].pop(key)
    for b, rest in blocks.items():
        defaults = to_dict(type(getattr(src, b))())
        d.update({f"{b}.{k}": v for k, v in rest.items() if v != defaults[k]})
    return d


def source_key(src: SourceConfig) -> dict[str, Any]:
    """The source config as it enters cache keys: what shapes the data, not where it lies.

    Settings only other traffic kinds' sources read (their ``source_blocks``) are left out too,
    so adding them did not invalidate earlier runs of this kind.
    """
    own, _ = source_kind(src.kind)
    d = flat_source(src)
    others = {b for t in TRAFFIC.values() if t is not own for b in t.source_blocks}
    theirs = [old for old, new in SourceConfig.RENAMED_KEYS.items() if new.split(".")[0] in others]
    for k in theirs + [k for k in d if "." in k and k.split(".")[0] in others]:
        d.pop(k, None)
    for k, default in _LATER_DEFAULTS.items():
        if d.get(k) == default:
            d.pop(k, None)
    for k in _LOCATION_KEYS:
        d.pop(k, None)
    for c in d.get("captures", []):
        for k, default in (("attack", ""), ("columns", {}), ("label_column", 1)):
            if c.get(k) == default:
                c.pop(k, None)
    return d


def data_key(cfg: IdsConfig) -> str:
    """Hash of everything that shapes the prepared data (source(s) + features)."""
    d = {"source": source_key(cfg.source), "features": feature_key(cfg.features, cfg.source.kind), "v": 1}
    if cfg.train_source is not None:
        d["train_source"] = source_key(cfg.train_source)
    return _hash(d)


def run_identity(cfg: IdsConfig, method: str, known: Sequence[str], seed: int, dkey: str) -> dict[str, Any]:
    """What a training run depends on (iterations excluded: raising them continues a run).

    ``dkey``: :func:`data_key`. Stored in the run's checkpoints, compared as it is (not hashed).
    """
    t = to_dict(cfg.train)
    return {"method": method, "known": sorted(known), "seed": seed, "data": dkey, "model": to_dict(cfg.model),
            "maml": to_dict(cfg.maml), "train_shots": cfg.train_shots, "train_query": cfg.train_query,
            "train": {k: t[k] for k in ("meta_batch_size", "meta_lr", "grad_clip")}}


def eval_key(cfg: IdsConfig, known: Sequence[str], holdout: Sequence[str], dkey: str) -> str:
    """Hash of everything a fold's evaluation depends on; ``dkey``: :func:`data_key`."""
    c = to_dict(cfg)
    c["source"] = source_key(cfg.source)
    c["features"] = feature_key(cfg.features, cfg.source.kind)
    if cfg.train_source is not None:
        c["train_source"] = source_key(cfg.train_source)
    for k in _NO_EFFECT:
        c["train"].pop(k, None)
    for k, default in _LATER_TRAIN_DEFAULTS.items():
        if c["train"].get(k) == default:
            c["train"].pop(k, None)
    if not c["eval"].get("evidence_reference"):  # off (the default): the key evaluations had before it existed
        c["eval"].pop("evidence_reference", None)
    if not c["eval"].get("evidence_per_key"):  # off: the judgement from before per-ID references, under its old key
        c["eval"].pop("evidence_per_key", None)
    if not c["eval"].get("evidence_key_scale"):  # off (the default): the key from before per-ID thresholds
        c["eval"].pop("evidence_key_scale", None)
    if not c["eval"].get("evidence_benign_per_id"):  # off: the key from before it existed (benign drawn by frame)
        c["eval"].pop("evidence_benign_per_id", None)
    return _hash({"cfg": c, "known": sorted(known), "holdout": list(holdout), "data": dkey})
