"""CAN traffic sources for the IDS experiment: CICIoV2024, the simulator, DAGA and labelled captures.

Each ``prepare_*`` reads frames, fits the feature state and the rule baselines on benign
training traffic only, featurizes every capture part on its own and returns :class:`IdsData`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fastmaml.apps.ids.can import road
from fastmaml.apps.ids.can import sim as can_sim
from fastmaml.apps.ids.can.baselines import (AllowListRule, AnyOfRules, PayloadRangeRule, PlausibilityRule,
                                             SignalRangeRule, TimingRule)
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer, build_sample_set, frame_feature_names
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.readers import open_capture
from fastmaml.apps.ids.can.states import LONG_DRIVE_S
from fastmaml.apps.ids.config import CaptureSpec, FeatureConfig, SourceConfig, data_folder
from fastmaml.apps.ids.families import (FIT_STREAM, IdsData, Stream, TaskFamily, cap, drop_features,
                                       rule_predictions, unseen_id_fraction)
from fastmaml.apps.ids.samples import BENIGN, SampleSet
from fastmaml.apps.ids.splits import (FILE_SPLITS, Cut, SplitPlan, check_both_sides, occurrence_cut, plan_split,
                                      time_cut)
from fastmaml.errors import ConfigError, DataError


def state_rules(state: FeatureState) -> dict[str, Any]:
    """The rules a fitted FeatureState alone defines (periods, signals and their clean statistics): a detector folder
    carries them, so a deployed detector runs them without its clean capture."""
    rules: dict[str, Any] = {"timing": TimingRule().fit(state)}
    if state.signals:  # the rules a vehicle would write on the same signals
        rules.update(signal_range=SignalRangeRule(), plausibility=PlausibilityRule.for_state(state))
        # the two a vehicle runs beside a detector, as one channel (baselines.AnyOfRules)
        rules["plausibility_timing"] = AnyOfRules({"plausibility": rules["plausibility"], "timing": rules["timing"]})
    return rules


def _fit_rules(benign: FrameBatch | list[FrameBatch], state: FeatureState) -> dict[str, Any]:
    """Every rule baseline: :func:`state_rules` and the two fitted on the clean frames themselves."""
    own = state_rules(state)
    rules = {"id_allow_list": AllowListRule().fit(benign), "timing": own.pop("timing"),
             "payload_range": PayloadRangeRule().fit(benign)}
    rules.update(own)
    return rules


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
        sets[split] = cap(s, feat.max_benign, feat.max_attack, feat.seed)
    return TaskFamily(name, sets["train"], sets["test"], rule_predictions(sets["train"], rules),
                      rule_predictions(sets["test"], rules))


def _split_frames(b: FrameBatch, test_fraction: float) -> dict[str, FrameBatch]:
    cut = int(round(len(b) * (1 - test_fraction)))
    return {"train": b.select(slice(0, cut)), "test": b.select(slice(cut, len(b)))}


def prepare_cic(src: SourceConfig, feat: FeatureConfig, log: Callable[[str], None], workdir: Path | None = None) -> IdsData:
    """CICIoV2024 decimal CSVs: benign capture + one capture per attack (attack frames only)."""
    folder = data_folder(src, src.cic.dir, "ids/ciciov2024/decimal", "CICIoV2024")
    benign_files = sorted(folder.glob("decimal_benign.csv*"))
    attack_files = sorted(f for f in folder.glob("decimal_*.csv") if "benign" not in f.name)
    if not benign_files or not attack_files:
        raise DataError(f"{folder}: expected decimal_benign.csv(.zip) and decimal_<attack>.csv files; found "
                        f"{sorted(p.name for p in folder.iterdir())}")
    log(f"reading {benign_files[0].name}")
    benign = _split_frames(open_capture(benign_files[0]).read_all(), src.test_fraction)
    state = FeatureState.fit(benign["train"], signals=feat.signals, dbc=feat.dbc,
                             byte_order=feat.byte_order)
    rules = _fit_rules(benign["train"], state)
    ben_sets = {split: cap(build_sample_set(b, state, window=feat.window, stride=feat.stride,
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


def prepare_sim(src: SourceConfig, feat: FeatureConfig, log: Callable[[str], None], workdir: Path | None = None) -> IdsData:
    """The CAN simulator: train and test captures are two drives (seeds); features fitted on a third."""
    fit = can_sim.simulate("none", src.sim.duration_s, src.sim.fit_seed)
    state = FeatureState.fit(fit, signals=feat.signals, dbc=feat.dbc,
                             byte_order=feat.byte_order)
    rules = _fit_rules(fit, state)
    attacks = src.attacks or list(can_sim.ATTACKS)
    bad = [a for a in attacks if a not in can_sim.ATTACKS]
    if bad:
        raise DataError(f"unknown simulator attack(s) {bad}; valid attacks: {list(can_sim.ATTACKS)}")
    families = {}
    for a in attacks:
        log(f"simulating {a} ({src.sim.duration_s:.0f} s train + test captures)")
        parts = {"train": can_sim.simulate(a, src.sim.duration_s, src.sim.train_seed),
                 "test": can_sim.simulate(a, src.sim.duration_s, src.sim.test_seed)}
        families[a] = _family_from_frames(a, parts, state, feat, rules)
    return _finish(families, state, feat, "CAN simulator", [])


def read_labelled(spec: CaptureSpec, src: SourceConfig, log: Callable[[str], None], clean: bool = False) -> FrameBatch:
    """One labelled capture; ``spec.attack`` renames its attack frames (one-attack files).

    ``clean``: the capture is known to be attack-free, so frames without labels count as benign.
    A capture with neither a side label file nor labels of its own is taken as clean too (a
    clean drive beside the attack captures needs no all-benign label file), and the log says so.
    """
    kw: dict[str, Any] = {"skip_malformed": src.skip_malformed}
    if src.bad_id != "error":
        kw["bad_id"] = src.bad_id
    metadata = bool(spec.labels) and road.is_metadata(spec.labels)
    if spec.labels and not metadata:
        kw["labels"] = spec.labels
    if spec.columns:
        kw["columns"] = spec.columns
    if spec.label_column != 1:
        kw["label_column"] = spec.label_column
    reader = open_capture(spec.path, spec.format, **kw)
    log(f"reading {spec.path}")
    frames = reader.read_all()
    if reader.stats.lines_skipped:
        log(f"{spec.path}: skipped {reader.stats.lines_skipped} line(s), e.g. {reader.stats.skip_reasons[:3]}")
    if metadata:  # labelled by an injection metadata file (road.py)
        entries = road.read_metadata(spec.labels)
        stem = Path(spec.path).stem
        if stem not in entries:
            raise DataError(f"{spec.labels}: no entry for {stem!r} (the log {spec.path}); give the metadata file "
                            "that came with the logs")
        if entries[stem].unusable:
            raise DataError(f"{spec.path}: cannot be labelled frame by frame ({entries[stem].unusable}); leave it out")
        road.label(frames, entries[stem], spec.path)
    if not clean and not spec.labels and len(frames) and (frames.label < 0).all():
        log(f"{spec.path}: no label file and no labels in the capture: all {len(frames)} frames count as benign")
        clean = True
    if clean:
        names = list(frames.label_names) + ([] if BENIGN in frames.label_names else [BENIGN])
        frames.label = np.where(frames.label < 0, names.index(BENIGN), frames.label).astype(np.int16)
        frames.label_names = names
    if len(frames) and (frames.label < 0).all():
        raise DataError(f"{spec.path}: frames carry no labels; give a label file (labels: ...) for this capture")
    if spec.attack:
        attack = frames.is_attack()
        frames.label = np.where(attack, 1, np.where(frames.label < 0, -1, 0)).astype(np.int16)
        frames.label_names = [BENIGN, spec.attack]
    return frames


# Benign frames kept for threshold calibration: about 20 minutes of a busy bus (1,700 frames/s), as much as it takes
# to *verify* a budget of 10 false alerts an hour (18 minutes without an alert) rather than extrapolate it from a
# few minutes' tail. The frames are featurized anyway; this bounds memory (~120 bytes a frame) and scoring time.
_MAX_FIT_STREAM = 2_000_000
# Where the clean captures hold more, calibration keeps that many frames in this many contiguous pieces spread over
# all of them: a folder's first drive alone may be an hour of idling on a dynamometer, and a threshold set on it
# would meet the motorway only after the cut.
_CALIBRATION_PIECES = 12
_FEATURIZE_CHUNK = 500_000  # frames featurized at a time (the featurizer carries its state across chunks)


def _clock(b: FrameBatch, gap_s: float) -> tuple[np.ndarray, float]:
    """The capture's clock and the occurrence gap on it (frames without timestamps: 1,000 frames a "second")."""
    if b.has_timestamps:
        return b.timestamp, gap_s
    return np.arange(len(b), dtype=np.float64), gap_s * 1000.0


