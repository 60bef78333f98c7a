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

Data come from a traffic source (:mod:`fastmaml.apps.ids.sources`: CICIoV2024, DAGA, the CAN
simulator, labelled capture files, the simulated zonal automotive-Ethernet network or labelled
pcaps, or a synthetic source for tests) as :class:`~fastmaml.apps.ids.families.IdsData`: per
attack a ``TaskFamily`` with train/test ``SampleSet`` parts and per-sample rule predictions.
This module knows nothing of the source. A source may name its default held-out set
(``IdsData.default_holdout``; Ethernet: the new flooding attacks).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from fastmaml.apps.ids.alerts import parse_alert_rule
from fastmaml.apps.ids.config import IdsConfig, METHODS, preset_path  # noqa: F401
from fastmaml.apps.ids.episodes import Episodes, check_sizes, fingerprint, fixed_episodes, make_train_sampler
from fastmaml.apps.ids.evidence import Evidence, traffic_seconds
from fastmaml.apps.ids.families import FIT_STREAM, IdsData, Stream
from fastmaml.apps.ids.keys import data_key, eval_key, run_identity
from fastmaml.apps.ids.metrics import curve_metrics, rates
from fastmaml.apps.ids.models import build_model
from fastmaml.apps.ids.operational import (evidence_rule_values, evidence_values, operational_values, stream_values,
                                           summarize_rows)
from fastmaml.apps.ids.registry import TRAFFIC, load_ids_config  # noqa: F401 - load_ids_config: re-exported
from fastmaml.apps.ids.results import (CompareResult, CurveSummary, EpisodeResult, FoldResult, MetricSummary,
                                       SkippedFold, StreamResult)
from fastmaml.apps.ids.samples import BENIGN
from fastmaml.apps.ids.sources import prepare_data
from fastmaml.config import to_dict
from fastmaml.core.maml import MAML, AdaptationCurve, Params
from fastmaml.errors import ConfigError, DataError
from fastmaml.eval.environment import environment
from fastmaml.eval.stats import summarize
from fastmaml.eval.tuning import tune_inner_lr
from fastmaml.fileio import atomic_write_text
from fastmaml.core.batch import TaskBatch
from fastmaml.train.checkpoint import RunDir, checkpoint_meta, load_checkpoint, load_state_into
from fastmaml.train.loop import meta_train


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
        mc = dataclasses.replace(mc, inner_steps=0, step_size="fixed", first_order=False)
    elif method == "fomaml":
        mc = dataclasses.replace(mc, first_order=True)
    elif method == "maml":
        mc = dataclasses.replace(mc, first_order=False)
    else:
        raise ConfigError(f"unknown method {method!r}; choose from {list(METHODS)}")
    return mc.build(model, F.cross_entropy)


# ======================================================================= training
def train_method(cfg: IdsConfig, data: IdsData, known: Sequence[str], method: str, seed: int, run_dir: Path,
                 resume: bool = True) -> tuple[MAML, float]:
    """Meta-train (``maml``, ``fomaml``) or pretrain (``pretrained``) on the known attacks; returns (learner, seconds).

    A finished run in ``run_dir`` is loaded, an unfinished one resumed.
    """
    learner = build_learner(cfg, data, method, seed)
    if method == "scratch":
        return learner, 0.0
    known = data.check_attacks(known, "known attack")
    check_sizes(data, known, "train", cfg.train_shots, cfg.train_query, "train_shots", _train_kind(cfg))
    ident = run_identity(cfg, method, known, seed, data_key(cfg))
    last = RunDir(run_dir).last
    if last.is_file():
        meta = checkpoint_meta(last)
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


def _log(message: str) -> None:
    print(f"[ids] {message}", file=sys.stderr)


def _train_kind(cfg: IdsConfig) -> str:
    """The source kind the known (training) attacks come from, for check_sizes' hints."""
    return (cfg.train_source or cfg.source).kind


# ===================================================================== evaluation
def _params(learner: MAML) -> Params:
    return {k: v.detach() for k, v in learner.params().items()}


