"""Task families: what every traffic source hands the experiment (source-independent).

A traffic source (CAN captures, the CAN simulator, automotive-Ethernet pcaps, ...) reads its
captures, computes features and builds one :class:`TaskFamily` per attack type, "benign vs
this attack", with train and test parts and the rule baselines' verdicts on every sample.
:class:`IdsData` carries them to the experiment, which knows nothing of the source. Prepared
data is cached as one safetensors file with a JSON header (no pickle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from fastmaml.apps.ids.samples import BENIGN, SampleSet
from fastmaml.errors import ConfigError, DataError
from fastmaml.fileio import atomic_write_bytes


@dataclass
class TaskFamily:
    """Benign vs one attack type: the train part feeds meta-training, the test part meta-testing.

    ``train``/``test`` have ``class_names == ["benign", name]``. ``*_rules`` map a rule name to
    bool ``[len(part)]`` (True = the rule flags the sample as an attack).
    """

    name: str
    train: SampleSet
    test: SampleSet
    train_rules: dict[str, torch.Tensor] = field(default_factory=dict)
    test_rules: dict[str, torch.Tensor] = field(default_factory=dict)

    def part(self, split: str) -> tuple[SampleSet, dict[str, torch.Tensor]]:
        return (self.train, self.train_rules) if split == "train" else (self.test, self.test_rules)


FIT_STREAM = "benign_fit"  # benign training-period traffic in order: detection thresholds are calibrated on it


@dataclass
class Stream:
    """A test-period capture in capture order, for operational metrics (alerts per hour, delays).

    ``x``: features ``[N, F]`` (frame samples); ``attack``: bool ``[N]``; ``clock``: seconds (or frame
    index where the capture has no timestamps, ``clock_unit_s`` then the mean frame interval);
    ``key``: the stream each sample belongs to for per-stream alert rules (the CAN ID).
    """

    x: torch.Tensor
    attack: torch.Tensor
    clock: torch.Tensor
    key: torch.Tensor
    clock_unit_s: float = 1.0
    source: str = ""
    rules: dict[str, torch.Tensor] = field(default_factory=dict)  # rule -> bool [N] verdicts on the stream


@dataclass
class IdsData:
    """Everything the comparison needs from a traffic source."""

    families: dict[str, TaskFamily]
    feature_names: list[str]
    window: int | None
    feature_state: dict[str, Any] | None = None  # JSON form of the fitted feature state (for detectors)
    source: str = ""
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. unseen-ID fractions per attack
    traffic: str = "can"  # its traffic kind (registry name: "can", "eth"), stamped by sources.prepare_data
    default_holdout: list[list[str]] | None = None  # the source's default folds (None: leave-one-attack-out)
    # Test-period captures in order, per attack (its capture) and "benign" (clean traffic), where the
    # source has them: the operational evaluation streams detectors over them.
    streams: dict[str, Stream] = field(default_factory=dict)

    @property
    def attacks(self) -> list[str]:
        return list(self.families)

    def check_attacks(self, names: Iterable[str], what: str = "attack") -> list[str]:
        """``names`` as a list; DataError naming the valid attacks when one is unknown."""
        names = list(names)
        bad = [n for n in names if n not in self.families]
        if bad:
            raise DataError(f"unknown {what} {bad} for source {self.source!r}; valid attacks: {self.attacks}")
        return names


def families_from_sample_sets(
    train: SampleSet,
    test: SampleSet,
    train_rules: dict[str, torch.Tensor] | None = None,
    test_rules: dict[str, torch.Tensor] | None = None,
    attacks: Sequence[str] | None = None,
) -> dict[str, TaskFamily]:
    """Task families from multi-class train/test SampleSets (benign + attacks), e.g. from another traffic source.

    Rule predictions (bool ``[N]`` aligned with the sets) are split along with the samples.
    """
    out = {}
    for name in attacks or [c for c in train.class_names[1:]]:
        parts = []
        for s, rules in ((train, train_rules or {}), (test, test_rules or {})):
            if name not in s.class_names:
                raise DataError(f"attack {name!r} missing from {s.source or 'a SampleSet'}; classes: {s.class_names}")
            code = s.class_names.index(name)
            mask = (s.labels == 0) | (s.labels == code)
            sub = SampleSet(s.features[mask], (s.labels[mask] == code).long(), [BENIGN, name],
                            list(s.feature_names), s.source)
            parts.append((sub, {r: torch.as_tensor(v, dtype=torch.bool)[mask] for r, v in rules.items()}))
        out[name] = TaskFamily(name, parts[0][0], parts[1][0], parts[0][1], parts[1][1])
    return out


def cap_indices(labels: torch.Tensor, n_classes: int, max_benign: int, max_attack: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most ``max_benign`` benign (label 0) and ``max_attack`` samples of each other class."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(n_classes):
        idx = (labels == c).nonzero().squeeze(1)
        cap = max_benign if c == 0 else max_attack
        if idx.numel() > cap:
            idx = idx[torch.randperm(idx.numel(), generator=g)[:cap]]
        keep.append(idx)
    return torch.cat(keep).sort().values


def cap(s: SampleSet, max_benign: int, max_attack: int, seed: int) -> SampleSet:
    """At most ``max_benign`` benign and ``max_attack`` samples of each attack (random, seeded)."""
    return s.select(cap_indices(s.labels, len(s.class_names), max_benign, max_attack, seed))


def rule_predictions(s: SampleSet, rules: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {name: rule.predict_samples(s).to(torch.bool) for name, rule in rules.items()}


def unseen_id_fraction(s: SampleSet) -> dict[str, float]:
    """Fraction of benign / attack samples with a CAN ID never seen in benign training traffic."""
    if "id_known" not in s.feature_names:
        return {}
    col = s.features[..., s.feature_names.index("id_known")] < 0.5
    unseen = col.any(dim=1) if col.dim() == 2 else col
    out = {}
    for c, name in enumerate(("benign", "attack")):
        m = s.labels == c
        out[name] = float(unseen[m].float().mean()) if bool(m.any()) else float("nan")
    return out


def drop_features(data: IdsData, drop: Sequence[str]) -> None:
    """Leave the ``features.drop`` columns out of every sample (ablations), in place."""
    if not drop:
        return
    names = list(data.feature_names)
    bad = [d for d in drop if d not in names]
    if bad:
        raise ConfigError(f"features.drop {bad} are not feature names; valid: {names}")
    keep = [i for i, n in enumerate(names) if n not in drop]
    names = [names[i] for i in keep]
    for f in data.families.values():
        for part in ("train", "test"):
            s = getattr(f, part)
            setattr(f, part, SampleSet(s.features[..., keep].contiguous(), s.labels, s.class_names, names, s.source))
    for st in data.streams.values():
        st.x = st.x[..., keep].contiguous()
    data.feature_names = names


def save_data(data: IdsData, path: Path) -> None:
    """IdsData as one safetensors file (tensors) with a JSON header (names, state, stats)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"families": {}, "feature_names": data.feature_names, "window": data.window,
                            "feature_state": data.feature_state, "source": data.source, "stats": data.stats,
                            "traffic": data.traffic, "default_holdout": data.default_holdout}
    for name, fam in data.families.items():
        meta["families"][name] = {"rules": {}}
        for split in ("train", "test"):
            s, rules = fam.part(split)
            tensors[f"{name}/{split}/x"] = s.features.contiguous()
            tensors[f"{name}/{split}/y"] = s.labels.contiguous()
            for r, v in rules.items():
                tensors[f"{name}/{split}/rule/{r}"] = v.to(torch.uint8).contiguous()
            meta["families"][name]["rules"][split] = list(rules)
    meta["streams"] = {}
    for name, st in data.streams.items():
        for col in ("x", "attack", "clock", "key"):
            tensors[f"stream/{name}/{col}"] = getattr(st, col).contiguous()
        for r, v in st.rules.items():
            tensors[f"stream/{name}/rule/{r}"] = v.to(torch.uint8).contiguous()
        meta["streams"][name] = {"clock_unit_s": st.clock_unit_s, "source": st.source, "rules": list(st.rules)}
    atomic_write_bytes(Path(path), save(tensors, metadata={"meta": json.dumps(meta)}))


