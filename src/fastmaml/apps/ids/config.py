"""Configuration of the IDS experiments: dataclasses with YAML presets (``presets/ids_*.yaml``).

Traffic-agnostic: which source kinds exist, and what each reads, is the registry's
(:mod:`fastmaml.apps.ids.registry`, which adds its checks to :func:`read_ids_config`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable

from fastmaml import cliargs
from fastmaml.apps.ids.splits import FILE_SPLITS
from fastmaml.config import load_config
from fastmaml.core.maml import MAMLConfig
from fastmaml.errors import ConfigError, DataError
from fastmaml.train.loop import TrainConfig

PRESETS = Path(__file__).parent / "presets"
METHODS = ("scratch", "pretrained", "maml", "fomaml")
SPLITS = ("occurrences", "time") + FILE_SPLITS
DATA_ROOT_ENV = "FASTMAML_DATA_ROOT"


# ======================================================================== configs
@dataclass
class CaptureSpec:
    """One labelled capture for ``source.kind: captures``; a plain path stands for ``{path: ...}``."""

    SHORTHAND: ClassVar[str] = "path"  # source.captures=[clean.log] is source.captures=[{path: clean.log}]
    path: str = ""
    labels: str = ""  # side label file (``index,label`` CSV, Car-Hacking CSV, or for pcaps ``index/timestamp,attack`` CSV)
    format: str = "auto"  # auto, cic, carhacking, candump, pythoncan, daga, csv
    attack: str = ""  # name of the attack in this capture when the file does not say (daga, carhacking, csv)
    columns: dict[str, Any] = field(default_factory=dict)  # format csv: the column map (time, id, payload/bytes, label, ...)
    label_column: int = 1  # candump lines with inline label columns (CrySyS): which one after ID#DATA is the label


# ====================================================================== per-source settings
# Each source kind's own settings are one small dataclass, held in SourceConfig as one block
# (``source.masquerade: {occurrences: 6}``, ``source.masquerade.occurrences=6``). They are defined
# here, not beside the modules that read them, because this module sits below the traffic kinds
# in the layers (pyproject.toml, import-linter contract "IDS application layers"); each says
# which module reads it. Each key's flat name from before the blocks (``masquerade_occurrences``)
# still works everywhere: :data:`SourceConfig.RENAMED_KEYS` maps it.


@dataclass
class CicSettings:
    """``source.cic``: CICIoV2024 (``kind: cic``), read by ``can/source.py: prepare_cic``."""

    dir: str = ""  # the decimal folder; default: <data_root>/ids/ciciov2024/decimal


@dataclass
class DagaSettings:
    """``source.daga``: the DAGA captures (``kind: daga``), read by ``can/source.py: prepare_daga``, and by
    ``can/masquerade.py`` for DAGA's clean trace when ``kind: masquerade`` has no ``source.captures``."""

    dir: str = ""  # default: <data_root>/ids/daga


@dataclass
class SimSettings:
    """``source.sim``: a simulated drive, read by both simulators: the CAN simulator (``kind: sim``,
    ``can/source.py: prepare_sim``) and the zonal Ethernet network (``kind: eth_sim``, ``ethernet/source.py``).
    The synthetic source (``synthetic.py``) draws its blobs with ``train_seed``."""

    duration_s: float = 60.0  # each simulated capture
    fit_seed: int = 0  # the benign-only capture features and rules are fitted on
    train_seed: int = 1  # the drive of the training parts
    test_seed: int = 2  # the drive of the test parts


@dataclass
class SyntheticSettings:
    """``source.synthetic``: separable Gaussian blobs for tests (``kind: synthetic``), read by ``synthetic.py``."""

    attacks: int = 4
    samples: int = 400  # per class and split


@dataclass
class MasqueradeSettings:
    """``source.masquerade``: attacks generated on a clean capture (``source.captures[0]``, else DAGA's clean
    trace) for ``kind: masquerade``, read by ``can/masquerade.py: prepare_masquerade``."""

    occurrences: int = 20  # injection intervals per attack type, spread over the drive
    duration_s: float = 2.0  # length of each interval
    seed: int = 0
    targets: str = "partnered"  # partnered (signals another ID reflects) or all (with and without a partner)


@dataclass
class EthSimSettings:
    """``source.eth_sim``: the simulated zonal automotive-Ethernet network (``kind: eth_sim``), read by
    ``ethernet/source.py``; its drive length and seeds are ``source.sim``'s."""

    camera: bool = True  # include the ~2,000 packets/s camera stream (off: fast tiny runs)


