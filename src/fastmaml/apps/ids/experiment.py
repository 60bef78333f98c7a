"""Few-shot intrusion detection with MAML: task families, methods, evaluation.

Each attack type defines a *task family*: binary episodes "benign vs this attack" with K
labelled samples per class in the support set and Q per class in the query set; label 1 is
always the attack. Meta-training draws episodes from the known attack types, meta-testing
from the held-out ones (leave-one-attack-out by default: one meta-training per held-out
attack). Methods compared on the same fixed test episodes, all through
``MAML.adaptation_curve`` (so every method is fine-tuned by the same inner loop):

* ``scratch``: a randomly initialized network, fine-tuned on the K shots;
* ``pretrained``: the network trained on pooled episodes of the known attacks (meta-training
  with 0 inner steps, the same data budget as MAML), then fine-tuned;
* ``maml`` / ``fomaml``: second- / first-order MAML, adapted with the meta-trained step size.

The fine-tuning step size of ``scratch`` and ``pretrained`` is tuned per K on episodes of the
*known* attacks (never the held-out ones). Rule baselines (ID allow-list, timing, payload
range) are scored on the very query samples of the test episodes.

Data come from a traffic source (CICIoV2024 folder, the CAN simulator, labelled capture
files, the simulated zonal automotive-Ethernet network or labelled pcaps, or a synthetic
source for tests) as :class:`IdsData`: per attack a :class:`TaskFamily` with train/test
:class:`SampleSet` parts and per-sample rule predictions. Another traffic source plugs in by
building ``IdsData`` (e.g. with :func:`families_from_sample_sets`), as
:mod:`fastmaml.apps.ids.ethernet.source` does for automotive Ethernet. A source may name its
default held-out set (``IdsData.default_holdout``; Ethernet: the new flooding attacks).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.apps.ids.can import sim as can_sim
from fastmaml.apps.ids.can.baselines import AllowListRule, PayloadRangeRule, TimingRule
from fastmaml.apps.ids.can.readers import open_capture
from fastmaml.apps.ids.can.features import FRAME_FEATURES, FeatureState, build_sample_set
from fastmaml.apps.ids.can.frames import BENIGN, FrameBatch
from fastmaml.apps.ids.models import FrameMLP, WindowCNN1d, WindowGRU
from fastmaml.apps.ids.samples import SampleSet
from fastmaml.config import to_dict
from fastmaml.core.maml import MAML, MAMLConfig, Params
from fastmaml.errors import ConfigError, DataError
from fastmaml.eval.stats import summarize
from fastmaml.fileio import atomic_write_bytes, atomic_write_text
from fastmaml.tasks.batch import TaskBatch
from fastmaml.tasks.episodes import EpisodeIndices, EpisodeSampler
from fastmaml.train.checkpoint import load_checkpoint, load_state_into
from fastmaml.train.loop import TrainConfig, meta_train

PRESETS = Path(__file__).parent / "presets"
METHODS = ("scratch", "pretrained", "maml", "fomaml")
METRIC_NAMES = ("f1", "recall", "fpr", "accuracy")
RULES = ("id_allow_list", "timing", "payload_range")
SOURCE_KINDS = ("cic", "sim", "captures", "eth_sim", "eth_captures", "synthetic")
ETH_KINDS = ("eth_sim", "eth_captures")


# ======================================================================== configs
@dataclass
class CaptureSpec:
    """One labelled capture for ``source.kind: captures``."""

    path: str = ""
    labels: str = ""  # side label file (``index,label`` CSV, Car-Hacking CSV, or for pcaps ``index/timestamp,attack`` CSV)
    format: str = "auto"


@dataclass
class SourceConfig:
    """Where the traffic comes from.

    ``kind``: ``cic`` (CICIoV2024 decimal folder), ``sim`` (the CAN simulator), ``captures``
    (labelled capture files), ``eth_sim`` (the simulated zonal automotive-Ethernet network),
    ``eth_captures`` (labelled pcap/pcapng files + label CSVs) or ``synthetic`` (separable
    Gaussian blobs, for tests). For ``cic``, ``captures`` and ``eth_captures`` the last
    ``test_fraction`` of every capture (in capture order) is the test part; for ``sim`` and
    ``eth_sim`` the test captures are simulated with another seed (another drive). The
    Ethernet kinds are built in :mod:`fastmaml.apps.ids.ethernet.source`.
    """

    kind: str = "sim"
    attacks: list[str] = field(default_factory=list)  # restrict to these attack types ([] = all the source has)
    cic_dir: str = "/work/shared/data/ids/ciciov2024/decimal"
    captures: list[CaptureSpec] = field(default_factory=list)
    test_fraction: float = 0.3
    sim_duration_s: float = 60.0
    sim_fit_seed: int = 0  # the benign-only capture features and rules are fitted on
    sim_train_seed: int = 1
    sim_test_seed: int = 2
    synthetic_attacks: int = 4
    synthetic_samples: int = 400  # per class and split
    eth_camera: bool = True  # eth_sim: include the ~2,000 packets/s camera stream (off: fast tiny runs)


# Source keys only the Ethernet kinds read: left out of the cache keys of the other kinds (and
# when at their defaults), so adding them did not invalidate earlier runs.
_ETH_ONLY_KEYS = {"eth_camera": True}


def _source_key(src: SourceConfig) -> dict[str, Any]:
    d = to_dict(src)
    for k, default in _ETH_ONLY_KEYS.items():
        if src.kind not in ETH_KINDS or d.get(k) == default:
            d.pop(k, None)
    return d


@dataclass
class FeatureConfig:
    """Samples: frame level (``window: null``) or windows of W consecutive frames."""

    window: int | None = None
    stride: int | None = None  # default: the window length (non-overlapping windows)
    label_rule: str = "any"
    max_benign: int = 20000  # per task family and split
    max_attack: int = 5000
    drop: list[str] = field(default_factory=list)  # feature columns to leave out (ablations, e.g. id_known)
    seed: int = 0


@dataclass
class ModelConfig:
    """``mlp`` (on frames, or on flattened windows), ``cnn`` or ``gru`` (windows only)."""

    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # mlp widths; gru: hidden[0] is the state size
    channels: list[int] = field(default_factory=lambda: [32, 32])
    kernel_size: int = 3


@dataclass
class EvalConfig:
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    steps: int = 10
    episodes: int = 100  # per (held-out attack, K)
    query: int = 50  # query samples per class
    seed: int = 12345  # the test episodes' own seed
    finetune_lrs: list[float] = field(default_factory=lambda: [0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
    tuning_episodes: int = 60  # episodes of the known attacks' training parts, per K
    tuning_seed: int = 777
    report_steps: list[int] = field(default_factory=lambda: [0, 1, 5, 10])
    figure_shot: int = 5


@dataclass
class IdsConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    maml: MAMLConfig = field(default_factory=lambda: MAMLConfig(inner_lr=0.1, inner_steps=3))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(iterations=1500, meta_batch_size=16, meta_lr=1e-3, checkpoint_every=500,
                                            log_every=100, threads=1)
    )
    train_shots: int = 5  # K per class in meta-training episodes
    train_query: int = 15  # Q per class in meta-training episodes
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0])
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """ConfigError for values that cannot work, naming the key and the fix."""
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ConfigError(f"methods {bad or '[]'} unknown; choose from {list(METHODS)}")
        if self.source.kind not in SOURCE_KINDS:
            raise ConfigError(f"source.kind {self.source.kind!r} unknown; use one of {', '.join(SOURCE_KINDS)}")
        if self.model.name not in ("mlp", "cnn", "gru"):
            raise ConfigError(f"model.name {self.model.name!r} unknown; use mlp, cnn or gru")
        if self.model.name in ("cnn", "gru") and not self.features.window:
            raise ConfigError(f"model.name={self.model.name} needs window samples; set features.window (e.g. 16)")
        if not self.eval.shots or min(self.eval.shots) < 1 or self.train_shots < 1:
            raise ConfigError("eval.shots and train_shots must be positive numbers of samples per class")
        if self.eval.query < 1 or self.train_query < 1 or self.eval.episodes < 2:
            raise ConfigError("eval.query and train_query must be >= 1 and eval.episodes >= 2 (for a CI)")
        if self.eval.steps < 0 or any(s < 0 or s > self.eval.steps for s in self.eval.report_steps):
            raise ConfigError(f"eval.report_steps {self.eval.report_steps} must lie in 0..eval.steps={self.eval.steps}")
        if not self.eval.finetune_lrs or min(self.eval.finetune_lrs) <= 0:
            raise ConfigError("eval.finetune_lrs must list positive step sizes")
        if not 0 < self.source.test_fraction < 1:
            raise ConfigError(f"source.test_fraction must be in (0, 1), got {self.source.test_fraction}")
        if not self.seeds:
            raise ConfigError("seeds must list at least one training seed")


def load_ids_config(preset: str | Path | None, overrides: Iterable[str] = ()) -> IdsConfig:
    """Defaults, then a preset (name like ``cic`` -> ``presets/ids_cic.yaml``, or a YAML path), then overrides."""
    from fastmaml.config import load_config

    cfg = load_config(IdsConfig, preset_path(preset), overrides)
    cfg.validate()
    return cfg


def preset_path(name: str | Path | None) -> Path | None:
    """A preset by name (``sim`` -> ``presets/ids_sim.yaml``) or by file path."""
    if name is None:
        return None
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"preset file {p} not found")
        return p
    candidate = PRESETS / f"ids_{name}.yaml"
    if not candidate.is_file():
        known = sorted(f.stem[4:] for f in PRESETS.glob("ids_*.yaml"))
        raise ConfigError(f"unknown IDS preset {str(name)!r}; choose from {known} or give a YAML file path")
    return candidate


# ============================================================================ data
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


@dataclass
class IdsData:
    """Everything the comparison needs from a traffic source."""

    families: dict[str, TaskFamily]
    feature_names: list[str]
    window: int | None
    feature_state: dict[str, Any] | None = None  # JSON form of the fitted feature state (for detectors)
    source: str = ""
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. unseen-ID fractions per attack
    traffic: str = "can"  # "can" or "eth": which feature pipeline a detector of this data streams
    default_holdout: list[list[str]] | None = None  # the source's default folds (None: leave-one-attack-out)

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


def _cap(s: SampleSet, max_benign: int, max_attack: int, seed: int) -> SampleSet:
    """At most ``max_benign`` benign and ``max_attack`` samples of each attack (random, seeded)."""
    return s.select(cap_indices(s.labels, len(s.class_names), max_benign, max_attack, seed))


def _rule_predictions(s: SampleSet, rules: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {name: rule.predict_samples(s).to(torch.bool) for name, rule in rules.items()}


def _fit_rules(benign: FrameBatch | list[FrameBatch], state: FeatureState) -> dict[str, Any]:
    return {"id_allow_list": AllowListRule().fit(benign), "timing": TimingRule().fit(state),
            "payload_range": PayloadRangeRule().fit(benign)}


def _unseen_id_fraction(s: SampleSet) -> dict[str, float]:
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


def _family_from_frames(name: str, parts: dict[str, list[FrameBatch] | FrameBatch], state: FeatureState,
                        feat: FeatureConfig, rules: dict[str, Any], benign_override: dict[str, SampleSet] | None = None
                        ) -> TaskFamily:
    """Featurize a family's train/test frames (each list item is one capture, featurized on its own)."""
    sets = {}
    for split, frames in parts.items():
        batches = [frames] if isinstance(frames, FrameBatch) else list(frames)
        subsets = []
        for k, b in enumerate(batches):
            s = build_sample_set(b, state, window=feat.window, stride=feat.stride, label_rule=feat.label_rule,
                                 class_names=[BENIGN, name], max_per_class=max(feat.max_benign, feat.max_attack),
                                 seed=feat.seed + k, name=f"{name}/{split}")
            subsets.append(s)
        s = SampleSet.concat_all(subsets)
        if benign_override is not None:
            # Captures that hold only attack frames (CICIoV2024): benign samples come from the benign capture.
            s = SampleSet.concat_all([benign_override[split], s.subset([name])])
        sets[split] = _cap(s, feat.max_benign, feat.max_attack, feat.seed)
    return TaskFamily(name, sets["train"], sets["test"], _rule_predictions(sets["train"], rules),
                      _rule_predictions(sets["test"], rules))