def _codes(b: FrameBatch, names: list[str]) -> np.ndarray:
    return b.label_codes(names)


def _code_names(captures: list[FrameBatch]) -> list[str]:
    """Benign, then every attack name of the captures: code c of :func:`_codes` is ``names[c]``."""
    return [BENIGN] + sorted({n for b in captures for n in b.label_names if n != BENIGN})


def cut_captures(captures: list[FrameBatch], labels: list[str], src: SourceConfig,
                 same_timeline: bool = False) -> list[Cut]:
    """Where each capture is cut into train and test (see :mod:`fastmaml.apps.ids.splits`).

    ``same_timeline``: the captures are the same drive with different injections (DAGA), so one
    cut time serves them all and benign traffic before it can fit the features leak-free.
    """
    names = _code_names(captures)
    if src.split == "time":
        cuts = []
        for b, what in zip(captures, labels):
            clk, gap = _clock(b, src.occurrence_gap_s)
            cuts.append(time_cut(clk, _codes(b, names), names, test_fraction=src.test_fraction, gap=gap,
                                 capture=what))
        return cuts
    if not same_timeline:
        cuts = []
        for b, what in zip(captures, labels):
            clk, gap = _clock(b, src.occurrence_gap_s)
            cuts.append(occurrence_cut(clk, _codes(b, names), names, test_fraction=src.test_fraction, gap=gap,
                                       min_occurrences=src.min_occurrences, capture=what))
        return cuts
    clocks = [_clock(b, src.occurrence_gap_s) for b in captures]
    clk = np.concatenate([c for c, _ in clocks])
    codes = np.concatenate([_codes(b, names) for b in captures])
    order = np.argsort(clk, kind="stable")
    joint = occurrence_cut(clk[order], codes[order], names, test_fraction=src.test_fraction, gap=clocks[0][1],
                           min_occurrences=src.min_occurrences, capture=" + ".join(labels))
    return [_describe_at(c, _codes(b, names), names, joint.clock, gap, what)
            for (c, gap), b, what in zip(clocks, captures, labels)]