def tune_step_size(cfg: IdsConfig, data: IdsData, base: MAML, known: Sequence[str], k: int) -> tuple[float, dict]:
    """Fine-tuning step size with the best mean F1 after ``eval.steps`` steps on known-attack episodes."""
    e = cfg.eval
    check_sizes(data, known, "train", k, e.query, "eval.shots (the step size is tuned on known-attack episodes)",
                _train_kind(cfg))
    n_each = max(1, e.tuning_episodes // len(known))
    batches = [fixed_episodes(data, a, "train", k, e.query, n_each, e.tuning_seed).batch for a in known]
    batch = TaskBatch(*(torch.cat([getattr(b, a) for b in batches]) for a in
                        ("support_x", "support_y", "query_x", "query_y")))
    return tune_inner_lr(base, batch, e.finetune_lrs, e.steps, _f1_then_loss, {"f1": curve_metrics()["f1"]},
                         _params(base))


def _f1_then_loss(curve: AdaptationCurve) -> tuple[tuple[float, float], dict[str, float]]:
    """Best mean F1 after the last step; the lower query loss breaks ties."""
    f1 = curve.metrics["f1"][:, -1].mean().item()
    loss = curve.losses[:, -1].mean().item()
    loss = loss if loss == loss else float("inf")
    return (f1, -loss), {"f1": f1, "loss": loss}


def curve_values(runner: MAML, params: Params, ep: Episodes, steps: int) -> dict[str, torch.Tensor]:
    """Per-episode metrics ``[T, steps+1]`` (and query loss) of one method on fixed episodes."""
    curve = runner.adaptation_curve(ep.batch, steps=steps, metrics=curve_metrics(), params=params)
    return {**{m: v.float() for m, v in curve.metrics.items()}, "loss": curve.losses.float()}


def rule_values(ep: Episodes) -> dict[str, dict[str, torch.Tensor]]:
    """Per-episode metrics ``[T]`` of each rule on the episodes' query samples."""
    y = ep.batch.query_y == 1
    return {r: rates(p, y) for r, p in ep.rule_preds.items()}


def fold_name(holdout: Sequence[str]) -> str:
    return "+".join(holdout)


def _size_problem(data: IdsData, names: Sequence[str], split: str, k: int, q: int, key: str, kind: str) -> str | None:
    """check_sizes' message, or None when the parts are large enough."""
    try:
        check_sizes(data, names, split, k, q, key, kind)
    except DataError as err:
        return str(err)
    return None


def fitting_shots(cfg: IdsConfig, data: IdsData, known: Sequence[str], holdout: Sequence[str]
                  ) -> tuple[list[int], dict[int, str]]:
    """The Ks of ``eval.shots`` a fold can evaluate, and for the others why not.

    A K fits when every held-out attack's test part holds K + Q samples per class and, where a
    method's fine-tuning step size is tuned on known-attack episodes, every known attack's
    training part does too. So a small attack type costs only the Ks it cannot fill.
    """
    e = cfg.eval
    tuned = any(m in ("scratch", "pretrained") for m in cfg.methods)
    fit: list[int] = []
    why: dict[int, str] = {}
    for k in e.shots:
        problem = _size_problem(data, holdout, "test", k, e.query, "eval.shots", cfg.source.kind)
        if problem is None and tuned:
            problem = _size_problem(data, known, "train", k, e.query,
                                    "eval.shots (the step size is tuned on known-attack episodes)", _train_kind(cfg))
        if problem is None:
            fit.append(k)
        else:
            why[k] = problem
    return fit, why


def fitting_query(cfg: IdsConfig, data: IdsData, known: Sequence[str], holdout: Sequence[str]) -> int | None:
    """The largest query size below ``eval.query`` with which some K of ``eval.shots`` fits (None: none does).

    A small attack type would rather be scored on fewer query samples than not at all.
    """
    for q in range(cfg.eval.query - 1, 0, -1):
        smaller = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, query=q))
        if fitting_shots(smaller, data, known, holdout)[0]:
            return q
    return None