def load_data(path: Path) -> IdsData:
    """Inverse of :func:`save_data`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["meta"])
        t = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any failure means the cache is unusable
        raise DataError(f"prepared-data cache {path} is unreadable ({e}); delete it to rebuild") from e
    families = {}
    for name, fm in meta["families"].items():
        parts = {}
        for split in ("train", "test"):
            s = SampleSet(t[f"{name}/{split}/x"], t[f"{name}/{split}/y"], [BENIGN, name], meta["feature_names"],
                          f"{name}/{split}")
            parts[split] = (s, {r: t[f"{name}/{split}/rule/{r}"].bool() for r in fm["rules"][split]})
        families[name] = TaskFamily(name, parts["train"][0], parts["test"][0], parts["train"][1], parts["test"][1])
    streams = {name: Stream(t[f"stream/{name}/x"], t[f"stream/{name}/attack"], t[f"stream/{name}/clock"],
                            t[f"stream/{name}/key"], sm["clock_unit_s"], sm["source"],
                            {r: t[f"stream/{name}/rule/{r}"].bool() for r in sm.get("rules", [])})
               for name, sm in meta.get("streams", {}).items()}
    return IdsData(families, meta["feature_names"], meta["window"], meta["feature_state"], meta["source"],
                   meta["stats"], meta.get("traffic", "can"), meta.get("default_holdout"), streams)