def plan_captures(captures: list[FrameBatch], labels: list[str], src: SourceConfig) -> SplitPlan:
    """The by_capture / within_interval / auto split of a folder of captures.

    See :func:`~fastmaml.apps.ids.splits.plan_split`.
    """
    names = _code_names(captures)
    timelines = []
    for b in captures:
        clk, gap = _clock(b, src.occurrence_gap_s)
        timelines.append((clk, _codes(b, names), gap))
    return plan_split(timelines, labels, names, kind=src.split, test_fraction=src.test_fraction,
                      min_occurrences=src.min_occurrences)


def _describe_at(clk: np.ndarray, codes: np.ndarray, names: list[str], at: float, gap: float, what: str) -> Cut:
    """The cut of one capture at clock ``at`` (the joint cut of captures on one timeline)."""
    k = int(np.searchsorted(clk, at, side="left"))
    cut = time_cut(clk, codes, names, test_fraction=1 - k / max(len(clk), 1), gap=gap, capture=what)
    cut.index, cut.clock = k, float(at)
    return cut


# Frames closer than this to an attack frame are no clean driving for calibration: the attacked ID's partners
# disagree with it while it lasts, and a rule or detector that flags them is right to.
ATTACK_GUARD_S = 2.0


def calibration_captures(fit: list[FrameBatch]) -> list[FrameBatch]:
    """The training-period captures thresholds are calibrated on: those without any attack frame where they hold at
    least a quarter of the frames (a ROAD-style folder's ambient drives: no attack frame a label may have missed),
    else all of them (their attacks then left out by :func:`away_from_attacks`)."""
    quiet = [b for b in fit if not b.is_attack().any()]
    if 4 * sum(len(b) for b in quiet) >= sum(len(b) for b in fit):
        return quiet
    return list(fit)


