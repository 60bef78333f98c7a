"""Traffic sources by name: ``source.kind`` -> the function that prepares its task families.

Adding a data source is one small module with a ``prepare(src, feat, log, workdir) -> IdsData``
function and one line in :data:`SOURCES`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

from fastmaml.apps.ids.can import source as can_source
from fastmaml.apps.ids.config import FeatureConfig, IdsConfig, SourceConfig, source_key
from fastmaml.apps.ids.ethernet import source as eth_source
from fastmaml.apps.ids.families import IdsData, drop_features, load_data, save_data
from fastmaml.apps.ids import synthetic
from fastmaml.config import to_dict
from fastmaml.errors import ConfigError


def data_key(cfg: IdsConfig) -> str:
    """Hash of everything that shapes the prepared data (source + features)."""
    blob = json.dumps({"source": source_key(cfg.source), "features": to_dict(cfg.features), "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# kind -> prepare(src, feat, log, workdir) -> IdsData
Prepare = Callable[[SourceConfig, FeatureConfig, Callable[[str], None], "Path | None"], IdsData]
SOURCES: dict[str, Prepare] = {
    "cic": can_source.prepare_cic,
    "sim": can_source.prepare_sim,
    "captures": can_source.prepare_captures,
    "daga": can_source.prepare_daga,
    "eth_sim": eth_source.prepare_eth,
    "eth_captures": eth_source.prepare_eth,
    "synthetic": synthetic.prepare_synthetic,
}


def prepare_data(cfg: IdsConfig, cache_dir: Path | None = None, log: Callable[[str], None] | None = None) -> IdsData:
    """The task families of ``cfg.source`` (read from ``cache_dir`` when prepared before)."""
    log = log or (lambda m: print(f"[ids] {m}", file=sys.stderr))
    path = Path(cache_dir) / f"data-{data_key(cfg)}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        return load_data(path)
    prepare = SOURCES.get(cfg.source.kind)
    if prepare is None:
        raise ConfigError(f"source.kind {cfg.source.kind!r} unknown; use one of {', '.join(SOURCES)}")
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    data = prepare(cfg.source, cfg.features, log, Path(cache_dir) if cache_dir is not None else None)
    drop_features(data, cfg.features.drop)
    if path is not None:
        save_data(data, path)
    return data