@dataclass
class SourceConfig:
    """Where the traffic comes from.

    ``kind``: ``cic`` (CICIoV2024 decimal folder), ``sim`` (the CAN simulator), ``captures``
    (labelled capture files of any supported format, e.g. a user's CSV export), ``daga`` (the
    DAGA Volvo V40 captures), ``masquerade`` (masquerade attacks generated on a clean capture),
    ``eth_sim`` (the simulated zonal automotive-Ethernet network), ``eth_captures`` (labelled
    pcap/pcapng files + label CSVs) or ``synthetic`` (separable Gaussian blobs, for tests).

    The keys at the top are shared by the sources; each source kind's own settings are a block
    of their own (``sim``, ``masquerade``, ``cic``, ``daga``, ``eth_sim``, ``synthetic``: see the
    ``*Settings`` classes above), e.g. ``source.sim.duration_s=15``. The flat names from before
    the blocks (``source.sim_duration_s=15``) still work: :data:`RENAMED_KEYS`.

    Real data sets are found under ``data_root`` (``--data-root``, else the environment
    variable ``FASTMAML_DATA_ROOT``) in the shared layout (``ids/ciciov2024/decimal``,
    ``ids/daga``), or at ``cic.dir`` / ``daga.dir`` when those are set.

    ``split`` says how a capture becomes train and test parts without leakage:
    ``occurrences`` (default) cuts each capture in time between two attack occurrences (runs of
    attack frames separated by more than ``occurrence_gap_s``) so that about ``test_fraction`` of
    its occurrences fall after the cut, and stops with a message naming the attack when a
    capture has too few occurrences to put some on both sides; ``time`` cuts each capture at
    ``1 - test_fraction`` of its frames. For ``sim`` and ``eth_sim`` the test captures are
    simulated with another seed (another drive).

    For a folder of real captures (``kind: captures``) that holds one injection interval per
    file, often several files per attack type: ``by_capture`` holds out whole files (per attack
    type with >= 2 files holding only it, about ``test_fraction`` of them, at least one, test
    whole; the last ones in ``captures`` order), ``within_interval`` cuts each capture inside its
    attack frames so both parts hold some (test frames then come from the same injection as
    training frames: optimistic), and ``auto`` (the ``captures`` preset's default) picks per
    attack type: by_capture with >= 2 files, else occurrences when its capture has enough, else
    within_interval, and logs the choice. Features and rules are fitted on the benign frames of
    the training parts only.
    """

    # Each source setting's flat name from before the blocks -> where it lives now (presets, overrides,
    # train_source mappings and the configs in earlier results.json files use either). The cache keys hash
    # the flat form (keys.py), so they did not change with the blocks.
    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "cic_dir": "cic.dir",
        "daga_dir": "daga.dir",
        "sim_duration_s": "sim.duration_s",
        "sim_fit_seed": "sim.fit_seed",
        "sim_train_seed": "sim.train_seed",
        "sim_test_seed": "sim.test_seed",
        "synthetic_attacks": "synthetic.attacks",
        "synthetic_samples": "synthetic.samples",
        "masquerade_occurrences": "masquerade.occurrences",
        "masquerade_duration_s": "masquerade.duration_s",
        "masquerade_seed": "masquerade.seed",
        "masquerade_targets": "masquerade.targets",
        "eth_camera": "eth_sim.camera",
    }

    kind: str = "sim"
    attacks: list[str] = field(default_factory=list)  # restrict to these attack types ([] = all the source has)
    data_root: str = ""
    captures: list[CaptureSpec] = field(default_factory=list)
    split: str = "occurrences"  # occurrences, time, by_capture, within_interval, auto (the captures preset's default)
    test_fraction: float = 0.3
    occurrence_gap_s: float = 0.05  # attack frames closer than this belong to one occurrence (frames without time: 50 frames)
    min_occurrences: int = 2  # per side; fewer on either side of a cut stops the run
    skip_malformed: bool = False  # capture readers: skip and count malformed lines instead of stopping
    bad_id: str = "error"  # a frame whose ID is out of range for its format (e.g. 11-bit 0xFFF): error, skip or keep
    # Each source kind's own settings (the classes above).
    sim: SimSettings = field(default_factory=SimSettings)
    masquerade: MasqueradeSettings = field(default_factory=MasqueradeSettings)
    cic: CicSettings = field(default_factory=CicSettings)
    daga: DagaSettings = field(default_factory=DagaSettings)
    eth_sim: EthSimSettings = field(default_factory=EthSimSettings)
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)