def away_from_attacks(b: FrameBatch, gap_s: float) -> np.ndarray:
    """Bool [N]: benign frames further than :data:`ATTACK_GUARD_S` from every attack frame of the capture.

    Calibration featurizes a capture as the bus carried it and then leaves these out. Leaving the attack frames out
    *before* featurizing (as earlier) made a masqueraded ID fall silent for the attack's length: its partners then
    met a value seconds old, the plausibility rule flagged them, and on a ROAD-shaped folder the rule's threshold rose
    from 1 to 216 frames of evidence and it caught nothing.
    """
    attack = b.is_attack()
    if not attack.any():
        return np.ones(len(b), bool)
    clock, _ = _clock(b, gap_s)
    guard = ATTACK_GUARD_S * (1.0 if b.has_timestamps else 1000.0)  # _clock's index clock: 1,000 frames a "second"
    t = np.sort(clock[attack])
    k = np.searchsorted(t, clock)
    before = np.abs(clock - t[np.maximum(k - 1, 0)])
    after = np.abs(t[np.minimum(k, len(t) - 1)] - clock)
    return ~attack & (np.minimum(before, after) > guard)


def calibration_rows(lengths: list[int], cap: int = _MAX_FIT_STREAM,
                     pieces: int = _CALIBRATION_PIECES) -> list[np.ndarray]:
    """Per capture (``lengths`` frames each), the frames calibration keeps: all of them while the captures hold at
    most ``cap`` frames together, else ``cap`` frames in contiguous pieces spread evenly over every capture, each
    capture's share in proportion to its length (at least one piece each)."""
    total = sum(lengths)
    if total <= cap:
        return [np.arange(n) for n in lengths]
    out = []
    for n in lengths:
        quota = int(n * cap / total)
        k = max(1, round(pieces * n / total))
        size = quota // k
        if size <= 0:
            out.append(np.zeros(0, np.int64))
            continue
        starts = np.linspace(0, n - size, k).astype(np.int64)  # spaced >= size apart, since k * size <= n
        out.append(np.concatenate([np.arange(a, a + size) for a in starts]))
    return out


def frame_stream(b: FrameBatch, state: FeatureState, attack: str | None, source: str,
                 rules: dict[str, Any] | None = None, rows: np.ndarray | None = None) -> Stream:
    """A capture part featurized in order, for operational metrics (attack = frames labelled ``attack``).

    ``rows`` (sorted frame indices): keep only those; the capture is still featurized from its start up to the last
    of them, so their history features are those of the capture as recorded."""
    fz = FrameFeaturizer(state)
    end = len(b) if rows is None else (int(rows[-1]) + 1 if len(rows) else 0)
    parts = []
    for a in range(0, end, _FEATURIZE_CHUNK):
        z = min(a + _FEATURIZE_CHUNK, end)
        x = fz.transform(b.select(slice(a, z)))
        if rows is not None:
            x = x[rows[(rows >= a) & (rows < z)] - a]
        parts.append(x)
    x = torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, len(fz.feature_names))
    if rows is not None:
        b = b.select(rows)
    is_attack = (b.label_codes([attack]) == 0) if attack else np.zeros(len(b), bool)
    as_set = SampleSet(x, torch.from_numpy(is_attack.astype(np.int64)), [BENIGN, attack or "attack"],
                       fz.feature_names, source)
    verdicts = rule_predictions(as_set, rules or {})
    if b.has_timestamps:
        clock, unit = b.timestamp, 1.0
    else:
        # index clock (the frame's index in the capture): ~1,600 frames/s assumed
        clock, unit = np.arange(len(b), dtype=np.float64) if rows is None else rows.astype(np.float64), 1.0 / 1600
    return Stream(x, torch.from_numpy(is_attack.copy()), torch.from_numpy(np.asarray(clock, np.float64).copy()),
                  torch.from_numpy(b.can_id.astype(np.int64)), unit, source, verdicts)


