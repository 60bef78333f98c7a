"""What a comparison produces, typed: per fold, per held-out attack and K, per method (results.json, evals/).

:func:`fastmaml.apps.ids.experiment.run_fold` builds a :class:`FoldResult`,
:func:`~fastmaml.apps.ids.experiment.compare` a :class:`CompareResult`; the report reads their
attributes. Names that are data stay keys of mappings: attack, method, rule and run names, and the
metric names (``"f1"``, ``"evidence/attack/caught_rate"``, ...) inside one method's or rule's metrics.

``to_dict()`` gives the JSON written to ``results.json`` and ``evals/<fold>.json`` (K as a string
key there); ``from_dict()`` reads it back, including files written before a field existed (such a
field reads as None and stays out of ``to_dict()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _opt(d: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """``d`` plus the ``fields`` that are not None (fields an older results file lacks stay out)."""
    return {**d, **{k: v for k, v in fields.items() if v is not None}}


def _by_k(d: dict[str, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in d.items()}


def _str_k(d: dict[int, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in d.items()}


# ==================================================================== summaries
@dataclass
class CurveSummary:
    """Mean and 95% CI over episodes of one metric after each fine-tuning step (``eval.stats.summarize``).

    A rule needs no adaptation: its lists hold one value. Where some episodes diverged (nan/inf),
    ``nonfinite`` counts them per step and ``finite_mean``/``finite_ci95`` summarize the others.
    """

    mean: list[float]
    ci95: list[float]
    nonfinite: list[int] | None = None
    finite_mean: list[float] | None = None
    finite_ci95: list[float] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CurveSummary:
        return cls(d["mean"], d["ci95"], d.get("nonfinite"), d.get("finite_mean"), d.get("finite_ci95"))

    def to_dict(self) -> dict[str, Any]:
        return _opt({"mean": self.mean, "ci95": self.ci95}, nonfinite=self.nonfinite, finite_mean=self.finite_mean,
                    finite_ci95=self.finite_ci95)


@dataclass
class MetricSummary:
    """Mean and 95% CI of one stream metric over the adapted detectors; ``n`` detectors had a value (not NaN)."""

    mean: float
    ci95: float
    n: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetricSummary:
        return cls(d["mean"], d["ci95"], d["n"])

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci95": self.ci95, "n": self.n}


Curves = dict[str, CurveSummary]  # metric name -> its summary per step
StreamMetrics = dict[str, MetricSummary]  # metric name -> its summary over the streamed detectors


def _curves(d: dict[str, dict[str, Any]]) -> dict[str, Curves]:
    return {name: {m: CurveSummary.from_dict(s) for m, s in metrics.items()} for name, metrics in d.items()}


def _curves_dict(d: dict[str, Curves]) -> dict[str, Any]:
    return {name: {m: s.to_dict() for m, s in metrics.items()} for name, metrics in d.items()}


# ===================================================================== episodes
@dataclass
class EpisodeResult:
    """One held-out attack at one K: every method (seeds pooled) and every rule on the same fixed test episodes."""

    attack: str
    shots: int
    methods: dict[str, Curves]  # method -> metric -> summary per step
    rules: dict[str, Curves]  # rule -> metric -> summary (one value) on the episodes' query samples
    episodes: int
    fingerprint: str  # of the test episodes
    method_fingerprints: dict[str, str]  # method -> fingerprint of the episodes it was scored on

    @classmethod
    def from_dict(cls, attack: str, shots: int, d: dict[str, Any]) -> EpisodeResult:
        return cls(attack, shots, _curves(d["methods"]), _curves(d["rules"]), d["episodes"], d["fingerprint"],
                   d["method_fingerprints"])

    def to_dict(self) -> dict[str, Any]:
        return {"methods": _curves_dict(self.methods), "rules": _curves_dict(self.rules), "episodes": self.episodes,
                "fingerprint": self.fingerprint, "method_fingerprints": self.method_fingerprints}


# ====================================================================== streams
@dataclass
class StreamResult:
    """One held-out attack's test-period stream judged frame by frame (``operational`` in the JSON).

    ``methods``: the adapted detectors' stream metrics summarized over detectors; ``rules``: each
    rule's values on the same streams (one rule, one value). Metric names as
    :mod:`fastmaml.apps.ids.operational` and :mod:`~fastmaml.apps.ids.evidence` give them
    (``"attack/frame_recall"``, ``"budget-2-of-4/clean/2-of-4/false_alerts_per_hour"``,
    ``"evidence/attack/caught_rate"``, ...).
    """

    attack: str
    rules: dict[str, dict[str, float | None]]
    shots: int  # K of the streamed detectors (eval.figure_shot)
    attack_minutes: float  # how long the attack stream lasts
    clean_minutes: float | None  # ... and the clean stream (None: the source has none)
    steps: int
    detectors_per_method: int
    stream: str  # what the attack stream is (for the report)
    clean_stream: str | None
    methods: dict[str, StreamMetrics]

    @classmethod
    def from_dict(cls, attack: str, d: dict[str, Any]) -> StreamResult:
        return cls(attack, d["rules"], d["shots"], d["minutes"]["attack"], d["minutes"].get("clean"), d["steps"],
                   d["detectors_per_method"], d["stream"], d["clean_stream"],
                   {m: {k: MetricSummary.from_dict(s) for k, s in v.items()} for m, v in d["methods"].items()})

    def to_dict(self) -> dict[str, Any]:
        return {"rules": self.rules, "shots": self.shots,
                "minutes": _opt({"attack": self.attack_minutes}, clean=self.clean_minutes), "steps": self.steps,
                "detectors_per_method": self.detectors_per_method, "stream": self.stream,
                "clean_stream": self.clean_stream,
                "methods": {m: {k: s.to_dict() for k, s in v.items()} for m, v in self.methods.items()}}


# ======================================================================== folds
@dataclass
class FoldResult:
    """One fold: the methods trained without ``holdout`` and evaluated on it (``evals/<fold>.json``).

    ``results``: held-out attack -> K -> :class:`EpisodeResult` (only the Ks that fit; the others
    and why under ``skipped_shots``). ``operational``: held-out attack -> :class:`StreamResult`
    (attacks with a test-period stream). ``query``: query samples per class used, and where that
    is fewer than configured, ``query_shrunk_from`` the configured size. Runs are named
    ``<method>-s<seed>``. Fields None were not written by the version that made the file.
    """

    fold: str
    holdout: list[str]
    known: list[str]
    key: str  # the fold evaluation's cache key (keys.eval_key)
    results: dict[str, dict[int, EpisodeResult]]
    step_sizes: dict[str, dict[int, float]]  # run -> K -> tuned fine-tuning step size (scratch, pretrained)
    step_size_tuning: dict[str, Any]  # run -> K -> step size -> mean F1 and loss (eval.tuning.tune_inner_lr)
    train_seconds: dict[str, float]  # run -> seconds (0: loaded, not trained)
    seconds: float
    operational: dict[str, StreamResult] | None = None
    skipped_shots: dict[int, str] | None = None  # K -> why the data cannot serve it
    query: int | None = None
    query_shrunk_from: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FoldResult:
        ops = d.get("operational")
        skipped = d.get("skipped_shots")
        return cls(
            fold=d["fold"], holdout=d["holdout"], known=d["known"], key=d["key"],
            results={a: {int(k): EpisodeResult.from_dict(a, int(k), e) for k, e in per_k.items()}
                     for a, per_k in d["results"].items()},
            step_sizes={run: _by_k(v) for run, v in d["step_sizes"].items()},
            step_size_tuning=d["step_size_tuning"], train_seconds=d["train_seconds"], seconds=d["seconds"],
            operational=None if ops is None else {a: StreamResult.from_dict(a, o) for a, o in ops.items()},
            skipped_shots=None if skipped is None else _by_k(skipped), query=d.get("query"),
            query_shrunk_from=d.get("query_shrunk_from"))

    def to_dict(self) -> dict[str, Any]:
        ops = None if self.operational is None else {a: o.to_dict() for a, o in self.operational.items()}
        d = _opt({"fold": self.fold}, operational=ops)
        d.update({"holdout": self.holdout, "known": self.known, "key": self.key,
                  "results": {a: {str(k): e.to_dict() for k, e in per_k.items()} for a, per_k in self.results.items()}})
        d = _opt(d, skipped_shots=None if self.skipped_shots is None else _str_k(self.skipped_shots), query=self.query,
                 query_shrunk_from=self.query_shrunk_from)
        d.update({"step_sizes": {run: _str_k(v) for run, v in self.step_sizes.items()},
                  "step_size_tuning": self.step_size_tuning, "train_seconds": self.train_seconds,
                  "seconds": self.seconds})
        return d


@dataclass
class SkippedFold:
    """A fold the data could not serve (not trained), and why."""

    fold: str
    holdout: list[str]
    reason: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SkippedFold:
        return cls(d["fold"], d["holdout"], d["reason"])

    def to_dict(self) -> dict[str, Any]:
        return {"fold": self.fold, "holdout": self.holdout, "reason": self.reason}


# =================================================================== comparison
@dataclass
class CompareResult:
    """A whole comparison (``results.json``): the config it ran, its data and every fold.

    ``config`` is the config as run (``fastmaml.config.to_dict``), ``data_stats`` the source's
    statistics (counts, split, per-kind notes), both as plain JSON. ``traffic`` and
    ``skipped_folds`` are None in results written before they existed (traffic: CAN then).
    """

    experiment: str
    command: str
    config: dict[str, Any]
    source: str
    feature_names: list[str]
    window: int | None
    data_stats: dict[str, Any]
    folds: list[FoldResult]
    prep_seconds: float
    total_seconds: float
    fold_seconds_sum: float
    environment: dict[str, Any]
    traffic: str | None = None
    skipped_folds: list[SkippedFold] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompareResult:
        skipped = d.get("skipped_folds")
        return cls(
            experiment=d["experiment"], command=d["command"], config=d["config"], source=d["source"],
            feature_names=d["feature_names"], window=d["window"], data_stats=d["data_stats"],
            folds=[FoldResult.from_dict(f) for f in d["folds"]], prep_seconds=d["prep_seconds"],
            total_seconds=d["total_seconds"], fold_seconds_sum=d["fold_seconds_sum"], environment=d["environment"],
            traffic=d.get("traffic"),
            skipped_folds=None if skipped is None else [SkippedFold.from_dict(s) for s in skipped])

    def to_dict(self) -> dict[str, Any]:
        d = {"experiment": self.experiment, "command": self.command, "config": self.config, "source": self.source}
        d = _opt(d, traffic=self.traffic)
        d.update({"feature_names": self.feature_names, "window": self.window, "data_stats": self.data_stats,
                  "folds": [f.to_dict() for f in self.folds]})
        d = _opt(d, skipped_folds=None if self.skipped_folds is None else [s.to_dict() for s in self.skipped_folds])
        d.update({"prep_seconds": self.prep_seconds, "total_seconds": self.total_seconds,
                  "fold_seconds_sum": self.fold_seconds_sum, "environment": self.environment})
        return d