def data_folder(src: SourceConfig, explicit: str, relative: str, what: str) -> Path:
    """``explicit`` if set, else ``<data_root>/<relative>`` (data_root from config or $FASTMAML_DATA_ROOT).

    ConfigError saying how to point at the data when neither is set; DataError when the folder is missing.
    """
    if explicit:
        folder = Path(explicit).expanduser()
    else:
        root = src.data_root or os.environ.get(DATA_ROOT_ENV, "")
        if not root:
            raise ConfigError(f"where is the {what} data? Pass --data-root DIR (the folder holding {relative}/), "
                              f"set {DATA_ROOT_ENV}=DIR, or give its folder directly")
        folder = Path(root).expanduser() / relative
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} not found; pass --data-root DIR (the folder holding {relative}/) "
                        f"or set {DATA_ROOT_ENV}")
    return folder


@dataclass
class FeatureConfig:
    """Samples: frame level (``window: null``) or windows of W consecutive frames."""

    window: int | None = None
    stride: int | None = None  # default: the window length (non-overlapping windows)
    label_rule: str = "any"
    max_benign: int = 20000  # per task family and split
    max_attack: int = 5000
    drop: list[str] = field(default_factory=list)  # feature columns to leave out (ablations, e.g. id_known)
    # false: leave out the columns naming the stream and its raw content (CAN: ID and payload bytes, see
    # can/features.IDENTITY_FEATURES), so that an adapted detector judges behaviour, not which ID it saw attacked
    identity: bool = True
    signals: bool = False  # CAN: add the signal-level columns (can/signals.py: payload signals in cross-ID context)
    dbc: str = ""  # CAN, with signals: the car's DBC file; its signals replace the inferred ones (can/dbc.py)
    # CAN signals without a DBC: "both" also finds little-endian (Intel) signals whose bytes carry, "big" reads
    # big-endian only (the reading before), "auto" both after 30 minutes of clean driving, big before (a short drive
    # cannot check the extra partner relations; can/signals.py)
    byte_order: str = "auto"
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
    figure_shot: int = 5  # K of the figures and of the operational evaluation
    operational_episodes: int = 5  # adapted detectors streamed over each held-out test capture, per seed (0: off)
    calibrate_fpr: float = 1e-4  # streams are also judged at the threshold flagging this share of benign training frames
    # ... and, per alert rule, at the threshold where it raises at most this many false alerts per hour on them
    alert_budget_per_hour: float = 10.0
    alert_rules: list[str] = field(default_factory=lambda: ["1-of-1", "2-of-4"])  # "k-of-n": k of the last n frames of one ID
    # Evidence over time (evidence.py): per-ID CUSUM of log-odds, threshold set on the benign traffic before the cut
    # for alert_budget_per_hour; each method adapted on its K attack shots beside this many benign frames of that
    # traffic (0: off), judged on the test-period streams beside the rules on the same path.
    evidence_benign: int = 1024
    evidence_clip: float = 6.0
    evidence_drift: float = 0.0  # subtracted from each frame's clipped log-odds: only frames above it add evidence
    # ... raised to this quantile of each detector's clipped log-odds on the traffic before the cut (the CUSUM's
    # reference value, evidence.Evidence.reference, e.g. 0.999; 0: evidence_drift alone; evidence.DETECTOR_REFERENCE
    # says why it is off by default)
    evidence_reference: float = 0.0
    # Each CAN ID's own reference on top (evidence.KEY_MARGIN, KEY_SPREAD): an ID whose clean frames a detector or rule
    # scores high no longer sets the one threshold for every ID. false: the single drift of before (for comparison).
    evidence_per_key: bool = True
    # Each CAN ID's own threshold (evidence.Evidence.key_scaled): the calibrated one scaled by the ID's clean excursion
    # scale, so a slow ID's attack is not held to the sum fast IDs' clean excursions reach. Detectors only.
    evidence_key_scale: bool = False
    # Share of those benign frames drawn from the attack shots' own IDs (0: uniformly from the clean traffic), so the
    # adapted detector cannot call an ID an attack for being that ID.
    evidence_same_id: float = 0.0
    # Those benign frames drawn with every CAN ID of the clean traffic equally often (samples.key_balanced_rows):
    # alerts are per ID, so a slow ID's clean frames weigh as much as a fast one's in the adaptation (on ROAD's
    # correlated-signal fold MAML's false alerts 56 -> 0/h, on the CrySyS sample 5/6 -> 6/6 caught). false: by frame.
    evidence_benign_per_id: bool = True
    # The adapted detector and this rule baseline run side by side as one IDS (each calibrated for half the budget),
    # judged beside each alone; "" for none. Where the streams lack the rule (no signal features) it is left out.
    evidence_union: str = "plausibility"