@dataclass
class _FoldRecord:
    """What a fold collects while its methods are trained and adapted (then summarized into its FoldResult)."""

    values: dict[str, dict[int, dict[str, list[dict[str, torch.Tensor]]]]]  # attack -> K -> method -> per-seed curves
    fingerprints: dict[str, dict[int, dict[str, str]]]  # attack -> K -> method -> episodes' fingerprint
    train_seconds: dict[str, float] = field(default_factory=dict)
    step_sizes: dict[str, dict[int, float]] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    ops: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)  # attack -> method -> stream rows


def _partners(data: IdsData) -> dict[int, set[int]]:
    """Stream key -> keys its signals are checked against (an alert there saw an attack on the key)."""
    if data.feature_state is None:
        return {}
    traffic = TRAFFIC[data.traffic]
    return traffic.partners(traffic.load_state(data.feature_state, "feature state"))


def _fold_sizes(cfg: IdsConfig, data: IdsData, known: list[str], holdout: Sequence[str], name: str,
                log: Callable[[str], None]) -> tuple[IdsConfig, list[int], dict[int, str]]:
    """The Ks that fit (with the query set shrunk when none does) and the config they run under."""
    e = cfg.eval
    shots, skipped_shots = fitting_shots(cfg, data, known, holdout)
    if not shots:
        q = fitting_query(cfg, data, known, holdout)
        if q is None:
            raise DataError(f"no K of eval.shots {e.shots} fits: {skipped_shots[min(e.shots)]}")
        log(f"fold {name}: no K of eval.shots {e.shots} fits with eval.query={e.query} "
            f"({skipped_shots[min(e.shots)]}); query shrunk to {q} per class")
        # Everything below (episodes, step-size tuning, the cache key) uses the shrunk query.
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(e, query=q))
        shots, skipped_shots = fitting_shots(cfg, data, known, holdout)
    for k, why in skipped_shots.items():
        log(f"fold {name}: K = {k} left out: {why}")
    return cfg, shots, skipped_shots


def _train_and_adapt(cfg: IdsConfig, data: IdsData, known: list[str], holdout: Sequence[str], name: str,
                     shots: list[int], episodes: dict[str, dict[int, Episodes]], out_dir: Path, resume: bool,
                     log: Callable[[str], None]) -> _FoldRecord:
    """Train each (seed, method), adapt it on every test episode, and stream the first few adapted detectors."""
    e = cfg.eval
    alert_rules = [parse_alert_rule(r) for r in e.alert_rules]
    partners = _partners(data)
    rec = _FoldRecord({a: {} for a in holdout}, {a: {k: {} for k in shots} for a in holdout})
    for seed in cfg.seeds:
        for method in cfg.methods:
            run_dir = Path(out_dir) / "runs" / name / f"{method}-s{seed}"
            if method != "scratch":
                log(f"fold {name}: training {method} (seed {seed}) on {known}")
            learner, secs = train_method(cfg, data, known, method, seed, run_dir, resume=resume)
            rec.train_seconds[f"{method}-s{seed}"] = secs
            params = _params(learner)
            for k in shots:
                if method in ("scratch", "pretrained"):
                    lr, scores = tune_step_size(cfg, data, learner, known, k)
                    rec.step_sizes.setdefault(f"{method}-s{seed}", {})[k] = lr
                    rec.tuning.setdefault(f"{method}-s{seed}", {})[str(k)] = scores
                    runner = learner.with_inner_lr(lr)
                else:
                    runner = learner
                for a in holdout:
                    ep = episodes[a][k]
                    rec.fingerprints[a][k][method] = fingerprint(ep.batch)
                    rec.values[a].setdefault(k, {}).setdefault(method, []).append(
                        curve_values(runner, params, ep, e.steps))
                    if k == e.figure_shot and e.operational_episodes and a in data.streams:
                        rows = operational_values(
                            runner, params, ep, e.steps, data.streams[a], data.streams.get(BENIGN),
                            e.operational_episodes, cfg.source.occurrence_gap_s, data.streams.get(FIT_STREAM),
                            e.calibrate_fpr, e.alert_budget_per_hour, alert_rules)
                        if _with_evidence(cfg, data):
                            ev_rows = evidence_values(
                                runner, params, ep, e.steps, data.streams[a], data.streams.get(BENIGN),
                                data.streams[FIT_STREAM], e.operational_episodes, e.alert_budget_per_hour,
                                cfg.source.occurrence_gap_s, partners, e.evidence_benign,
                                Evidence(clip=e.evidence_clip, drift=e.evidence_drift,
                                         reference=e.evidence_reference, per_key=e.evidence_per_key,
                                         key_scaled=e.evidence_key_scale),
                                seed, _occurrence_groups(data, a), e.evidence_same_id,
                                TRAFFIC[data.traffic].sample_keys(data.feature_names), e.evidence_union,
                                e.evidence_benign_per_id)
                            rows = [{**r, **v} for r, v in zip(rows, ev_rows)]
                        rec.ops.setdefault(a, {}).setdefault(method, []).extend(rows)
    return rec