def _split_frames(b: FrameBatch, test_fraction: float) -> dict[str, FrameBatch]:
    cut = int(round(len(b) * (1 - test_fraction)))
    return {"train": b.select(slice(0, cut)), "test": b.select(slice(cut, len(b)))}


def _prepare_cic(src: SourceConfig, feat: FeatureConfig, log: Callable[[str], None]) -> IdsData:
    folder = Path(src.cic_dir)
    if not folder.is_dir():
        raise DataError(f"CICIoV2024 folder {folder} not found; set source.cic_dir to the folder holding the "
                        "decimal_*.csv files (see /work/shared/data/README.md section 3)")
    benign_files = sorted(folder.glob("decimal_benign.csv*"))
    attack_files = sorted(f for f in folder.glob("decimal_*.csv") if "benign" not in f.name)
    if not benign_files or not attack_files:
        raise DataError(f"{folder}: expected decimal_benign.csv(.zip) and decimal_<attack>.csv files; found "
                        f"{sorted(p.name for p in folder.iterdir())}")
    log(f"reading {benign_files[0].name}")
    benign = _split_frames(open_capture(benign_files[0]).read_all(), src.test_fraction)
    state = FeatureState.fit(benign["train"])
    rules = _fit_rules(benign["train"], state)
    ben_sets = {split: _cap(build_sample_set(b, state, window=feat.window, stride=feat.stride,
                                             label_rule=feat.label_rule, class_names=[BENIGN],
                                             max_per_class=feat.max_benign, seed=feat.seed, name=f"benign/{split}"),
                            feat.max_benign, 0, feat.seed)
                for split, b in benign.items()}
    families = {}
    for f in attack_files:
        frames = open_capture(f).read_all()
        names = [n for n in frames.label_names if n != BENIGN]
        if len(names) != 1:
            raise DataError(f"{f}: expected one attack class per CICIoV2024 file, found {frames.label_names}")
        name = names[0]
        if src.attacks and name not in src.attacks:
            continue
        log(f"featurizing {f.name} ({len(frames)} frames) as attack {name!r}")
        families[name] = _family_from_frames(name, _split_frames(frames, src.test_fraction), state, feat, rules,
                                             benign_override=ben_sets)
    return _finish(families, state, feat, f"CICIoV2024 ({folder})", src.attacks)