def spread_stream(captures: list[FrameBatch], state: FeatureState, rules: dict[str, Any] | None, gap_s: float,
                  source: str) -> Stream | None:
    """Clean captures as one stream (None when empty): each featurized as the bus carried it, at most
    ``_MAX_FIT_STREAM`` frames kept in pieces spread over all of them (:func:`calibration_rows`), frames near attack
    frames left out (:func:`away_from_attacks`); kept with their clock and CAN IDs, so alert rules can be calibrated
    on it too. The captures are laid end to end on one clock a minute apart (the gap is no traffic time:
    :func:`~fastmaml.apps.ids.evidence.traffic_seconds`)."""
    streams = []
    for b, keep in zip(captures, calibration_rows([len(b) for b in captures])):
        keep = keep[away_from_attacks(b, gap_s)[keep]]
        if len(keep):
            streams.append(frame_stream(b, state, None, "", rules, rows=keep))
    if not streams:
        return None
    clocks, end = [], 0.0
    for st in streams:
        c = (st.clock - st.clock[0]) * st.clock_unit_s + end
        clocks.append(c)
        end = float(c[-1]) + 60.0
    x = torch.cat([st.x for st in streams])
    return Stream(x, torch.zeros(len(x), dtype=torch.bool), torch.cat(clocks), torch.cat([st.key for st in streams]),
                  1.0, source, {r: torch.cat([st.rules[r] for st in streams]) for r in streams[0].rules})


def prepare_cut_captures(frames: list[FrameBatch], labels: list[str], cuts: list[Cut], fit: list[FrameBatch],
                          src: SourceConfig, feat: FeatureConfig, log: Callable[[str], None], source: str,
                          benign_test: FrameBatch | None = None, plan: SplitPlan | None = None) -> IdsData:
    """Families from captures cut at ``cuts``; features and rules fitted on ``fit`` (benign frames count).

    ``plan``: the by_capture / within_interval / auto split the cuts come from; its choice per
    attack (and the attacks it had to skip) go into ``stats["split"]``.
    """
    state = FeatureState.fit(fit, signals=feat.signals, dbc=feat.dbc,
                             byte_order=feat.byte_order)
    rules = _fit_rules(fit, state)
    parts = [{"train": b.select(slice(0, c.index)), "test": b.select(slice(c.index, len(b)))}
             for b, c in zip(frames, cuts)]
    names: list[str] = []
    for b in frames:
        names += [n for n in b.label_names if n != BENIGN and n not in names]
    if src.attacks:
        names = [n for n in names if n in src.attacks]
    benign_only = [k for k, b in enumerate(frames) if not b.is_attack().any()]
    check_both_sides(cuts, names, src.min_occurrences if src.split == "occurrences" else 1)
    families = {}
    for name in names:
        # A family takes the captures holding its attack plus the benign-only ones; frames of
        # other attacks in those captures are left out of its samples.
        use = [k for k, b in enumerate(frames) if name in b.label_names and (b.label_codes([name]) == 0).any()]
        use += [k for k in benign_only if k not in use]
        log(f"featurizing attack {name!r} from {[labels[k] for k in use]}")
        # Empty parts (a capture held out whole has no train part, a training one no test part) add nothing.
        families[name] = _family_from_frames(name, {split: [parts[k][split] for k in use if len(parts[k][split])]
                                                    for split in ("train", "test")}, state, feat, rules)
    skipped = {a: why for a, why in (plan.skipped if plan else {}).items() if not src.attacks or a in src.attacks}
    data = _finish(families, state, feat, source, [a for a in src.attacks if a not in skipped])
    data.stats["split"] = {"kind": src.split, "test_fraction": src.test_fraction,
                           "occurrence_gap_s": src.occurrence_gap_s, "cuts": [c.to_dict() for c in cuts]}
    if plan is not None:
        data.stats["split"].update(attacks=plan.attacks(list(families)), skipped=skipped)
    if feat.window is None:  # streams of frame verdicts (window detectors: not yet)
        for name in families:
            # The first capture with frames of the attack after its cut (a by_capture type's
            # training files have none); else, as before, the first one holding it.
            holding = [k for k, b in enumerate(frames) if name in b.label_names]
            k = next((k for k in holding if cuts[k].frames.get(name, {}).get("test", 0)), holding[0])
            where = "held out whole" if cuts[k].whole == "test" else "after the cut"
            data.streams[name] = frame_stream(parts[k]["test"], state, name, f"{labels[k]} {where}", rules)
        if benign_test is not None and len(benign_test):
            data.streams[BENIGN] = frame_stream(benign_test, state, None, "clean capture after the cut", rules)
        elif benign_only:
            # Every clean capture's part after the cut (spread pieces where they are long): the false alerts a
            # vehicle would see, judged on as much of its clean driving as the split leaves out of sample.
            with_test = [k for k in benign_only if len(parts[k]["test"])]
            names = [Path(labels[k]).name for k in with_test]
            clean_after = spread_stream([parts[k]["test"] for k in with_test], state, rules, src.occurrence_gap_s,
                                        f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''} after the cut")
            if clean_after is not None:
                data.streams[BENIGN] = clean_after
        # Benign traffic before the cut, for thresholds calibrated on the vehicle's own clean driving.
        fit_stream = spread_stream(calibration_captures(fit), state, rules, src.occurrence_gap_s,
                                   "benign frames before the cut")
        if fit_stream is not None:
            data.streams[FIT_STREAM] = fit_stream
    return data