def _curve(values: torch.Tensor) -> CurveSummary:
    return CurveSummary.from_dict(summarize(values))


def _episode_results(cfg: IdsConfig, holdout: Sequence[str], shots: list[int],
                     episodes: dict[str, dict[int, Episodes]], rec: _FoldRecord) -> dict[str, dict[int, EpisodeResult]]:
    """Per held-out attack and K: each method's metrics (seeds pooled) and each rule's, on the same episodes."""
    results: dict[str, dict[int, EpisodeResult]] = {}
    for a in holdout:
        results[a] = {}
        for k in shots:
            ep = episodes[a][k]
            # Seeds pooled: the CI is over (seed, episode) pairs.
            methods = {method: {m: _curve(torch.cat([r[m] for r in runs])) for m in runs[0]}
                       for method, runs in rec.values[a][k].items()}
            rules = {r: {m: _curve(v) for m, v in vals.items()} for r, vals in rule_values(ep).items()}
            results[a][k] = EpisodeResult(a, k, methods, rules, cfg.eval.episodes, ep.fingerprint,
                                          rec.fingerprints[a][k])
    return results


def _stream_results(cfg: IdsConfig, data: IdsData, rec: _FoldRecord) -> dict[str, StreamResult]:
    """Per held-out attack with a test-period stream: the streamed detectors (summarized) and the rules on it."""
    e = cfg.eval
    alert_rules = [parse_alert_rule(r) for r in e.alert_rules]
    gap = cfg.source.occurrence_gap_s
    partners = _partners(data)
    operational = {}
    for a, by_method in rec.ops.items():
        st, clean = data.streams[a], data.streams.get(BENIGN)
        rules = {}
        for r, v in st.rules.items():
            row = {f"attack/{m}": x for m, x in stream_values(v.numpy(), st, gap, alert_rules).items()}
            if clean is not None and r in clean.rules:
                row.update({f"clean/{m}": x for m, x in stream_values(clean.rules[r].numpy(), clean, gap,
                                                                      alert_rules).items()})
            rules[r] = row
        if _with_evidence(cfg, data):
            for r, v in evidence_rule_values(st, clean, data.streams[FIT_STREAM], e.alert_budget_per_hour, gap,
                                             partners, _occurrence_groups(data, a), e.evidence_per_key).items():
                rules.setdefault(r, {}).update(v)
        operational[a] = StreamResult(
            attack=a, rules=rules, shots=e.figure_shot, attack_minutes=_minutes(st),
            clean_minutes=_minutes(clean) if clean is not None else None, steps=e.steps,
            detectors_per_method=len(next(iter(by_method.values()))), stream=st.source,
            clean_stream=getattr(clean, "source", None),
            methods={meth: {m: MetricSummary.from_dict(v) for m, v in summarize_rows(rows).items()}
                     for meth, rows in by_method.items()})
    return operational