def _prepare_sim(src: SourceConfig, feat: FeatureConfig, log: Callable[[str], None]) -> IdsData:
    fit = can_sim.simulate("none", src.sim_duration_s, src.sim_fit_seed)
    state = FeatureState.fit(fit)
    rules = _fit_rules(fit, state)
    attacks = src.attacks or list(can_sim.ATTACKS)
    bad = [a for a in attacks if a not in can_sim.ATTACKS]
    if bad:
        raise DataError(f"unknown simulator attack(s) {bad}; valid attacks: {list(can_sim.ATTACKS)}")
    families = {}
    for a in attacks:
        log(f"simulating {a} ({src.sim_duration_s:.0f} s train + test captures)")
        parts = {"train": can_sim.simulate(a, src.sim_duration_s, src.sim_train_seed),
                 "test": can_sim.simulate(a, src.sim_duration_s, src.sim_test_seed)}
        families[a] = _family_from_frames(a, parts, state, feat, rules)
    return _finish(families, state, feat, "CAN simulator", [])


def _prepare_captures(src: SourceConfig, feat: FeatureConfig, log: Callable[[str], None]) -> IdsData:
    if not src.captures:
        raise ConfigError("source.kind=captures needs source.captures: a list of {path, labels, format}")
    splits = []
    for c in src.captures:
        reader = open_capture(c.path, c.format, **({"labels": c.labels} if c.labels else {}))
        log(f"reading {c.path}")
        frames = reader.read_all()
        if len(frames) and (frames.label < 0).all():
            raise DataError(f"{c.path}: frames carry no labels; give a label file (labels: ...) for this capture")
        splits.append(_split_frames(frames, src.test_fraction))
    state = FeatureState.fit([s["train"] for s in splits])
    rules = _fit_rules([s["train"] for s in splits], state)
    names: list[str] = []
    for s in splits:
        names += [n for n in s["train"].label_names if n != BENIGN and n not in names]
    if src.attacks:
        names = [n for n in names if n in src.attacks]
    families = {}
    for name in names:
        # Every capture contributes its benign frames; attack frames of other attacks are dropped.
        parts = {split: [s[split] for s in splits] for split in ("train", "test")}
        families[name] = _family_from_frames(name, parts, state, feat, rules)
    return _finish(families, state, feat, "captures " + ", ".join(c.path for c in src.captures), src.attacks)