@dataclass
class IdsConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    # Cross-vehicle: meta-train (and pretrain, and tune fine-tuning step sizes) on this source's
    # attacks only and test on every attack of ``source``; each source's features are fitted on
    # its own benign traffic, the network is shared. None: both come from ``source``.
    train_source: SourceConfig | None = None
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
        """ConfigError for values that cannot work, naming the key and the fix.

        Whether the source kinds exist and fit together is checked against the registry
        (:func:`fastmaml.apps.ids.registry.check_sources`).
        """
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ConfigError(f"methods {bad or '[]'} unknown; choose from {list(METHODS)}")
        if self.model.name not in ("mlp", "cnn", "gru"):
            raise ConfigError(f"model.name {self.model.name!r} unknown; use mlp, cnn or gru")
        if self.model.name in ("cnn", "gru") and not self.features.window:
            raise ConfigError(f"model.name={self.model.name} needs window samples; set features.window (e.g. 16)")
        if not self.eval.shots or min(self.eval.shots) < 1 or self.train_shots < 1:
            raise ConfigError("eval.shots and train_shots must be positive numbers of samples per class")
        if self.eval.query < 1 or self.train_query < 1 or self.eval.episodes < 2:
            raise ConfigError("eval.query and train_query must be >= 1 and eval.episodes >= 2 (for a CI)")
        if not 0.0 <= self.eval.evidence_reference < 1.0:
            raise ConfigError(f"eval.evidence_reference {self.eval.evidence_reference} must be a quantile in [0, 1) "
                              "(0: off)")
        if self.eval.evidence_same_id > 0 and not self.features.identity:
            raise ConfigError("eval.evidence_same_id draws clean frames of the attacked IDs, which the samples no longer "
                              "name with features.identity=false; set one of them back")
        if self.eval.steps < 0 or any(s < 0 or s > self.eval.steps for s in self.eval.report_steps):
            raise ConfigError(f"eval.report_steps {self.eval.report_steps} must lie in 0..eval.steps={self.eval.steps}")
        if not self.eval.finetune_lrs or min(self.eval.finetune_lrs) <= 0:
            raise ConfigError("eval.finetune_lrs must list positive step sizes")
        for key, src in (("source", self.source), ("train_source", self.train_source)):
            if src is None:
                continue
            if src.split not in SPLITS:
                raise ConfigError(f"{key}.split {src.split!r} unknown; use one of {', '.join(SPLITS)}")
        if self.source.bad_id not in ("error", "skip", "keep"):
            raise ConfigError(f"source.bad_id {self.source.bad_id!r} unknown; use error, skip or keep")
        if not 0 < self.source.test_fraction < 1:
            raise ConfigError(f"source.test_fraction must be in (0, 1), got {self.source.test_fraction}")
        if not self.eval.alert_rules:
            raise ConfigError("eval.alert_rules must list at least one 'k-of-n' rule, e.g. ['1-of-1', '2-of-4']")
        if not self.seeds:
            raise ConfigError("seeds must list at least one training seed")
        if self.features.byte_order not in ("auto", "both", "big"):
            raise ConfigError(f"features.byte_order={self.features.byte_order!r} unknown; use auto (both after 30 "
                              "minutes of clean driving), both (big- and little-endian signals) or big "
                              "(big-endian only)")
        if self.features.dbc and not self.features.signals:
            raise ConfigError(f"features.dbc={self.features.dbc} gives the signal features their signals; "
                              "switch them on: features.signals=true")


def read_ids_config(preset: str | Path | None, overrides: Iterable[str] = ()) -> IdsConfig:
    """Defaults, then a preset (name like ``cic`` -> ``presets/ids_cic.yaml``, or a YAML path), then overrides.

    Source kinds unchecked: :func:`fastmaml.apps.ids.registry.load_ids_config` checks them too.
    """
    cfg = load_config(IdsConfig, preset_path(preset), overrides)
    cfg.validate()
    return cfg


def preset_path(name: str | Path | None) -> Path | None:
    """An IDS preset by name (``sim`` -> ``presets/ids_sim.yaml``) or by YAML path."""
    return cliargs.preset_path(name, PRESETS, "ids", "IDS")