def run_fold(cfg: IdsConfig, data: IdsData, holdout: Sequence[str], out_dir: Path, resume: bool = True,
             log: Callable[[str], None] | None = None) -> FoldResult:
    """Train every method without ``holdout``, evaluate on the held-out attacks; cached in ``out_dir/evals``.

    Ks of ``eval.shots`` the data cannot fill are left out and listed under ``skipped_shots``.
    When none fits, the query set shrinks to the largest size that lets one fit (``query`` in
    the result says the size used, ``query_shrunk_from`` the configured one); DataError when
    even one query sample per class does not fit (the comparison then skips the fold).
    """
    log = log or _log
    holdout = data.check_attacks(holdout, "held-out attack")
    known = [a for a in data.attacks if a not in holdout]
    if not known:
        raise DataError(f"holding out {holdout} leaves no attack to meta-train on; hold out fewer attacks")
    name = fold_name(holdout)
    configured_query = cfg.eval.query
    cfg, shots, skipped_shots = _fold_sizes(cfg, data, known, holdout, name, log)
    e = cfg.eval
    key = eval_key(cfg, known, holdout, data_key(cfg))
    cache = Path(out_dir) / "evals" / f"{name}.json"
    if resume and cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            log(f"fold {name}: finished earlier, reusing {cache}")
            return FoldResult.from_dict(cached)
    t_fold = time.perf_counter()
    episodes = {a: {k: fixed_episodes(data, a, "test", k, e.query, e.episodes, e.seed) for k in shots}
                for a in holdout}
    rec = _train_and_adapt(cfg, data, known, holdout, name, shots, episodes, out_dir, resume, log)
    operational = _stream_results(cfg, data, rec)
    out = FoldResult(fold=name, holdout=list(holdout), known=known, key=key,
                     results=_episode_results(cfg, holdout, shots, episodes, rec), step_sizes=rec.step_sizes,
                     step_size_tuning=rec.tuning, train_seconds=rec.train_seconds,
                     seconds=time.perf_counter() - t_fold, operational=operational, skipped_shots=skipped_shots,
                     query=e.query, query_shrunk_from=configured_query if e.query != configured_query else None)
    atomic_write_text(cache, json.dumps(out.to_dict(), indent=1) + "\n")
    return out


def _with_query_notes(stats: dict[str, Any], folds: list[FoldResult]) -> dict[str, Any]:
    """``stats`` plus a note (the report prints ``notes`` at its top) per fold scored on a shrunk query set."""
    notes = [f"**Fold {f.fold}: query set shrunk to Q = {f.query} per class** (eval.query = "
             f"{f.query_shrunk_from}): its data held too few samples for K + Q at any K of eval.shots."
             for f in folds if f.query_shrunk_from is not None]
    if not notes:
        return stats
    return {**stats, "notes": list(stats.get("notes", [])) + notes}


def _with_evidence(cfg: IdsConfig, data: IdsData) -> bool:
    """Evidence over time is judged where there is benign traffic before the cut to set its threshold on."""
    e = cfg.eval
    return bool(e.evidence_benign and e.alert_budget_per_hour and FIT_STREAM in data.streams
                and data.window is None)


def _occurrence_groups(data: IdsData, attack: str) -> Callable[[Any], str | None] | None:
    """Generated masquerades: an occurrence's group is whether its injection's target signal has a partner."""
    plans = (data.stats.get("masquerade") or {}).get("injections", {}).get(attack.rsplit("_", 1)[0])
    if not plans:
        return None

    def group(o: Any) -> str | None:
        for inj in plans:
            if inj["can_id"] == o.key and inj["t0"] - 0.5 <= o.start <= inj["t1"] + 0.5:
                return "partnered" if inj.get("partnered", True) else "unpartnered"
        return None

    return group


def _minutes(st: Stream) -> float:
    """How long a stream lasts (minutes of traffic)."""
    return traffic_seconds(st.clock.double().numpy() * st.clock_unit_s) / 60.0


def default_folds(data: IdsData) -> list[list[str]]:
    """The source's default held-out set (Ethernet simulator: the new flooding attacks), else leave-one-attack-out."""
    if data.default_holdout:
        return [list(f) for f in data.default_holdout]
    return leave_one_out(data)


def leave_one_out(data: IdsData) -> list[list[str]]:
    """One fold per attack."""
    return [[a] for a in data.attacks]