def prepare_captures(src: SourceConfig, feat: FeatureConfig, log: Callable[[str], None],
                     workdir: Path | None = None) -> IdsData:
    """Labelled capture files (``source.captures``) in any reader format, split by ``source.split``.

    ``occurrences`` / ``time`` cut each capture in time; ``by_capture`` / ``within_interval`` /
    ``auto`` hold out whole files or cut inside a capture's one interval (:func:`plan_captures`),
    logging the choice per attack. Either way features and rules are fitted on the training parts only.
    """
    if not src.captures:
        raise ConfigError("source.kind=captures needs source.captures: a list of {path, labels, format, attack, columns}")
    specs = []
    for c in src.captures:  # a folder with injection metadata: each of its logs the metadata labels
        if c.labels and road.is_metadata(c.labels) and Path(c.path).is_dir():
            paths = road.logs_in(c.path, road.read_metadata(c.labels), log)
            specs += [dataclasses.replace(c, path=str(p)) for p in paths]
        else:
            specs.append(c)
    frames = [read_labelled(c, src, log) for c in specs]
    labels = [c.path for c in specs]
    plan = None
    if src.split in FILE_SPLITS:
        plan = plan_captures(frames, labels, src)
        log(plan.summary([n for n in _code_names(frames)[1:] if not src.attacks or n in src.attacks]))
        keep = [i for i, c in enumerate(plan.cuts) if c is not None]
        frames, labels = [frames[i] for i in keep], [labels[i] for i in keep]
        if not any(b.is_attack().any() for b in frames):
            raise DataError("no attack's captures could be split into train and test parts: "
                            + "; ".join(f"{a}: {why}" for a, why in plan.skipped.items()))
        cuts = [c for c in plan.cuts if c is not None]
    else:
        cuts = cut_captures(frames, labels, src)
    # Captures held out whole (cut at frame 0) have no training part to fit on.
    fit = [b.select(slice(0, c.index)) for b, c in zip(frames, cuts) if c.index > 0]
    data = prepare_cut_captures(frames, labels, cuts, fit, src, feat, log, "captures " + ", ".join(labels),
                                plan=plan)
    if feat.signals:
        drop_short_driving_columns(data, feat, log)
    return data


# The signal columns judging a value against the clean range, tails, longest still run and largest change: a
# short clean drive has not shown them (on DAGA's 103 s before the cut, 35-80% of several IDs'
# frames after it lay outside the range seen before), so they would flag clean driving.
SIGNAL_SPAN_COLUMNS = ("sig_range", "sig_edge", "sig_stuck", "sig_state", "sig_leap")
# Judged on a short drive by the plausibility rule only: sig_full is rare in training data (on ROAD's folds, some frames
# of one fabrication); given to the detectors (one full ROAD run) MAML caught fewer fabrications.
SHORT_DRIVE_RULE_COLUMNS = ("sig_full",)


def drop_short_driving_columns(data: IdsData, feat: FeatureConfig, log: Callable[[str], None]) -> None:
    """Leave out :data:`SIGNAL_SPAN_COLUMNS` when the folder's clean training driving is shorter than they need, and
    :data:`SHORT_DRIVE_RULE_COLUMNS` (the rule's on a short drive) with them.

    The clean time is the fitted FeatureState's (``clean_seconds``), the one the plausibility rule's range check,
    the state columns and the byte order go by, so all of them switch on together."""
    seconds = float((data.feature_state or {}).get("clean_seconds", 0.0))
    span = [c for c in SIGNAL_SPAN_COLUMNS if c in data.feature_names and c not in feat.drop]
    rule = [c for c in SHORT_DRIVE_RULE_COLUMNS if c in data.feature_names and c not in feat.drop]
    if seconds >= LONG_DRIVE_S or not span + rule:
        return
    drop_features(data, span + rule)
    notes = []
    if span:
        notes.append(f"Signal columns {', '.join(span)} left out: the clean driving they were fitted on (before the "
                     f"cut, and any further clean captures) is {seconds:.0f} s, and the clean range, tails, still "
                     f"runs and largest changes they judge by need about {LONG_DRIVE_S / 60:.0f} minutes (the "
                     f"signal-range rule still uses the range).")
    if rule:
        notes.append(f"Signal columns {', '.join(rule)} left to the plausibility rule on this short drive: the learned "
                     f"detectors do not read them.")
    for note in notes:
        log(note)
    data.stats["notes"] = list(data.stats.get("notes", [])) + notes


