"""Masquerade attacks generated on a real clean CAN capture, and the ``masquerade`` traffic source.

A masquerade silences the genuine ECU (or rewrites its frames on a gateway) and sends its ID at
its rate with false signal values: no frame is added, timing is unchanged. ``inject`` makes one
from a clean capture: inside each injection interval it rewrites the target signal's bits of
every frame of the target ID and labels those frames, keeping IDs, timestamps, every other bit
and the number of frames exactly. Its *fabrication* twin applies the same manipulation to
frames *added* between the genuine ones (half a period after each, the genuine frames left in),
as a plain injection attack would.

Manipulations (``KINDS``), on the target signal's values v inside an interval, with the
signal's clean range [lo, hi] (R = hi - lo):

* ``maximum``: pinned at the clean maximum (a temperature or pressure at its limit);
* ``constant``: held at a plausible but false value, the clean 10% or 90% quantile, whichever
  lies farther from the genuine value at the onset (a frozen reading);
* ``offset``: v + R/4 (or - R/4 where that would leave the range): a speed reported too high;
* ``drift``: v plus a ramp from 0 to R/2 over the interval: driven apart from its partners
  gradually, so no frame-to-frame jump gives it away;
* ``replay``: the same signal's values from an earlier stretch of the drive of the same length
  (of 20 random earlier stretches, the one farthest from the genuine values: a replay that hides
  what is happening), so range and dynamics are those of real driving.

and, on request (``STATE_KINDS``: ``--kind flip``, ``source.attacks=[flip_masquerade, ...]``; not in
the default folds), on a *state field* instead of a physical signal (a flag, a gear, a mode:
:mod:`~fastmaml.apps.ids.can.states`):

* ``flip``: each frame's state set to the value clean driving shows most often among the others
  (for a flag, the other value): a reverse light on while the car drives forwards. Every value is
  one the car shows every day; only its combination with the rest of the bus is false.

Targets are the capture's physical signals (:func:`~fastmaml.apps.ids.can.signals.fit_signals`
on the whole clean capture: the attacker knows the vehicle) that have cross-ID partners, are at
least 6 bits wide and sent at >= 20 Hz: the redundant quantities a masquerade would falsify.
Each interval picks a target at random; a kind's masquerade and fabrication twins share times
and targets (the same manipulation on the same drive), so the two are held out together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fastmaml.apps.ids.can import source as can_source
from fastmaml.apps.ids.can.frames import BENIGN, FrameBatch
from fastmaml.apps.ids.can.signals import (Signal, as_signed, byte_order_for, field_values, fit_signals,
                                           payload_words, words_to_bytes, write_field)
from fastmaml.apps.ids.can.relations import frames_by_id
from fastmaml.apps.ids.can.states import LONG_DRIVE_S, StateField, fit_states
from fastmaml.apps.ids.config import CaptureSpec, FeatureConfig, SourceConfig, data_folder
from fastmaml.apps.ids.families import IdsData
from fastmaml.errors import DataError

KINDS = ("maximum", "constant", "offset", "drift", "replay")
STATE_KINDS = ("flip",)  # kinds on a state field: asked for by name, not in the default folds
ALL_KINDS = KINDS + STATE_KINDS
VARIANTS = ("masquerade", "fabrication")
_MIN_TARGET_BITS = 6
_MIN_TARGET_HZ = 20.0
_REPLAY_DRAWS = 20


@dataclass
class Injection:
    """One injection interval: ``kind`` applied to ``signal`` of ``can_id`` during [t0, t1)."""

    kind: str
    can_id: int
    start: int  # the signal's bits [start, start + length)
    length: int
    t0: float
    t1: float
    replay_from: float = 0.0  # replay: the earlier stretch starts here
    little_endian: bool = False  # a DBC Intel signal over several bytes (see signals.Signal)
    partnered: bool = True  # the target has a cross-ID partner (a signal elsewhere on the bus that reflects it)


def attack_name(kind: str, variant: str) -> str:
    return f"{kind}_{variant}"


TARGETS = ("partnered", "all")
_MIN_ANY_TARGET_HZ = 5.0  # targets: "all" also takes slower IDs (>= 10 frames in a 2 s interval)


def target_signals(clean: FrameBatch, dbc: str = "", targets: str = "partnered",
                   byte_order: str = "auto") -> list[Signal]:
    """The signals a masquerade targets (see the module doc); DataError when the capture has none.

    ``dbc``: the car's DBC file; its signals stand in for the inferred ones (``features.dbc``); ``byte_order``:
    how signals without one are read (``features.byte_order``, :func:`~fastmaml.apps.ids.can.signals.find_signals`).
    ``targets``: ``partnered`` (signals with a cross-ID partner, >= 20 Hz: the redundant quantities)
    or ``all`` (every signal of >= 6 bits on an ID of >= 5 Hz, with or without a partner: real
    masquerades also hit signals nothing else on the bus reflects).
    """
    if targets not in TARGETS:
        raise DataError(f"masquerade targets {targets!r} unknown; use one of {', '.join(TARGETS)}")
    if not clean.has_timestamps:
        raise DataError("masquerade generation needs timestamps (it keeps them exactly and works in seconds)")
    fields = None
    if dbc:
        from fastmaml.apps.ids.can.dbc import read_dbc  # cantools only when a DBC is given
        fields = read_dbc(dbc)[0]
    span = float(clean.timestamp[-1] - clean.timestamp[0]) or 1.0
    sigs = fit_signals(clean.can_id, clean.data, clean.timestamp, fields,
                       byte_order_for(byte_order, span >= LONG_DRIVE_S))
    ids, counts = np.unique(clean.can_id.astype(np.int64), return_counts=True)
    rate = dict(zip(ids.tolist(), (counts / span).tolist()))
    if targets == "all":
        out = [s for s in sigs if s.length >= _MIN_TARGET_BITS and rate[s.can_id] >= _MIN_ANY_TARGET_HZ]
        if out:
            return out
    out = [s for s in sigs if s.partners and s.length >= _MIN_TARGET_BITS and rate[s.can_id] >= _MIN_TARGET_HZ]
    if not out:
        raise DataError("the clean capture has no signal a masquerade could target (none >= 6 bits, >= 20 Hz, "
                        "with a correlated signal on another ID); give a longer or busier clean capture")
    return out


def plan(clean: FrameBatch, kind: str, targets: list[Signal], occurrences: int, duration_s: float,
         seed: int) -> list[Injection]:
    """``occurrences`` intervals of ``duration_s``, one per equal slot of the capture after its first 10%."""
    if kind not in ALL_KINDS:
        raise DataError(f"masquerade kind {kind!r} unknown; use one of {', '.join(ALL_KINDS)}")
    if occurrences < 1 or duration_s <= 0:
        raise DataError("masquerade needs occurrences >= 1 and duration_s > 0")
    t_first, t_last = float(clean.timestamp[0]), float(clean.timestamp[-1])
    begin = t_first + 0.1 * (t_last - t_first)  # replay needs earlier driving to copy
    slot = (t_last - begin) / occurrences
    if slot < 1.5 * duration_s:
        # One message serves the masquerade source (config keys) and `fastmaml ids masquerade` (its options).
        fits = int(np.floor((t_last - begin) / (1.5 * duration_s) + 1e-9))
        what = f"{occurrences} intervals of {duration_s} s do not fit in the {t_last - t_first:.0f} s capture with gaps " \
               "between them"
        if fits >= 1:
            raise DataError(f"{what}; {fits} fit: set source.masquerade.occurrences={fits} (fastmaml ids masquerade: "
                            f"--occurrences {fits}), or lower source.masquerade.duration_s (--duration), or give a "
                            "longer clean capture")
        longest = (t_last - begin) / 1.5
        raise DataError(f"{what}; not even one fits: set source.masquerade.occurrences=1 (fastmaml ids masquerade: "
                        f"--occurrences 1) and source.masquerade.duration_s={longest:.2f} or less (--duration), or give "
                        "a longer clean capture")
    rng = np.random.default_rng([seed, ALL_KINDS.index(kind)])
    # With targets of both groups, intervals alternate between them, so each group has half the occurrences.
    groups = [g for g in ([t for t in targets if _partnered(t)], [t for t in targets if not _partnered(t)]) if g]
    out = []
    for i in range(occurrences):
        t0 = begin + i * slot + rng.uniform(0, slot - 1.25 * duration_s)
        pool = groups[i % len(groups)] if len(groups) > 1 else targets
        s = pool[int(rng.integers(len(pool)))]
        inj = Injection(kind, s.can_id, s.start, s.length, float(t0), float(t0 + duration_s),
                        little_endian=getattr(s, "little_endian", False), partnered=_partnered(s))
        if kind == "replay":
            inj.replay_from = _farthest_replay(clean, inj, t0 - rng.uniform(duration_s, t0 - t_first, _REPLAY_DRAWS))
        out.append(inj)
    return out


def _partnered(target: Signal | StateField) -> bool:
    """A signal with cross-ID partners, or a state with a context that predicts it."""
    return bool(target.partners) if isinstance(target, Signal) else bool(target.context)


def target_states(clean: FrameBatch, sigs: list[Signal]) -> list[StateField]:
    """The state fields a ``flip`` targets: every one the clean capture shows on an ID of >= 5 Hz, with its
    context and table (the attacker knows the vehicle; ``false_values`` ranks the values by the table); DataError
    when there is none."""
    states = fit_states(frames_by_id(clean.can_id), payload_words(clean.data), sigs)
    span = float(clean.timestamp[-1] - clean.timestamp[0]) or 1.0
    ids, counts = np.unique(clean.can_id.astype(np.int64), return_counts=True)
    rate = dict(zip(ids.tolist(), (counts / span).tolist()))
    out = [s for s in states if rate[s.can_id] >= _MIN_ANY_TARGET_HZ]
    if not out:
        raise DataError("the clean capture has no flag or state field a flip could target (2-16 values, changing "
                        "in at most 5% of its ID's frames, on an ID of >= 5 Hz); leave the flip kind out")
    return out


def _interval_rows(clean: FrameBatch, can_id: int, t0: float, t1: float) -> np.ndarray:
    t = clean.timestamp
    return np.flatnonzero((clean.can_id == can_id) & (t >= t0) & (t < t1))


def _replay_values(clean: FrameBatch, inj: Injection, start: float, n: int) -> np.ndarray:
    rows = _interval_rows(clean, inj.can_id, start, start + 2 * (inj.t1 - inj.t0) + 1.0)[:n]
    v = field_values(payload_words(clean.data[rows]), inj.start, inj.length, inj.little_endian)
    return np.pad(v, (0, n - len(v)), mode="edge") if 0 < len(v) < n else v


def _farthest_replay(clean: FrameBatch, inj: Injection, starts: np.ndarray) -> float:
    genuine = field_values(payload_words(clean.data[_interval_rows(clean, inj.can_id, inj.t0, inj.t1)]),
                           inj.start, inj.length, inj.little_endian)
    if not len(genuine):
        return float(starts[0])
    gaps = [float(np.abs(_replay_values(clean, inj, float(s), len(genuine)) - genuine).mean()) for s in starts]
    return float(starts[int(np.argmax(gaps))])


def false_values(clean: FrameBatch, inj: Injection, genuine: np.ndarray, sig: Signal | StateField) -> np.ndarray:
    """The values the attacker sends instead of ``genuine`` (see the module doc)."""
    if isinstance(sig, StateField):  # flip: per frame, the most frequent clean value other than the genuine one
        counts = np.asarray(sig.table).sum(1)[: len(sig.levels)]
        ranked = np.asarray(sig.levels)[np.argsort(-counts, kind="stable")]
        return np.where(genuine == ranked[0], ranked[1], ranked[0])
    lo, hi = sig.lo, sig.hi
    r = hi - lo
    if inj.kind == "maximum":
        return np.full(len(genuine), hi)
    if inj.kind == "constant":
        clean_v = field_values(payload_words(clean.data[clean.can_id == inj.can_id]), inj.start, inj.length,
                               inj.little_endian)
        if sig.signed:
            clean_v = as_signed(clean_v, inj.length)
        q10, q90 = np.quantile(clean_v, [0.1, 0.9])
        return np.full(len(genuine), q10 if abs(q10 - genuine[0]) > abs(q90 - genuine[0]) else q90)
    if inj.kind == "offset":
        return np.where(genuine + r / 4 <= hi, genuine + r / 4, genuine - r / 4)
    if inj.kind == "drift":
        ramp = np.linspace(0.0, r / 2, len(genuine))
        return np.where(genuine + ramp <= hi, genuine + ramp, genuine - ramp)
    return _replay_values(clean, inj, inj.replay_from, len(genuine))


def inject(clean: FrameBatch, injections: list[Injection], variant: str, name: str,
           signals: dict[tuple[int, int, bool], Signal | StateField]) -> FrameBatch:
    """The clean capture with ``injections`` applied as ``variant``; frames of the attack labelled ``name``.

    ``masquerade`` returns as many frames as ``clean``, in the same order, with the same IDs,
    timestamps and every bit but the targets' inside the intervals; ``fabrication`` returns
    ``clean`` unchanged plus one added frame per genuine target frame in an interval.
    """
    if variant not in VARIANTS:
        raise DataError(f"masquerade variant {variant!r} unknown; use one of {', '.join(VARIANTS)}")
    if clean.is_attack().any():
        raise DataError("masquerade generation needs a clean capture (it holds attack frames already)")
    words = payload_words(clean.data)
    forged = np.zeros(len(clean), bool)
    new_words = words.copy()
    for inj in injections:
        rows = _interval_rows(clean, inj.can_id, inj.t0, inj.t1)
        if not len(rows):
            continue
        genuine = field_values(words[rows], inj.start, inj.length, inj.little_endian)
        sig = signals[(inj.can_id, inj.start, inj.little_endian)]
        signed = isinstance(sig, Signal) and sig.signed  # a two's-complement field: values, not bits, are falsified
        values = false_values(clean, inj, as_signed(genuine, inj.length) if signed else genuine, sig)
        if signed:
            values = np.mod(np.round(values), 2.0 ** inj.length)
        new_words[rows] = write_field(words[rows], inj.start, inj.length, values, inj.little_endian)
        forged[rows] = True
    data = clean.data.copy()
    data[:, :8] = words_to_bytes(new_words)[:, : min(8, data.shape[1])]
    label = np.zeros(len(clean), np.int16)
    if variant == "masquerade":
        label[forged] = 1
        return FrameBatch(clean.timestamp.copy(), clean.can_id.copy(), clean.is_extended.copy(),
                          clean.is_remote.copy(), clean.is_fd.copy(), clean.dlc.copy(), clean.length.copy(), data,
                          label, [BENIGN, name])
    # Fabrication: the forged frames are sent half a period after each genuine one, which stays in.
    rows = np.flatnonzero(forged)
    added = clean.select(rows)
    added.data = data[rows]
    added.timestamp = clean.timestamp[rows] + 0.5 * _periods(clean)[rows]
    added.label = np.ones(len(rows), np.int16)
    added.label_names = [BENIGN, name]
    genuine = clean.select(slice(0, len(clean)))
    genuine.label = np.zeros(len(clean), np.int16)
    genuine.label_names = [BENIGN, name]
    both = FrameBatch.concat([genuine, added])
    return both.select(np.argsort(both.timestamp, kind="stable"))


def _periods(clean: FrameBatch) -> np.ndarray:
    """Per frame, the median inter-arrival of its ID in the clean capture."""
    out = np.zeros(len(clean))
    ids = clean.can_id.astype(np.int64)
    for cid in np.unique(ids).tolist():
        m = ids == cid
        t = clean.timestamp[m]
        out[m] = float(np.median(np.diff(t))) if len(t) > 1 else 0.01
    return out


def generate(clean: FrameBatch, kinds: list[str] | tuple[str, ...] = KINDS, occurrences: int = 20,
             duration_s: float = 2.0, seed: int = 0, dbc: str = "", targets: str = "partnered",
             byte_order: str = "auto") -> tuple[dict[str, FrameBatch], dict[str, list[dict]]]:
    """Every (kind, variant) attack capture of ``clean``: ``{name: frames}``, and the injections per kind."""
    signal_kinds = [k for k in kinds if k not in STATE_KINDS]
    sig_targets = target_signals(clean, dbc, targets, byte_order) if signal_kinds else []
    state_targets: list[StateField] = []
    if len(signal_kinds) < len(kinds):
        span = float(clean.timestamp[-1] - clean.timestamp[0])
        state_targets = target_states(clean, fit_signals(clean.can_id, clean.data, clean.timestamp,
                                                         byte_order=byte_order_for(byte_order, span >= LONG_DRIVE_S)))
    by_key: dict[tuple[int, int, bool], Signal | StateField] = {
        **{(s.can_id, s.start, s.little_endian): s for s in sig_targets},
        **{(s.can_id, s.start, False): s for s in state_targets}}
    captures: dict[str, FrameBatch] = {}
    plans: dict[str, list[dict]] = {}
    for kind in kinds:
        pool: list = state_targets if kind in STATE_KINDS else sig_targets
        injections = plan(clean, kind, pool, occurrences, duration_s, seed)
        plans[kind] = [asdict(i) for i in injections]
        for variant in VARIANTS:
            name = attack_name(kind, variant)
            captures[name] = inject(clean, injections, variant, name, by_key)
    return captures, plans


def _clean_drive(spec: CaptureSpec, src: SourceConfig, log: Callable[[str], None]) -> FrameBatch:
    """A clean capture's benign frames (any frame it labels as an attack left out)."""
    frames = can_source.read_labelled(spec, src, log, clean=True)
    return frames.select(~frames.is_attack())