def compare(cfg: IdsConfig, out_dir: Path, folds: list[list[str]] | None = None, resume: bool = True,
            command: str = "", data: IdsData | None = None) -> CompareResult:
    """Run every fold (skipping finished ones), then write results.json, report.md and figures to ``out_dir``.

    A fold the data cannot serve (an attack the source could not cut, a test part too small for
    any K of eval.shots, ...) is logged, listed under ``skipped_folds`` with its reason, and the
    other folds still run; DataError when every fold is skipped.
    """
    from fastmaml.apps.ids import report as R

    cfg.validate()
    try:
        [parse_alert_rule(r) for r in cfg.eval.alert_rules]
    except DataError as err:
        raise ConfigError(f"eval.alert_rules: {err}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = data if data is not None else prepare_data(cfg, out_dir / "data")
    # Attacks the source could not split (source.split=auto): their folds are reported as skipped.
    uncut: dict[str, str] = (data.stats.get("split") or {}).get("skipped", {})
    folds = folds or (default_folds(data) + [[a] for a in uncut])
    for f in folds:
        data.check_attacks([a for a in f if a not in uncut], "held-out attack")
    seen: set[str] = set()
    for f in folds:
        dup = seen & set(f)
        if dup:
            raise DataError(f"attack(s) {sorted(dup)} held out in more than one fold; give each attack to one fold")
        seen |= set(f)
    prep_seconds = time.perf_counter() - t0
    fold_results: list[FoldResult] = []
    skipped: list[SkippedFold] = []  # the folds the data cannot serve
    for f in folds:
        why = "; ".join(f"attack {a!r} could not be split: {uncut[a]}" for a in f if a in uncut)
        if not why:
            try:
                fold_results.append(run_fold(cfg, data, f, out_dir, resume=resume))
                continue
            except DataError as err:  # this fold's data cannot serve it; the others may
                why = str(err)
        _log(f"fold {fold_name(f)}: skipped: {why}")
        skipped.append(SkippedFold(fold_name(f), list(f), why))
    if not fold_results:
        raise DataError("every fold was skipped: " + "; ".join(f"fold {s.fold}: {s.reason}" for s in skipped))
    report = CompareResult(
        experiment="ids-fewshot", command=command, config=to_dict(cfg), source=data.source, traffic=data.traffic,
        feature_names=data.feature_names, window=data.window,
        data_stats=_with_query_notes(data.stats, fold_results), folds=fold_results, skipped_folds=skipped,
        prep_seconds=prep_seconds, total_seconds=time.perf_counter() - t0,
        fold_seconds_sum=sum(f.seconds for f in fold_results), environment=environment())
    R.write_report(report, out_dir)
    return report


def meta_train_detector(cfg: IdsConfig, attacks: Sequence[str], out_dir: Path, method: str = "maml",
                        seed: int | None = None, resume: bool = True) -> Path:
    """Meta-train a detector on ``attacks`` and save it (weights + JSON) to ``out_dir/detector``.

    No ``attacks``: every attack of the source except its default held-out ones (Ethernet
    simulator: the flooding variants), which stay new for ``fastmaml ids adapt``; where those
    folds cover every attack (masquerade: each kind is a fold), every attack of the source.
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
        if not attacks:
            # The default folds are a rotation over all attacks (masquerade: one fold per kind), not
            # attacks kept new: training on none of them would leave nothing to learn from.
            attacks = list(data.attacks)
        if not attacks:
            raise DataError(f"{data.source} has no attack to train on; pass --attacks A,B (source.attacks) "
                            "naming attacks the source holds")
    if data.feature_state is None:
        raise ConfigError(f"source {cfg.source.kind!r} has no feature state, so its detector cannot stream "
                          "captures; use a source of real or simulated captures")
    seed = cfg.seeds[0] if seed is None else seed
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {list(METHODS)}")
    learner, _ = train_method(cfg, data, attacks, method, seed, out_dir / "run", resume=resume)
    if method in ("pretrained", "scratch"):
        # The step size it is fine-tuned with, tuned on the training attacks (scratch: the baseline that
        # learns nothing before the K shots, the same random init and tuning as in `ids compare`).
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
