"""Traffic kinds by name, and through them the source kinds (``source.kind``).

:data:`TRAFFIC` is the one list of traffic kinds (:class:`~fastmaml.apps.ids.traffic.Traffic`);
each kind lists its own sources, so every source kind is named once, with the traffic it
carries. Config checks, the experiment, detectors, the report and the CLI all look kinds up
here. Adding a traffic kind: one module with its ``Traffic`` and one entry below. The
implementations import their source modules on use, so a CAN run never imports the Ethernet
stack (dpkt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from fastmaml.apps.ids.can.traffic import CAN
from fastmaml.apps.ids.config import IdsConfig, read_ids_config
from fastmaml.apps.ids.ethernet.traffic import ETHERNET
from fastmaml.apps.ids.results import CompareResult
from fastmaml.apps.ids.splits import FILE_SPLITS
from fastmaml.apps.ids.traffic import Source, Traffic
from fastmaml.errors import ConfigError, DataError

TRAFFIC: dict[str, Traffic] = {t.name: t for t in (CAN, ETHERNET)}


def source_kinds() -> dict[str, tuple[Traffic, Source]]:
    """Every ``source.kind``, with its traffic kind and its source, in registry order."""
    return {kind: (t, s) for t in TRAFFIC.values() for kind, s in t.sources.items()}


def source_kind(kind: str, key: str = "source") -> tuple[Traffic, Source]:
    """The traffic kind and source of ``source.kind``; ConfigError naming the valid kinds when unknown."""
    kinds = source_kinds()
    if kind not in kinds:
        raise ConfigError(f"{key}.kind {kind!r} unknown; use one of {', '.join(kinds)}")
    return kinds[kind]


def detector_traffic(name: str) -> Traffic:
    """The traffic kind a saved detector names; DataError when this version has no such kind."""
    if name not in TRAFFIC:
        raise DataError(f"detector traffic {name!r} unknown (expected one of {', '.join(map(repr, TRAFFIC))}); "
                        "re-save the detector")
    return TRAFFIC[name]


def report_traffic(report: CompareResult) -> Traffic:
    """The traffic kind of a comparison's results (results.json before traffic kinds: CAN)."""
    name = report.traffic if report.traffic is not None else CAN.name
    if name not in TRAFFIC:
        raise DataError(f"results of traffic {name!r}, which this version does not know ({', '.join(TRAFFIC)})")
    return TRAFFIC[name]


def check_sources(cfg: IdsConfig) -> None:
    """ConfigError for source kinds that do not exist or do not fit together (the part of
    :meth:`IdsConfig.validate` that needs the registry)."""
    sources = [("source", cfg.source)] + ([("train_source", cfg.train_source)] if cfg.train_source else [])
    own = {key: source_kind(src.kind, key)[0] for key, src in sources}
    if own.get("train_source", own["source"]) is not own["source"]:
        raise ConfigError(f"train_source and source must carry the same traffic (train_source.kind="
                          f"{cfg.train_source.kind}: {own['train_source'].description}, source.kind={cfg.source.kind}: "
                          f"{own['source'].description})")
    folders = [kind for kind, (_, s) in source_kinds().items() if s.file_splits]
    for key, src in sources:
        if src.split in FILE_SPLITS and src.kind not in folders:
            raise ConfigError(f"{key}.split={src.split} splits a folder of capture files "
                              f"({' or '.join(f'source.kind={k}' for k in folders)}); "
                              f"{key}.kind={src.kind} takes {key}.split=occurrences or time")
    # The default union rule (plausibility) is CAN's; a traffic without it leaves the union out. A name no traffic
    # knows is a typo.
    known_rules = {r for t in TRAFFIC.values() for r in t.rules}
    union = cfg.eval.evidence_union
    if union and union not in known_rules:
        raise ConfigError(f"eval.evidence_union {union!r} is not a rule baseline; choose one of {sorted(known_rules)} "
                          f"or '' for none")


def load_ids_config(preset: str | Path | None, overrides: Iterable[str] = ()) -> IdsConfig:
    """Defaults, then a preset (name like ``cic`` -> ``presets/ids_cic.yaml``, or a YAML path), then overrides;
    validated, source kinds included."""
    cfg = read_ids_config(preset, overrides)
    check_sources(cfg)
    return cfg