def _prepare_synthetic(src: SourceConfig, feat: FeatureConfig) -> IdsData:
    """Benign ~ U(0.25, 0.75)^8; attack i moves feature i // 2 by +0.5 (even i) or -0.5 (odd i).

    Every task is separable by one feature, and pairs of attacks share a feature with
    opposite signs, so a good initialization must learn which way to go from the support set.
    """
    n_feat = 8
    g = torch.Generator().manual_seed(src.sim_train_seed)
    names = [f"f{i}" for i in range(n_feat)]
    families = {}
    for i in range(src.synthetic_attacks):
        name = f"attack{i}"
        parts = []
        for _ in ("train", "test"):
            n = src.synthetic_samples
            x = 0.25 + torch.rand(2 * n, n_feat, generator=g) * 0.5
            y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
            x[n:, (i // 2) % n_feat] += 0.5 if i % 2 == 0 else -0.5
            parts.append(SampleSet(x, y, [BENIGN, name], names, "synthetic"))
        families[name] = TaskFamily(name, parts[0], parts[1])
    return IdsData(families, names, None, None, "synthetic")


def _finish(families: dict[str, TaskFamily], state: FeatureState, feat: FeatureConfig, source: str,
            wanted: list[str]) -> IdsData:
    missing = [a for a in wanted if a not in families]
    if missing or not families:
        raise DataError(f"attack(s) {missing} not found in {source}; available: {list(families)}")
    stats = {"unseen_id_fraction": {n: _unseen_id_fraction(f.test) for n, f in families.items()},
             "counts": {n: {"train": f.train.counts(), "test": f.test.counts()} for n, f in families.items()}}
    data = IdsData(families, list(FRAME_FEATURES), feat.window, state.to_dict(), source, stats)
    _drop_features(data, feat.drop)
    return data


def _drop_features(data: IdsData, drop: Sequence[str]) -> None:
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
    data.feature_names = names


def data_key(cfg: IdsConfig) -> str:
    """Hash of everything that shapes the prepared data (source + features)."""
    blob = json.dumps({"source": _source_key(cfg.source), "features": to_dict(cfg.features), "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_data(cfg: IdsConfig, cache_dir: Path | None = None, log: Callable[[str], None] | None = None) -> IdsData:
    """The task families of ``cfg.source`` (read from ``cache_dir`` when prepared before)."""
    log = log or (lambda m: print(f"[ids] {m}", file=sys.stderr))
    path = Path(cache_dir) / f"data-{data_key(cfg)}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        return load_data(path)
    src, feat = cfg.source, cfg.features
    if src.kind == "cic":
        data = _prepare_cic(src, feat, log)
    elif src.kind == "sim":
        data = _prepare_sim(src, feat, log)
    elif src.kind == "captures":
        data = _prepare_captures(src, feat, log)
    elif src.kind in ETH_KINDS:
        from fastmaml.apps.ids.ethernet.source import prepare_eth

        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        data = prepare_eth(src, feat, log, Path(cache_dir) if cache_dir is not None else None)
        _drop_features(data, feat.drop)
    elif src.kind == "synthetic":
        data = _prepare_synthetic(src, feat)
    else:
        raise ConfigError(f"source.kind {src.kind!r} unknown; use one of {', '.join(SOURCE_KINDS)}")
    if path is not None:
        save_data(data, path)
    return data


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
    return IdsData(families, meta["feature_names"], meta["window"], meta["feature_state"], meta["source"],
                   meta["stats"], meta.get("traffic", "can"), meta.get("default_holdout"))


# ======================================================================= episodes
def _class_tensors(s: SampleSet) -> list[torch.Tensor]:
    return [s.features[s.labels == 0], s.features[s.labels == 1]]


def _check_sizes(data: IdsData, names: Iterable[str], split: str, k: int, q: int, key: str) -> None:
    for n in names:
        s, _ = data.families[n].part(split)
        counts = s.counts()
        for cls, c in counts.items():
            if c < k + q:
                raise DataError(
                    f"{split} part of attack {n!r} has {c} {cls!r} samples but episodes need K + Q = {k} + {q}; "
                    f"lower {key}, eval.query/train_query, or give the source more data (e.g. source.sim_duration_s)"
                )


def binary_labels(batch: TaskBatch, idx: EpisodeIndices) -> TaskBatch:
    """Undo the sampler's per-episode label permutation: label 1 = the attack class (data index 1)."""
    return TaskBatch(batch.support_x, idx.classes.gather(1, batch.support_y), batch.query_x,
                     idx.classes.gather(1, batch.query_y))


def make_train_sampler(data: IdsData, known: Sequence[str], k: int, q: int, pooled: bool = False,
                       split: str = "train") -> Callable[[torch.Generator], tuple[TaskBatch, list[str]]]:
    """``sample(n, g) -> (batch, family names per task)`` over the known attacks only.

    Each task picks a known attack uniformly at random. ``pooled`` returns support = first
    2K samples, query = all 2K + 2Q samples (pretraining: plain supervised data, the same
    budget as a MAML episode).
    """
    samplers = {n: EpisodeSampler(_class_tensors(data.families[n].part(split)[0]), 2, k, q) for n in known}
    names = list(known)

    def sample(n_tasks: int, g: torch.Generator) -> tuple[TaskBatch, list[str]]:
        pick = torch.randint(len(names), (n_tasks,), generator=g)
        parts, order = [], []
        for i, name in enumerate(names):
            count = int((pick == i).sum())
            if count:
                idx = samplers[name].sample_indices(count, g)
                parts.append(binary_labels(samplers[name].gather(idx), idx))
                order += [name] * count
        batch = TaskBatch(*(torch.cat([getattr(p, a) for p in parts]) for a in
                            ("support_x", "support_y", "query_x", "query_y")))
        if pooled:
            x = torch.cat([batch.support_x, batch.query_x], 1)
            y = torch.cat([batch.support_y, batch.query_y], 1)
            batch = TaskBatch(x[:, : 2 * k], y[:, : 2 * k], x, y)
        return batch, order

    return sample


@dataclass
class Episodes:
    """Fixed episodes of one attack: binary batch, rule verdicts on its query samples, a fingerprint."""

    batch: TaskBatch
    rule_preds: dict[str, torch.Tensor]  # rule -> bool [T, 2Q]
    fingerprint: str


def fixed_episodes(data: IdsData, attack: str, split: str, k: int, q: int, n: int, seed: int) -> Episodes:
    """``n`` benign-vs-``attack`` episodes drawn from a seed that depends only on (seed, attack, K)."""
    s, rules = data.families[attack].part(split)
    sampler = EpisodeSampler(_class_tensors(s), 2, k, q)
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(attack.encode()) * 101 + k)
    idx = sampler.sample_indices(n, g)
    batch = binary_labels(sampler.gather(idx), idx)
    preds = {}
    for r, flags in rules.items():
        per_class = [flags[s.labels == 0], flags[s.labels == 1]]
        ex = idx.examples[:, :, k:]  # [T, 2, Q], query positions in the order the sampler lays them out
        out = torch.empty(ex.shape, dtype=torch.bool)
        for c in (0, 1):
            m = idx.classes == c
            out[m] = per_class[c][ex[m]]
        preds[r] = out.reshape(n, -1)
    return Episodes(batch, preds, fingerprint(batch))


def fingerprint(batch: TaskBatch) -> str:
    h = hashlib.sha1()
    for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ======================================================================== metrics
def rates(pred_attack: torch.Tensor, true_attack: torch.Tensor) -> dict[str, torch.Tensor]:
    """F1, recall (detection rate), FPR, accuracy along the last dim (vmap-friendly: no branches)."""
    p, t = pred_attack.bool(), true_attack.bool()
    tp = (p & t).sum(-1).float()
    fp = (p & ~t).sum(-1).float()
    fn = (~p & t).sum(-1).float()
    tn = (~p & ~t).sum(-1).float()
    return {
        "f1": 2 * tp / (2 * tp + fp + fn).clamp_min(1.0),
        "recall": tp / (tp + fn).clamp_min(1.0),
        "fpr": fp / (fp + tn).clamp_min(1.0),
        "accuracy": (tp + tn) / (tp + fp + fn + tn).clamp_min(1.0),
    }


def _metric(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda logits, y: rates(logits.argmax(-1) == 1, y == 1)[name]


CURVE_METRICS = {name: _metric(name) for name in METRIC_NAMES}


# ========================================================================= models
def build_model(mc: ModelConfig, n_features: int, window: int | None) -> nn.Module:
    """The detector network for samples ``[B, F]`` or ``[B, W, F]`` -> logits ``[B, 2]``."""
    if mc.name == "mlp":
        if window:
            return nn.Sequential(nn.Flatten(), FrameMLP(window * n_features, mc.hidden, 2))
        return FrameMLP(n_features, mc.hidden, 2)
    if not window:
        raise ConfigError(f"model.name={mc.name} needs window samples; set features.window (e.g. 16)")
    if mc.name == "cnn":
        return WindowCNN1d(n_features, window, 2, mc.channels, mc.kernel_size)
    if mc.name == "gru":
        return WindowGRU(n_features, mc.hidden[0] if mc.hidden else 64, 2)
    raise ConfigError(f"model.name {mc.name!r} unknown; use mlp, cnn or gru")


def _vectorize(cfg: IdsConfig) -> str:
    # nn.GRU fails under vmap when the weights are shared across tasks (MAML's first inner
    # step), so GRU models run task by task.
    return "loop" if cfg.model.name == "gru" else cfg.maml.vectorize


def build_learner(cfg: IdsConfig, data: IdsData, method: str, seed: int) -> MAML:
    """A fresh (seeded) learner for ``method``: scratch/pretrained use 0 inner steps in training."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(data.feature_names), data.window)
    mc = dataclasses.replace(cfg.maml, vectorize=_vectorize(cfg))
    if method in ("scratch", "pretrained"):
        mc = dataclasses.replace(mc, inner_steps=0, inner_lr_mode="fixed", first_order=False)
    elif method == "fomaml":
        mc = dataclasses.replace(mc, first_order=True)
    elif method == "maml":
        mc = dataclasses.replace(mc, first_order=False)
    else:
        raise ConfigError(f"unknown method {method!r}; choose from {list(METHODS)}")
    return mc.build(model, F.cross_entropy)


# ======================================================================= training
def _identity(cfg: IdsConfig, method: str, known: Sequence[str], seed: int, dkey: str) -> dict[str, Any]:
    """What a training run depends on (iterations excluded: raising them continues a run)."""
    t = to_dict(cfg.train)
    return {"method": method, "known": sorted(known), "seed": seed, "data": dkey, "model": to_dict(cfg.model),
            "maml": to_dict(cfg.maml), "train_shots": cfg.train_shots, "train_query": cfg.train_query,
            "train": {k: t[k] for k in ("meta_batch_size", "meta_lr", "grad_clip")}}


def train_method(cfg: IdsConfig, data: IdsData, known: Sequence[str], method: str, seed: int, run_dir: Path,
                 resume: bool = True) -> tuple[MAML, float]:
    """Meta-train (``maml``, ``fomaml``) or pretrain (``pretrained``) on the known attacks; returns (learner, seconds).

    A finished run in ``run_dir`` is loaded, an unfinished one resumed.
    """
    learner = build_learner(cfg, data, method, seed)
    if method == "scratch":
        return learner, 0.0
    known = data.check_attacks(known, "known attack")
    _check_sizes(data, known, "train", cfg.train_shots, cfg.train_query, "train_shots")
    ident = _identity(cfg, method, known, seed, data_key(cfg))
    last = Path(run_dir) / "checkpoints" / "last.safetensors"
    if last.is_file():
        meta = load_checkpoint(last)["meta"]
        if meta.get("config", {}).get("identity") != ident:
            raise ConfigError(f"{run_dir} holds a run with another config; delete it or use another --out folder")
        if meta.get("iteration") == cfg.train.iterations:
            load_state_into(learner, load_checkpoint(last)["model"], last)
            return learner, 0.0
    sample = make_train_sampler(data, known, cfg.train_shots, cfg.train_query, pooled=(method == "pretrained"))
    n = cfg.train.meta_batch_size
    t0 = time.perf_counter()
    tcfg = dataclasses.replace(cfg.train, seed=seed)
    meta_train(learner, lambda g: sample(n, g)[0], tcfg, run_dir, resume=resume and last.is_file(),
               run_config={"identity": ident, "experiment": "ids", "config": to_dict(cfg)})
    return learner, time.perf_counter() - t0


# ===================================================================== evaluation
def _params(learner: MAML) -> Params:
    return {k: v.detach() for k, v in learner.params().items()}


def tune_step_size(cfg: IdsConfig, data: IdsData, base: MAML, known: Sequence[str], k: int) -> tuple[float, dict]:
    """Fine-tuning step size with the best mean F1 after ``eval.steps`` steps on known-attack episodes."""
    e = cfg.eval
    n_each = max(1, e.tuning_episodes // len(known))
    batches = [fixed_episodes(data, a, "train", k, e.query, n_each, e.tuning_seed).batch for a in known]
    batch = TaskBatch(*(torch.cat([getattr(b, a) for b in batches]) for a in
                        ("support_x", "support_y", "query_x", "query_y")))
    scores = {}
    for lr in e.finetune_lrs:
        curve = base.with_inner_lr(lr).adaptation_curve(batch, steps=e.steps, metrics={"f1": CURVE_METRICS["f1"]},
                                                     params=_params(base))
        f1 = curve.metrics["f1"][:, -1].mean().item()
        loss = curve.losses[:, -1].mean().item()
        scores[str(lr)] = {"f1": f1, "loss": loss if loss == loss else float("inf")}
    best = max(scores, key=lambda s: (scores[s]["f1"], -scores[s]["loss"]))
    return float(best), scores


def curve_values(runner: MAML, params: Params, ep: Episodes, steps: int) -> dict[str, torch.Tensor]:
    """Per-episode metrics ``[T, steps+1]`` (and query loss) of one method on fixed episodes."""
    curve = runner.adaptation_curve(ep.batch, steps=steps, metrics=CURVE_METRICS, params=params)
    return {**{m: v.float() for m, v in curve.metrics.items()}, "loss": curve.losses.float()}


def rule_values(ep: Episodes) -> dict[str, dict[str, torch.Tensor]]:
    """Per-episode metrics ``[T]`` of each rule on the episodes' query samples."""
    y = ep.batch.query_y == 1
    return {r: rates(p, y) for r, p in ep.rule_preds.items()}


def fold_name(holdout: Sequence[str]) -> str:
    return "+".join(holdout)


def _eval_key(cfg: IdsConfig, known: Sequence[str], holdout: Sequence[str], dkey: str) -> str:
    c = to_dict(cfg)
    c["source"] = _source_key(cfg.source)
    for k in ("progress", "threads", "device", "checkpoint_every", "log_every"):
        c["train"].pop(k, None)
    blob = json.dumps({"cfg": c, "known": sorted(known), "holdout": list(holdout), "data": dkey}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_fold(cfg: IdsConfig, data: IdsData, holdout: Sequence[str], out_dir: Path, resume: bool = True,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every method without ``holdout``, evaluate on the held-out attacks; cached in ``out_dir/evals``."""
    log = log or (lambda m: print(f"[ids] {m}", file=sys.stderr))
    holdout = data.check_attacks(holdout, "held-out attack")
    known = [a for a in data.attacks if a not in holdout]
    if not known:
        raise DataError(f"holding out {holdout} leaves no attack to meta-train on; hold out fewer attacks")
    e = cfg.eval
    for k in e.shots:
        _check_sizes(data, holdout, "test", k, e.query, "eval.shots")
    name = fold_name(holdout)
    dkey = data_key(cfg)
    key = _eval_key(cfg, known, holdout, dkey)
    cache = Path(out_dir) / "evals" / f"{name}.json"
    if resume and cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            log(f"fold {name}: finished earlier, reusing {cache}")
            return cached
    t_fold = time.perf_counter()
    values: dict[str, dict[int, dict[str, list[dict[str, torch.Tensor]]]]] = {a: {} for a in holdout}
    episodes = {a: {k: fixed_episodes(data, a, "test", k, e.query, e.episodes, e.seed) for k in e.shots}
                for a in holdout}
    fingerprints: dict[str, dict[str, dict[str, str]]] = {a: {str(k): {} for k in e.shots} for a in holdout}
    train_seconds: dict[str, float] = {}
    step_sizes: dict[str, dict[str, float]] = {}
    tuning: dict[str, Any] = {}
    for seed in cfg.seeds:
        for method in cfg.methods:
            run_dir = Path(out_dir) / "runs" / name / f"{method}-s{seed}"
            if method != "scratch":
                log(f"fold {name}: training {method} (seed {seed}) on {known}")
            learner, secs = train_method(cfg, data, known, method, seed, run_dir, resume=resume)
            train_seconds[f"{method}-s{seed}"] = secs
            params = _params(learner)
            for k in e.shots:
                if method in ("scratch", "pretrained"):
                    lr, scores = tune_step_size(cfg, data, learner, known, k)
                    step_sizes.setdefault(f"{method}-s{seed}", {})[str(k)] = lr
                    tuning.setdefault(f"{method}-s{seed}", {})[str(k)] = scores
                    runner = learner.with_inner_lr(lr)
                else:
                    runner = learner
                for a in holdout:
                    ep = episodes[a][k]
                    fingerprints[a][str(k)][method] = fingerprint(ep.batch)
                    values[a].setdefault(k, {}).setdefault(method, []).append(curve_values(runner, params, ep, e.steps))
    results: dict[str, Any] = {}
    for a in holdout:
        results[a] = {}
        for k in e.shots:
            ep = episodes[a][k]
            entry: dict[str, Any] = {"methods": {}, "rules": {}, "episodes": e.episodes, "fingerprint": ep.fingerprint,
                                     "method_fingerprints": fingerprints[a][str(k)]}
            for method, runs in values[a][k].items():
                # Seeds pooled: the CI is over (seed, episode) pairs.
                entry["methods"][method] = {m: summarize(torch.cat([r[m] for r in runs])) for m in runs[0]}
            for r, vals in rule_values(ep).items():
                entry["rules"][r] = {m: summarize(v) for m, v in vals.items()}
            results[a][str(k)] = entry
    out = {"fold": name, "holdout": list(holdout), "known": known, "key": key, "results": results,
           "step_sizes": step_sizes, "step_size_tuning": tuning, "train_seconds": train_seconds,
           "seconds": time.perf_counter() - t_fold}
    atomic_write_text(cache, json.dumps(out, indent=1) + "\n")
    return out


def default_folds(data: IdsData) -> list[list[str]]:
    """The source's default held-out set (Ethernet simulator: the new flooding attacks), else leave-one-attack-out."""
    if data.default_holdout:
        return [list(f) for f in data.default_holdout]
    return leave_one_out(data)


def leave_one_out(data: IdsData) -> list[list[str]]:
    """One fold per attack."""
    return [[a] for a in data.attacks]


def compare(cfg: IdsConfig, out_dir: Path, folds: list[list[str]] | None = None, resume: bool = True,
            command: str = "", data: IdsData | None = None) -> dict[str, Any]:
    """Run every fold (skipping finished ones), then write results.json, report.md and figures to ``out_dir``."""
    from fastmaml.apps.ids import report as R

    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = data if data is not None else prepare_data(cfg, out_dir / "data")
    folds = folds or default_folds(data)
    for f in folds:
        data.check_attacks(f, "held-out attack")
    seen: set[str] = set()
    for f in folds:
        dup = seen & set(f)
        if dup:
            raise DataError(f"attack(s) {sorted(dup)} held out in more than one fold; give each attack to one fold")
        seen |= set(f)
    prep_seconds = time.perf_counter() - t0
    fold_results = [run_fold(cfg, data, f, out_dir, resume=resume) for f in folds]
    report = {
        "experiment": "ids-fewshot",
        "command": command,
        "config": to_dict(cfg),
        "source": data.source,
        "traffic": data.traffic,
        "feature_names": data.feature_names,
        "window": data.window,
        "data_stats": data.stats,
        "folds": fold_results,
        "prep_seconds": prep_seconds,
        "total_seconds": time.perf_counter() - t0,
        "fold_seconds_sum": sum(f["seconds"] for f in fold_results),
        "environment": R.environment(),
    }
    R.write_report(report, out_dir)
    return report


def meta_train_detector(cfg: IdsConfig, attacks: Sequence[str], out_dir: Path, method: str = "maml",
                        seed: int | None = None, resume: bool = True) -> Path:
    """Meta-train a detector on ``attacks`` and save it (weights + JSON) to ``out_dir/detector``.

    No ``attacks``: every attack of the source except its default held-out ones (Ethernet
    simulator: the flooding variants), which stay new for ``fastmaml ids adapt``.
    """
    from fastmaml.apps.ids.detect import Detector, save_detector

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out_dir = Path(out_dir)
    data = prepare_data(cfg, out_dir / "data")
    if attacks:
        attacks = data.check_attacks(attacks)
    else:
        # Without a choice, keep the source's default held-out attacks out of training, so the
        # detector can be adapted to them as new attacks (Ethernet: the flooding variants).
        held = {a for f in (data.default_holdout or []) for a in f}
        attacks = [a for a in data.attacks if a not in held]
    if data.feature_state is None:
        raise ConfigError(f"source {cfg.source.kind!r} has no feature state, so its detector cannot stream "
                          "captures; use source.kind cic, sim, captures, eth_sim or eth_captures")
    seed = cfg.seeds[0] if seed is None else seed
    if method not in ("maml", "fomaml", "pretrained"):
        raise ConfigError(f"method {method!r} cannot be meta-trained; use maml, fomaml or pretrained")
    learner, _ = train_method(cfg, data, attacks, method, seed, out_dir / "run", resume=resume)
    if method == "pretrained":
        # The step size a pretrained network is fine-tuned with, tuned on its own training attacks.
        step, _ = tune_step_size(cfg, data, learner, attacks, cfg.train_shots)
    else:
        step = cfg.maml.inner_lr
    det = Detector(
        model=to_dict(cfg.model), params=_params(learner), feature_state=copy.deepcopy(data.feature_state),
        feature_names=list(data.feature_names), window=data.window, stride=cfg.features.stride,
        label_rule=cfg.features.label_rule, class_names=[BENIGN, "attack"],
        inner_lr=step,
        adapt_steps=cfg.eval.steps,
        meta={"method": method, "trained_on": list(attacks), "source": data.source, "seed": seed, "adapted_to": None},
        traffic=data.traffic,
    )
    path = out_dir / "detector"
    save_detector(det, path)
    return path