# DAGA (Volvo V40, trace 03): one capture per attack type. The files are cumulative (ID_2C5 also
# holds the ID-8 and ID-145 injections), so one file stands for each type; see README "Data".
DAGA_CLEAN = "clean/V40_03.can.zip"
DAGA_ATTACKS = {
    "dos": "infected/DenialOfService/lowestID_V40_03.can.zip",
    "message_id_fuzzing": "infected/MessageIDFuzzing/V40_03.can.zip",
    "payload_fuzzing": "infected/PayloadFuzzing/ID_2C5_V40_03.can.zip",
    "single_id_replay": "infected/SingleIDReplay/ID_2C5_V40_03.can.zip",
    "ordered_sequence_replay": "infected/OrderedSequenceReplay/n_5_V40_03.can.zip",
    "arbitrary_sequence_replay": "infected/ArbitrarySequenceReplay/n_5_V40_03.can.zip",
}


def prepare_daga(src: SourceConfig, feat: FeatureConfig, log: Callable[[str], None],
                 workdir: Path | None = None) -> IdsData:
    """The DAGA captures: every infected file is the same 153 s drive with one attack type injected.

    One cut time serves all files (same timeline); features and rules are fitted on the clean
    trace before the cut only, so nothing of the test period leaks into them.
    """
    folder = data_folder(src, src.daga.dir, "ids/daga", "DAGA")
    wanted = src.attacks or list(DAGA_ATTACKS)
    bad = [a for a in wanted if a not in DAGA_ATTACKS]
    if bad:
        raise DataError(f"unknown DAGA attack(s) {bad}; valid attacks: {list(DAGA_ATTACKS)}")
    specs = [CaptureSpec(path=str(folder / DAGA_ATTACKS[a]), format="daga", attack=a) for a in wanted]
    for spec in specs + [CaptureSpec(path=str(folder / DAGA_CLEAN))]:
        if not Path(spec.path).is_file():
            raise DataError(f"DAGA file {spec.path} not found; {folder} must hold the DAGA/dataset layout "
                            "(clean/, infected/<attack>/) as described in the data README")
    frames = [read_labelled(s, src, log) for s in specs]
    labels = [f"{a} ({Path(s.path).name})" for a, s in zip(wanted, specs)]
    cuts = cut_captures(frames, labels, src, same_timeline=True)
    clean = read_labelled(CaptureSpec(path=str(folder / DAGA_CLEAN), format="daga", attack="none"), src, log)
    fit_end = min(c.clock for c in cuts)
    clean_clk, _ = _clock(clean, src.occurrence_gap_s)
    fit = clean.select(slice(0, int(np.searchsorted(clean_clk, fit_end))))
    log(f"cut at {fit_end:.2f} s; features and rules fitted on the clean trace before it ({len(fit)} frames)")
    after = clean.select(slice(int(np.searchsorted(clean_clk, max(c.clock for c in cuts))), len(clean)))
    return prepare_cut_captures(frames, labels, cuts, [fit], src, feat, log, f"DAGA ({folder})", benign_test=after)


def _finish(families: dict[str, TaskFamily], state: FeatureState, feat: FeatureConfig, source: str,
            wanted: list[str]) -> IdsData:
    missing = [a for a in wanted if a not in families]
    if missing or not families:
        raise DataError(f"attack(s) {missing} not found in {source}; available: {list(families)}")
    stats = {"unseen_id_fraction": {n: unseen_id_fraction(f.test) for n, f in families.items()},
             "counts": {n: {"train": f.train.counts(), "test": f.test.counts()} for n, f in families.items()}}
    if state.dbc:  # the DBC's signals, and the inferred segmentation scored against them
        stats["dbc"] = state.dbc
    return IdsData(families, frame_feature_names(state), feat.window, state.to_dict(), source, stats)