def prepare_masquerade(src: SourceConfig, feat: FeatureConfig, log: Callable[[str], None],
                       workdir: Path | None = None) -> IdsData:
    """Source ``masquerade``: attacks generated on a clean capture, one capture per (kind, variant).

    The clean capture is ``source.captures[0]`` if given, else DAGA's clean Volvo trace. Every
    attack capture is the same drive, so one cut time serves all (as for DAGA); features and
    rules are fitted on the clean capture before it, and on every further capture of
    ``source.captures`` whole: other clean drives of the same car, which show how far the
    values move beyond one drive (masquerades are generated on the first only). The default
    folds hold each kind out with both its variants.
    """
    if src.captures:
        spec = src.captures[0]
        what = spec.path
    else:
        spec = CaptureSpec(path=str(data_folder(src, src.daga.dir, "ids/daga", "DAGA") / can_source.DAGA_CLEAN),
                           format="daga", attack="none")
        what = f"DAGA clean trace ({spec.path})"
    clean = _clean_drive(spec, src, log)
    kinds = sorted({a.rsplit("_", 1)[0] for a in src.attacks}, key=ALL_KINDS.index) if src.attacks else list(KINDS)
    bad = [a for a in src.attacks if a.rsplit("_", 1)[0] not in ALL_KINDS or a.rsplit("_", 1)[-1] not in VARIANTS]
    if bad:
        raise DataError(f"unknown masquerade attack(s) {bad}; valid: "
                        f"{[attack_name(k, v) for k in ALL_KINDS for v in VARIANTS]}")
    log(f"generating {len(kinds)} masquerade kinds x {len(VARIANTS)} variants on {what}")
    m = src.masquerade
    captures, plans = generate(clean, kinds, m.occurrences, m.duration_s, m.seed, feat.dbc, m.targets,
                               feat.byte_order)
    if src.attacks:
        captures = {k: v for k, v in captures.items() if k in src.attacks}
    names = list(captures)
    frames = [captures[n] for n in names]
    cuts = can_source.cut_captures(frames, names, src, same_timeline=True)
    fit_end = min(c.clock for c in cuts)
    fit = clean.select(slice(0, int(np.searchsorted(clean.timestamp, fit_end))))
    after = clean.select(slice(int(np.searchsorted(clean.timestamp, max(c.clock for c in cuts))), len(clean)))
    log(f"cut at {fit_end:.2f} s; features and rules fitted on the clean capture before it ({len(fit)} frames)")
    others = []
    for more in src.captures[1:]:  # other clean drives: fitted on, not attacked
        others.append(_clean_drive(more, src, log))
        log(f"features and rules also fitted on {more.path} ({len(others[-1])} clean frames)")
    data = can_source.prepare_cut_captures(frames, names, cuts, [fit, *others], src, feat, log,
                                           f"masquerades generated on {what}", benign_test=after)
    if feat.signals:  # a short clean drive has not shown the ranges and combinations those columns judge by
        can_source.drop_short_driving_columns(data, feat, log)
    data.default_holdout = [[n for n in names if n.rsplit("_", 1)[0] == k] for k in kinds]
    data.stats["masquerade"] = {"occurrences": m.occurrences, "duration_s": m.duration_s, "seed": m.seed,
                                "injections": plans}
    return data


__all__ = ["KINDS", "VARIANTS", "Injection", "attack_name", "false_values", "generate", "inject", "plan",
           "prepare_masquerade", "target_signals"]
