"""Prepared data of a config's source(s): ``source.kind`` -> its traffic kind's source -> :class:`IdsData`.

The source kinds are listed once, by the traffic kinds that carry them
(:mod:`fastmaml.apps.ids.registry`); adding a data source is one ``prepare(src, feat, log,
workdir) -> IdsData`` function and one entry in its traffic kind's ``sources``. Prepared data
are cached by a hash of what shapes them.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable

from fastmaml.apps.ids.config import FeatureConfig, IdsConfig
from fastmaml.apps.ids.families import IdsData, drop_features, load_data, save_data
from fastmaml.apps.ids.keys import data_key
from fastmaml.apps.ids.registry import check_sources, source_kind
from fastmaml.apps.ids.traffic import Traffic
from fastmaml.errors import ConfigError


def prepare_data(cfg: IdsConfig, cache_dir: Path | None = None, log: Callable[[str], None] | None = None) -> IdsData:
    """The task families of ``cfg.source`` (read from ``cache_dir`` when prepared before).

    With ``cfg.train_source`` the families of both sources, the training source's named
    ``<kind>:<attack>``, and the test source's attacks as the default held-out fold.
    """
    log = log or (lambda m: print(f"[ids] {m}", file=sys.stderr))
    check_sources(cfg)
    if cfg.train_source is not None:
        return _cross_source(cfg, cache_dir, log)
    path = Path(cache_dir) / f"data-{data_key(cfg)}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        return load_data(path)
    traffic, source = source_kind(cfg.source.kind)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    data = source.prepare(cfg.source, cfg.features, log, Path(cache_dir) if cache_dir is not None else None)
    data.traffic = traffic.name  # the registry says which traffic a source carries, not the source itself
    drop_features(data, _dropped(cfg.features, traffic))
    if path is not None:
        save_data(data, path)
    return data


def _dropped(feat: FeatureConfig, traffic: Traffic) -> list[str]:
    """``features.drop`` plus, with ``features.identity: false``, the traffic's identity columns."""
    if feat.identity:
        return list(feat.drop)
    ident = traffic.identity_columns()
    if not ident:
        raise ConfigError(f"features.identity=false: {traffic.name} traffic defines no identity columns; "
                          f"list the columns to leave out in features.drop instead")
    return list(feat.drop) + [c for c in ident if c not in feat.drop]


def _cross_source(cfg: IdsConfig, cache_dir: Path | None, log: Callable[[str], None]) -> IdsData:
    test = prepare_data(dataclasses.replace(cfg, train_source=None), cache_dir, log)
    train = prepare_data(dataclasses.replace(cfg, source=cfg.train_source, train_source=None), cache_dir, log)
    if train.feature_names != test.feature_names or train.window != test.window:
        raise ConfigError(f"train_source and source give different samples ({train.feature_names}, window "
                          f"{train.window} vs {test.feature_names}, window {test.window}); use one features config")
    prefix = cfg.train_source.kind
    families = {f"{prefix}:{a}": dataclasses.replace(f, name=f"{prefix}:{a}") for a, f in train.families.items()}
    clash = set(families) & set(test.families)
    if clash:
        raise ConfigError(f"attack names {sorted(clash)} occur in both sources; rename them")
    families.update(test.families)
    stats = dict(test.stats, train_source={"source": train.source, "counts": train.stats.get("counts", {})})
    return IdsData(families, test.feature_names, test.window, test.feature_state,
                   f"{test.source}, meta-trained on {train.source}", stats, test.traffic, [list(test.families)],
                   test.streams)
