"""CAN frames -> feature tensors -> ``SampleSet``.

Frame-level features (``FRAME_FEATURES``, F = 21), all roughly in [0, 1] or [-1, 1]:
    id_scaled       ID / 0x7FF (29-bit IDs: / 0x1FFFFFFF)
    is_extended     1 for 29-bit IDs
    dlc             min(data length, 8) / 8
    b0..b7          payload bytes / 255
    dt_log_ratio    log2(inter-arrival since the previous frame of the same ID / that ID's
                    typical period) / 4, clipped to [-2, 1]; 0 for an ID's first frame.
                    The clock is the timestamp, or, for captures without timestamps
                    (CICIoV2024), the frame index (the period is then "frames between
                    occurrences"); the typical periods come from benign training data.
    hamming         bits changed vs the previous frame of the same ID / 64
    bytes_changed   bytes changed vs the previous frame of the same ID / 8
    id_known        1 if the ID occurs in the benign training traffic
    delta_ratio     largest per-byte change vs the previous frame of the same ID, relative to
                    that ID's benign change scale for that byte (99.9% quantile of |delta|, from
                    MIN_SCALE_FRAMES clean frames on; the full byte range for rarer IDs):
                    log2(1 + max_i |delta_i| / (scale_i + 1)) / 4, clipped to [0, 1]. A slowly
                    varying signal that jumps (a masquerade starting or ending, a spoofed value
                    interleaved with genuine ones) stands out; counters and checksums, whose
                    benign scale is large, do not.
    xid_residual    cross-ID redundancy: vehicles broadcast the same physical quantity in
                    several messages (vehicle speed and wheel speeds, ...). From benign traffic
                    each byte / 16-bit big-endian word of an ID is linearly regressed on every
                    byte/word of every other ID's latest frame; relations with R^2 >= 0.99
                    between smooth signals (frame-to-frame change <= 10% of the range, >= 16
                    levels: no counters, checksums or flags; no value that only counts up) are kept, at most 4 per ID. Per frame: log2(1 + |residual| / benign 99.9% |residual|) / 4 of the
                    worst relation of its ID, clipped to [0, 1]; 0 for IDs without relations.
                    A masquerading ECU that sends the right ID at the right period with a wrong
                    value disagrees with the redundant copies sent by the other ECUs.
    silence         bus-level view of missing IDs: max over periodic known IDs (99.9% benign
                    inter-arrival within 4x the median; event-driven IDs are never "missing") of the time since
                    that ID was last seen relative to its benign tolerance (99.9% quantile of its
                    inter-arrival), as log2(.) / 8 clipped to [0, 1]. A suspended ECU makes every
                    frame sent while it is silent carry a large value.
    silent_ids      number of periodic known IDs currently overdue (gap > tolerance), / 4,
                    clipped to [0, 1].
    dt2_log_ratio   like dt_log_ratio, but the time since the *second* previous frame of the same
                    ID (log2(dt2 / period) / 4, clipped to [-2, 1]; 0.25 on a regular stream).
    delta2_ratio    like delta_ratio, but against the second previous frame of the same ID.
                    Why both: a replayed or injected frame between two genuine ones makes the
                    genuine frame after it look as odd as itself to the one-back features (short
                    gap, payload jump). Against the frame two back, the genuine frame is
                    consistent again (gap of about one period, small change) and the injected
                    one is not, which breaks that tie without looking ahead.

The last four features give each frame a causal view of the ID's history and of the whole
bus, so that a window of W frames (whose frames the network sees in arbitrary order) still
tells which IDs are missing or inconsistent. Everything they need is learned from benign
training traffic by ``FeatureState.fit``; nothing is specific to the simulator's IDs.

With ``signals`` (``FeatureState.fit(..., signals=True)``, config ``features.signals: true``) the
frame also carries the signal-level columns of :mod:`fastmaml.apps.ids.can.signals`
(``SIGNAL_FEATURES``: its signals against their clean range, dynamics and cross-ID partners),
appended after these 21; :func:`frame_feature_names` gives a state's columns.

Window-level samples stack W consecutive frames' features into [W, F]. A window's label is
(``label_rule="any"``, default) the most frequent attack label among its frames if any
frame is an attack, else benign; with ``"majority"`` it is an attack only when more than
half of its frames are attack frames.

Extraction is vectorized per chunk (argsort by ID to find each frame's predecessor) and
carries per-ID state across chunks, so streamed and one-shot results are identical.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastmaml.apps.ids.can.frames import BENIGN, FrameBatch
from fastmaml.apps.ids.can.relations import (MIN_ID_FRAMES, fit_relations, frames_by_id, last_index, refit_scales,
                                             signal)
from fastmaml.apps.ids.can.signals import (SIGNAL_FEATURES, Signal, SignalFeaturizer, byte_order_for,
                                           find_coarse_fields, find_signals, fit_signals, fit_statistics,
                                           payload_words, signals_from_dicts, signals_to_dicts)
from fastmaml.apps.ids.can.states import (LONG_DRIVE_S, STATE_FEATURES, StateFeaturizer, StateField, fit_followers,
                                          fit_states, states_from_dicts, states_to_dicts)
from fastmaml.apps.ids.samples import SampleSet, make_windows, window_labels
from fastmaml.errors import DataError

FRAME_FEATURES: list[str] = [
    "id_scaled", "is_extended", "dlc", *[f"b{i}" for i in range(8)], "dt_log_ratio", "hamming", "bytes_changed",
    "id_known", "delta_ratio", "xid_residual", "silence", "silent_ids", "dt2_log_ratio", "delta2_ratio",
]
# The columns naming the frame's ID and its raw payload (``features.identity: false`` leaves them out). A detector
# adapted on K attack frames, all from one or two IDs, can separate them from clean traffic by *which ID they are*
# (or their exact bytes) and then flags every clean frame of that ID while missing the same attack on another ID; the
# other columns describe a frame only relative to its ID's clean behaviour (timing, change, partner residuals,
# signal values against their range), which carries over from ID to ID.
IDENTITY_FEATURES: list[str] = ["id_scaled", "is_extended", "dlc", *[f"b{i}" for i in range(8)]]
_POP = np.array([bin(i).count("1") for i in range(256)], np.float32)
_MAX_DT_SAMPLES = 20000  # per ID, spread over the whole drive (_Spread): enough for a stable median and 99.9% tail
_MAX_REL_FRAMES = 40000  # benign frames the cross-ID regression is fitted on (memory: frames x signals)
# Benign frames the clean statistics (signal ranges, tails, still runs, residual scales) are measured on: all of them
# up to about 3 hours of a busy bus (16 bytes a frame), so that the columns judging a value against clean driving
# know the whole drive, not its first minutes.
_MAX_STAT_FRAMES = 20_000_000
_NEW_CAPTURE_GAP_S = 10.0  # clean frames this far apart (or with the clock going back) come from different captures
# Byte changes (delta_ratio, delta2_ratio) are judged against an ID's own clean change scale only from this many clean
# frame pairs on; below it, against the full byte range. A scale from 20-99 frames is a 99.9% quantile of as many
# changes, in practice their maximum (0 for a byte the drive never moved): on 26 s of a real car 36 of its 106 IDs sent
# fewer than 100 frames, and another drive's first changes of their bytes scored as attacks (0x5AF and 0x297: 14 false
# alerts over six seeds' own-car detectors, 0 since; results/ids/own_car_union). A fast ID keeps its own scale.
MIN_SCALE_FRAMES = 100
_PERIODIC_SPREAD = 4.0  # an ID is periodic when its 99.9% benign inter-arrival is within this x its median
_MAX_SIGNAL_FRAMES = 400_000  # benign frames signals are extracted from (about 4 minutes of a busy bus)


def capture_index(clock_s: np.ndarray) -> np.ndarray:
    """Which capture each clean frame comes from (0, 1, ...), from its clock in seconds: a new one where the clock goes
    back or jumps by more than ``_NEW_CAPTURE_GAP_S``."""
    if len(clock_s) == 0:
        return np.zeros(0, np.int32)
    steps = np.diff(clock_s)
    return np.r_[0, np.cumsum((steps < 0) | (steps > _NEW_CAPTURE_GAP_S))].astype(np.int32)


# drive_index: captures whose frames repeat one another's runs of _DRIVE_GRAM consecutive (ID, payload) pairs, over
# _SAME_DRIVE_SHARE of the first _DRIVE_FRAMES frames of the shorter one, are recordings of one drive. On ROAD's eight
# attack files and a clean prefix cut from one, twins share every run and other files none (an idle bus that repeats
# itself would join its captures: the capture check then has fewer drives to hold out, never a false one).
_DRIVE_GRAM = 8
_DRIVE_FRAMES = 4096
_SAME_DRIVE_SHARE = 0.5


def _frame_runs(ids: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The distinct hashes of every run of ``_DRIVE_GRAM`` consecutive (ID, payload) pairs."""
    words = np.zeros((len(ids), 8), np.uint8)
    width = min(8, data.shape[1]) if data.ndim == 2 else 0
    words[:, :width] = data[:, :width]
    frame = np.ascontiguousarray(words).view(np.uint64).ravel()
    frame = frame ^ (ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))  # the ID mixed into the payload's word
    n = len(frame) - _DRIVE_GRAM + 1
    if n <= 0:
        return np.zeros(0, np.uint64)
    runs = np.zeros(n, np.uint64)
    for k in range(_DRIVE_GRAM):  # a polynomial hash, wrapping in 64 bits
        runs = runs * np.uint64(0x100000001B3) + frame[k:k + n]
    return np.unique(runs)


def drive_index(capture: np.ndarray, ids: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Which drive each clean frame comes from (the smallest capture index of its drive), given its ``capture``
    (:func:`capture_index`), CAN ``ids`` and payload bytes ``data``: captures that repeat one another's frames are
    one drive. Why: a data set may ship one drive as several files (ROAD: each attack's masquerade and its
    fabrication are the same recording with the attack written in two ways), and a relation checked by holding out
    one capture at a time (signals' capture check) would find the held-out drive still in the fit."""
    capture = np.asarray(capture)
    caps = np.unique(capture)
    if len(caps) < 2:
        return capture.copy()
    ids, data = np.asarray(ids), np.asarray(data)
    runs = {}
    for c in caps.tolist():
        rows = np.flatnonzero(capture == c)[:_DRIVE_FRAMES]
        runs[c] = _frame_runs(ids[rows], data[rows])
    root = {c: c for c in runs}

    def find(c: int) -> int:
        while root[c] != c:
            c = root[c]
        return c

    order = list(runs)
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            shorter = min(len(runs[a]), len(runs[b]))
            if shorter and len(np.intersect1d(runs[a], runs[b], assume_unique=True)) >= _SAME_DRIVE_SHARE * shorter:
                ra, rb = find(a), find(b)
                root[max(ra, rb)] = min(ra, rb)
    lookup = np.array([find(c) for c in order])
    return lookup[np.searchsorted(caps, capture)].astype(capture.dtype)


class _Spread:
    """A sample of a stream of rows spread over all of it, not its beginning: row i is kept while
    ``u(i) < 1 / stride``, where u is a fixed hash of i in [0, 1); the stride doubles (the held rows above the new
    bound dropped) whenever more than ``cap`` rows are held. A hash rather than every stride-th row: a rolling counter
    wraps every 16 frames, and a power-of-two stride would always or never see its wrap. Chunking does not matter."""

    def __init__(self, cap: int) -> None:
        self.cap, self.stride, self.seen = cap, 1, 0
        self.parts: list[np.ndarray] = []
        self.keys: list[np.ndarray] = []

    @staticmethod
    def _u(index: np.ndarray) -> np.ndarray:
        h = (index.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)

    def add(self, rows: np.ndarray) -> None:
        u = self._u(np.arange(self.seen, self.seen + len(rows)))
        self.seen += len(rows)
        keep = u < 1.0 / self.stride
        self.parts.append(rows[keep])
        self.keys.append(u[keep])
        while len(self) > self.cap:
            self.stride *= 2
            rows_all, u_all = np.concatenate(self.parts), np.concatenate(self.keys)
            keep = u_all < 1.0 / self.stride
            self.parts, self.keys = [rows_all[keep]], [u_all[keep]]

    def rows(self) -> np.ndarray:
        return np.concatenate(self.parts)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)


@dataclass
class FeatureState:
    """What features learn from benign training traffic: the clock, each ID's typical period,
    inter-arrival tolerance and per-byte change scale, and cross-ID relations.

    States saved by version 1 (no tolerances/delta scales/relations) still load; the features
    that need the missing tables are then 0 (or, for delta_ratio, relative to the full byte range).
    """

    clock: str  # "time" (seconds) or "index" (frames)
    periods: dict[int, float]
    default_period: float
    known_ids: list[int] = field(default_factory=list)
    tolerances: dict[int, float] = field(default_factory=dict)  # 99.9% benign inter-arrival of each periodic ID
    delta_scale: dict[int, list[float]] = field(default_factory=dict)  # 99.9% benign |byte delta| per ID, 8 values
    relations: list[list[float]] = field(default_factory=list)  # see relations.fit_relations
    signals: list[Signal] = field(default_factory=list)  # see signals.fit_signals; empty: no signal features
    # Fitted with a DBC (features.dbc): its path, the signals it gave, those left out, and the
    # inferred segmentation scored against it (dbc.SegmentationScore); empty without a DBC.
    dbc: dict = field(default_factory=dict)
    # Flags and states with their clean context tables (states.py; the sig_state column); on less than LONG_DRIVE_S
    # of clean driving (too short to have seen the combinations a car shows) only the states that follow states on
    # other IDs are judged (states.fit_followers). None: a short drive without such states, no signals, or saved
    # before states (no column).
    states: list[StateField] | None = None
    # Seconds of clean driving the state was fitted on (0: saved before it was recorded). Rules that judge a value
    # by the clean range alone need a long drive (PlausibilityRule's range check: LONG_DRIVE_S).
    clean_seconds: float = 0.0
    # Slow fields seen at 3-7 values, too few for a signal: judged only by sig_full (signals.find_coarse_fields).
    coarse: list[Signal] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {
            "format": "fastmaml.ids.FeatureState", "version": 2, "clock": self.clock,
            "periods": {str(k): v for k, v in sorted(self.periods.items())},
            "default_period": self.default_period, "known_ids": sorted(self.known_ids),
            "tolerances": {str(k): v for k, v in sorted(self.tolerances.items())},
            "delta_scale": {str(k): v for k, v in sorted(self.delta_scale.items())},
            "relations": self.relations,
            **({"signals": signals_to_dicts(self.signals)} if self.signals else {}),
            **({"dbc": self.dbc} if self.dbc else {}),
            **({"states": states_to_dicts(self.states)} if self.states is not None else {}),
            "clean_seconds": self.clean_seconds,
            **({"coarse": signals_to_dicts(self.coarse)} if self.coarse else {}),
        }

    @staticmethod
    def from_dict(d: dict, source: str = "<dict>") -> FeatureState:
        """Inverse of ``to_dict``; DataError on a wrong or incomplete dict."""
        if d.get("format") != "fastmaml.ids.FeatureState" or d.get("clock") not in ("time", "index"):
            raise DataError(f"{source}: not a fastmaml FeatureState (format/clock missing); refit with FeatureState.fit")
        try:
            sigs = signals_from_dicts(d.get("signals", []), source)
            return FeatureState(
                d["clock"], {int(k): float(v) for k, v in d["periods"].items()}, float(d["default_period"]),
                [int(x) for x in d["known_ids"]],
                {int(k): float(v) for k, v in d.get("tolerances", {}).items()},
                {int(k): [float(x) for x in v] for k, v in d.get("delta_scale", {}).items()},
                [[int(r[0]), int(r[1]), int(r[2]), int(r[3]), float(r[4]), float(r[5]), float(r[6])]
                 for r in d.get("relations", [])],
                sigs,
                dict(d.get("dbc", {})),
                states_from_dicts(d["states"], len(sigs), source) if "states" in d else None,
                float(d.get("clean_seconds", 0.0)),
                signals_from_dicts(d.get("coarse", []), source),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{source}: corrupt FeatureState ({e}); refit with FeatureState.fit") from e

    def save(self, path: str | Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @staticmethod
    def load(path: str | Path) -> FeatureState:
        """Read a JSON file written by ``save``."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: cannot read FeatureState JSON ({e}); re-save it with FeatureState.save") from e
        return FeatureState.from_dict(d, str(path))

    @staticmethod
    def fit(batches: Iterable[FrameBatch] | FrameBatch, clock: str = "auto", signals: bool = False,
            dbc: str | Path = "", byte_order: str = "auto") -> FeatureState:
        """Learn periods (median same-ID inter-arrival), tolerances, byte-change scales, cross-ID
        relations (on the first 40,000 benign frames) and known IDs from benign frames; with
        ``signals`` also the payload signals and their partners (on the first 400,000), taken
        from the DBC file ``dbc`` when given (see :mod:`fastmaml.apps.ids.can.dbc`).

        Frames labelled as attacks are ignored; unlabelled frames count as benign.
        ``clock``: ``"time"``, ``"index"`` or ``"auto"`` (time when the first chunk has timestamps).
        """
        if isinstance(batches, FrameBatch):
            batches = [batches]
        signals = signals or bool(dbc)
        dts: dict[int, _Spread] = {}
        last: dict[int, float] = {}
        deltas: dict[int, _Spread] = {}
        last_data: dict[int, np.ndarray] = {}
        rel_ids: list[np.ndarray] = []
        rel_data: list[np.ndarray] = []
        rel_n = 0
        sig_ids: list[np.ndarray] = []
        sig_data: list[np.ndarray] = []
        sig_clk: list[np.ndarray] = []
        sig_n = 0
        stat_ids: list[np.ndarray] = []
        stat_data: list[np.ndarray] = []
        stat_clock: list[np.ndarray] = []  # each frame's time, seconds (index clock: 1,600 frames a second)
        stat_n = 0
        clean_s = 0.0  # clean driving seen, seconds (index clock: 1,600 frames a second)
        offset = 0
        for b in batches:
            if not len(b):
                continue
            if clock == "auto":
                clock = "time" if b.has_timestamps else "index"
            if clock == "time" and not b.has_timestamps:
                raise DataError("FeatureState.fit: clock='time' but frames lack timestamps; use clock='index'")
            clk = b.timestamp if clock == "time" else np.arange(offset, offset + len(b), dtype=np.float64)
            per_s = 1.0 if clock == "time" else 1600.0  # clock units a second (index clock: ~1,600 frames/s)
            offset += len(b)
            keep = ~b.is_attack()
            ids, clk = b.can_id[keep].astype(np.int64), clk[keep]
            if len(clk) > 1:
                clean_s += float(clk[-1] - clk[0]) / per_s
            data = b.data[keep, :8]
            if rel_n < _MAX_REL_FRAMES:
                take = min(len(ids), _MAX_REL_FRAMES - rel_n)
                rel_ids.append(ids[:take])
                rel_data.append(data[:take])
                rel_n += take
            if stat_n < _MAX_STAT_FRAMES and len(ids):
                take = min(len(ids), _MAX_STAT_FRAMES - stat_n)
                stat_clock.append(clk[:take] / per_s)
                stat_ids.append(ids[:take].astype(np.int32))
                stat_data.append(np.ascontiguousarray(data[:take]))
                stat_n += take
            if signals and sig_n < _MAX_SIGNAL_FRAMES:
                take = min(len(ids), _MAX_SIGNAL_FRAMES - sig_n)
                sig_ids.append(ids[:take])
                sig_data.append(data[:take])
                sig_clk.append(clk[:take] / per_s)
                sig_n += take
            for cid in np.unique(ids).tolist():
                m = ids == cid
                c = clk[m]
                prev = last.get(cid)
                seq = c if prev is None else np.concatenate([[prev], c])
                last[cid] = float(c[-1])
                if len(seq) > 1:
                    dts.setdefault(cid, _Spread(_MAX_DT_SAMPLES)).add(np.diff(seq))
                pd = data[m].astype(np.int16)
                prev_d = last_data.get(cid)
                seq_d = pd if prev_d is None else np.concatenate([prev_d[None], pd])
                last_data[cid] = pd[-1]
                if len(seq_d) > 1:
                    deltas.setdefault(cid, _Spread(_MAX_DT_SAMPLES)).add(np.abs(np.diff(seq_d, axis=0)))
        if not last:
            raise DataError("FeatureState.fit: no benign frames given; fit on benign training traffic")
        periods = {cid: float(max(np.median(v.rows()), 1e-9)) for cid, v in dts.items()}
        default = float(np.median(list(periods.values()))) if periods else 1.0
        # Only periodic IDs seen often enough get a silence tolerance: a rare or event-driven ID
        # (inter-arrival spread far beyond its median) has no period to miss.
        tolerances = {}
        for cid, v in dts.items():
            tol = float(max(np.quantile(v.rows(), 0.999), 1e-9))
            if len(v) >= MIN_ID_FRAMES and tol <= _PERIODIC_SPREAD * periods[cid]:
                tolerances[cid] = tol
        delta_scale = {cid: np.quantile(v.rows(), 0.999, axis=0).astype(float).tolist()
                       for cid, v in deltas.items() if len(v) >= MIN_SCALE_FRAMES}
        all_ids = np.concatenate(stat_ids) if stat_ids else np.zeros(0, np.int32)
        all_data = np.concatenate(stat_data) if stat_data else np.zeros((0, 8), np.uint8)
        relations = fit_relations(np.concatenate(rel_ids), np.concatenate(rel_data)) if rel_ids else []
        by_id = frames_by_id(all_ids)  # every whole-drive pass below looks frames up per ID through it
        all_clock = np.concatenate(stat_clock) if stat_clock else None
        all_capture = capture_index(all_clock) if all_clock is not None else None  # which capture each frame is from
        refit_scales(relations, by_id, all_data, capture=all_capture)
        fields, dbc_info = None, {}
        if signals and dbc:
            from fastmaml.apps.ids.can.dbc import read_dbc  # cantools only when a DBC is given
            fields, skipped = read_dbc(dbc)
            dbc_info = {"path": str(dbc), "fields": len(fields), "skipped": skipped}
        order = byte_order_for(byte_order, clean_s >= LONG_DRIVE_S)
        sigs, coarse = [], []
        if sig_ids:
            sig_ids_all, sig_data_all = np.concatenate(sig_ids), np.concatenate(sig_data)
            sig_clock = np.concatenate(sig_clk)
            sig_capture = capture_index(sig_clock)
            sigs = fit_signals(sig_ids_all, sig_data_all, sig_clock, fields, order, sig_capture,
                               drive_index(sig_capture, sig_ids_all, sig_data_all))
            coarse = find_coarse_fields(sig_ids_all, sig_data_all, sigs, fields)
        all_words = payload_words(all_data)
        fit_statistics(sigs + coarse, by_id, all_words, all_capture, all_clock)
        states = None
        if signals and sig_ids:
            # On the whole drive, not its first minutes: a reverse light flips only when the car reverses, which
            # one capture of the drive may hold and the first minutes may not. A short drive judges followers only.
            fit = fit_states if clean_s >= LONG_DRIVE_S else fit_followers
            states = fit(by_id, all_words, sigs, all_capture)
        if fields is not None:
            dbc_info.update(signals=[s.name for s in sigs], **_score_against(sigs, sig_ids, sig_data))
        return FeatureState("index" if clock == "auto" else clock, periods, default, sorted(last),
                            tolerances, delta_scale, relations, sigs, dbc_info, states, clean_s, coarse)


def _score_against(dbc_sigs: list[Signal], sig_ids: list[np.ndarray], sig_data: list[np.ndarray]) -> dict:
    """``{"inferred_vs_dbc": ...}``: what the segmentation without the DBC finds on the same frames, scored."""
    from fastmaml.apps.ids.can.dbc import score_segmentation

    if not sig_ids:
        return {}
    inferred = find_signals(np.concatenate(sig_ids), np.concatenate(sig_data), byte_order="both")  # both ways
    return {"inferred_vs_dbc": score_segmentation(inferred, dbc_sigs).to_dict()}


def frame_feature_names(state: FeatureState) -> list[str]:
    """The columns ``FrameFeaturizer(state)`` computes: FRAME_FEATURES, then SIGNAL_FEATURES when it has signals,
    then STATE_FEATURES when it has state tables (states fitted since they exist)."""
    return (list(FRAME_FEATURES) + (list(SIGNAL_FEATURES) if state.signals else [])
            + (list(STATE_FEATURES) if state.states is not None else []))


class FrameFeaturizer:
    """Streaming frame-level feature extractor; call ``transform`` on consecutive chunks."""

    def __init__(self, state: FeatureState) -> None:
        self.state = state
        self.feature_names = frame_feature_names(state)
        self._signals = SignalFeaturizer(state.signals, state.coarse) if state.signals else None
        self._states = StateFeaturizer(state.states, state.signals) if state.states is not None else None
        ids = np.array(sorted(state.periods), np.int64)
        self._pid = ids
        self._pval = np.array([state.periods[i] for i in ids.tolist()], np.float64)
        self._known = np.array(sorted(state.known_ids), np.int64)
        self._sid = np.array(sorted(state.delta_scale), np.int64)
        # Unknown IDs get the full byte range as scale: id_known already flags them.
        self._sval = np.array([state.delta_scale[i] for i in self._sid.tolist()] + [[255.0] * 8], np.float32)
        self._tols = [(int(k), float(v)) for k, v in sorted(state.tolerances.items())]
        self._rel = state.relations
        self.reset()

    def reset(self) -> None:
        """Forget the previous frames (start of a new capture)."""
        self._last_clock: dict[int, float] = {}
        self._last_data: dict[int, np.ndarray] = {}
        self._last2_clock: dict[int, float] = {}  # the frame before the last one of each ID
        self._last2_data: dict[int, np.ndarray] = {}
        self._offset = 0
        self._start: float | None = None  # first clock of the capture: "last seen" before an ID's first frame
        if self._signals is not None:
            self._signals.reset()
        if self._states is not None:
            self._states.reset()

    def transform(self, b: FrameBatch) -> np.ndarray:
        """float32 [len(b), len(self.feature_names)] features of the next chunk of the capture."""
        n = len(b)
        out = np.empty((n, len(self.feature_names)), np.float32)
        if n == 0:
            return out
        if self.state.clock == "time":
            if not b.has_timestamps:
                raise DataError("FrameFeaturizer: state uses the time clock but frames lack timestamps; "
                                "fit the FeatureState on the same kind of capture")
            clk = b.timestamp
        else:
            clk = np.arange(self._offset, self._offset + n, dtype=np.float64)
        self._offset += n
        ids = b.can_id.astype(np.int64)
        data = b.data[:, :8]
        if self._start is None:
            self._start = float(clk[0])
        # Bus context needs each ID's state *before* this chunk, so read it before it is updated below.
        self._bus_context(ids, data, clk, out)

        # Predecessor of each frame with the same ID, inside this chunk.
        order = np.argsort(ids, kind="stable")
        sid = ids[order]
        first_sorted = np.ones(n, bool)
        first_sorted[1:] = sid[1:] != sid[:-1]
        prev_sorted = np.empty(n, np.int64)
        prev_sorted[0] = -1
        prev_sorted[1:] = order[:-1]
        prev_sorted[first_sorted] = -1
        prev = np.empty(n, np.int64)
        prev[order] = prev_sorted
        has_prev = prev >= 0
        prev_clk = np.where(has_prev, clk[np.maximum(prev, 0)], np.nan)
        prev_data = data[np.maximum(prev, 0)].copy()
        # First frame of each ID in the chunk: predecessor from earlier chunks, if any.
        firsts = order[first_sorted]
        last_sorted = np.ones(n, bool)
        last_sorted[:-1] = sid[1:] != sid[:-1]
        # Second predecessor: inside the chunk the predecessor's predecessor; for the first two
        # frames of an ID in the chunk, from the last / second-last frames of earlier chunks.
        prev2 = np.where(has_prev, prev[np.maximum(prev, 0)], -1)
        has_prev2 = prev2 >= 0
        prev2_clk = np.where(has_prev2, clk[np.maximum(prev2, 0)], np.nan)
        prev2_data = data[np.maximum(prev2, 0)].copy()
        for k in firsts.tolist():
            cid = int(ids[k])
            if cid in self._last_clock:
                prev_clk[k] = self._last_clock[cid]
                prev_data[k] = self._last_data[cid]
                has_prev[k] = True
                if cid in self._last2_clock:
                    prev2_clk[k] = self._last2_clock[cid]
                    prev2_data[k] = self._last2_data[cid]
                    has_prev2[k] = True
        seconds = order[~first_sorted & np.roll(first_sorted, 1)]
        # ^ sorted positions right after a first: the second frame of each ID in the chunk
        for k in seconds.tolist():
            cid = int(ids[k])
            if cid in self._last_clock:
                prev2_clk[k] = self._last_clock[cid]
                prev2_data[k] = self._last_data[cid]
                has_prev2[k] = True
        for k in order[last_sorted].tolist():
            cid = int(ids[k])
            p = int(prev[k])
            if p >= 0:
                self._last2_clock[cid] = float(clk[p])
                self._last2_data[cid] = data[p].copy()
            elif cid in self._last_clock:
                self._last2_clock[cid] = self._last_clock[cid]
                self._last2_data[cid] = self._last_data[cid]
            self._last_clock[cid] = float(clk[k])
            self._last_data[cid] = data[k].copy()

        # Typical period per frame (default for IDs unseen in training).
        pos = np.searchsorted(self._pid, ids)
        pos_c = np.minimum(pos, max(len(self._pid) - 1, 0))
        found = (pos < len(self._pid)) & (self._pid[pos_c] == ids) if len(self._pid) else np.zeros(n, bool)
        period = np.where(found, self._pval[pos_c] if len(self._pid) else 1.0, self.state.default_period)
        dt = np.where(has_prev, clk - prev_clk, period)
        ratio = np.log2(np.maximum(dt, 1e-9) / period) / 4.0

        ext = b.is_extended
        out[:, 0] = np.where(ext, ids / 0x1FFFFFFF, np.minimum(ids / 0x7FF, 1.0))
        out[:, 1] = ext
        out[:, 2] = np.minimum(b.length, 8) / 8.0
        out[:, 3:11] = data * np.float32(1 / 255)
        out[:, 11] = np.clip(ratio, -2.0, 1.0)
        x = np.where(has_prev[:, None], data ^ prev_data, 0).astype(np.uint8)
        out[:, 12] = _POP[x].sum(1) / 64.0
        out[:, 13] = (x != 0).sum(1) / 8.0
        if len(self._known):
            kp = np.minimum(np.searchsorted(self._known, ids), len(self._known) - 1)
            out[:, 14] = self._known[kp] == ids
        else:
            out[:, 14] = 0.0
        # delta_ratio: the same byte XOR/has_prev as hamming, but as a magnitude relative to the ID's scale.
        spos = np.searchsorted(self._sid, ids)
        spos_c = np.minimum(spos, max(len(self._sid) - 1, 0))
        s_found = (spos < len(self._sid)) & (self._sid[spos_c] == ids) if len(self._sid) else np.zeros(n, bool)
        scale = self._sval[np.where(s_found, spos_c, len(self._sid))]
        delta = np.abs(data.astype(np.int16) - prev_data.astype(np.int16)).astype(np.float32)
        rel = (delta / (scale + 1.0)).max(1)
        out[:, 15] = np.where(has_prev, np.minimum(np.log2(1.0 + rel) / 4.0, 1.0), 0.0)
        dt2 = np.where(has_prev2, clk - prev2_clk, 2 * period)
        out[:, 19] = np.clip(np.log2(np.maximum(dt2, 1e-9) / period) / 4.0, -2.0, 1.0)
        delta2 = np.abs(data.astype(np.int16) - prev2_data.astype(np.int16)).astype(np.float32)
        rel2 = (delta2 / (scale + 1.0)).max(1)
        out[:, 20] = np.where(has_prev2, np.minimum(np.log2(1.0 + rel2) / 4.0, 1.0), 0.0)
        if self._signals is not None:
            out[:, len(FRAME_FEATURES):len(FRAME_FEATURES) + len(SIGNAL_FEATURES)] = self._signals.transform(ids, data)
        if self._states is not None:
            out[:, out.shape[1] - len(STATE_FEATURES):] = self._states.transform(ids, data)
        return out

    def _bus_context(self, ids: np.ndarray, data: np.ndarray, clk: np.ndarray, out: np.ndarray) -> None:
        """Fill xid_residual, silence and silent_ids (columns 16..18) for one chunk.

        Per monitored ID, a running max over the chunk gives, for every frame, that ID's latest
        frame at or before it; before its first frame in the chunk the carried state of earlier
        chunks applies (so any chunking gives the same result).
        """
        n = len(ids)
        last_pos = {cid: last_index(ids, cid) for cid in {int(r[2]) for r in self._rel}}
        # silence / silent_ids. The clock only moves forward, so "time this ID was last seen" is a
        # running max of the clock over its frames (fewer passes than gathering via _last_index;
        # this loop is the cost that grows with the number of IDs on the bus).
        worst = np.zeros(n)
        n_over = np.zeros(n)
        for cid, tol in self._tols:
            seen = np.maximum.accumulate(np.where(ids == cid, clk, self._last_clock.get(cid, self._start)))
            r = (clk - seen) / tol
            np.maximum(worst, r, out=worst)
            n_over += r > 1.0
        out[:, 17] = np.clip(np.log2(np.maximum(worst, 1e-9)) / 8.0, 0.0, 1.0)
        out[:, 18] = np.minimum(n_over, 4.0) / 4.0
        # xid_residual: worst relation of the frame's ID
        res = np.zeros(n)
        for tx, ts, sy, ss, a, c, sc in self._rel:
            rows = np.flatnonzero(ids == int(tx))
            if not len(rows):
                continue
            src = last_pos[int(sy)][rows]
            have = src >= 0
            src_data = data[np.maximum(src, 0)]
            carried = self._last_data.get(int(sy))
            if carried is not None:
                src_data[~have] = carried
                have[:] = True
            if not have.any():
                continue
            tv = signal(data[rows], int(ts))
            sv = signal(src_data, int(ss))
            r = np.where(have, np.abs(tv - (a * sv + c)) / sc, 0.0)
            res[rows] = np.maximum(res[rows], r)
        out[:, 16] = np.minimum(np.log2(1.0 + res) / 4.0, 1.0)


def _keys(start: int, n: int, seed: int) -> np.ndarray:
    """splitmix64 hash of the global sample index: a deterministic random key independent of chunking."""
    x = (np.arange(start, start + n, dtype=np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64))
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def build_sample_set(
    source: Iterable[FrameBatch] | FrameBatch,
    state: FeatureState,
    *,
    window: int | None = None,
    stride: int | None = None,
    label_rule: str = "any",
    class_names: list[str] | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    name: str = "",
) -> SampleSet:
    """Features of a capture (reader, list of batches or one batch) as a SampleSet.

    Args:
        window: None for frame-level samples [N, F]; else W for window samples [N, W, F].
        stride: window step (default W: non-overlapping).
        class_names: fixed class list (benign first); frames of other classes are dropped.
            Default: benign, then classes in order of appearance.
        max_per_class: keep at most this many samples per class, chosen uniformly at random
            but deterministically for ``seed`` (a streaming bottom-k on hashed sample indices),
            so the 1.2M-row benign file never needs to fit in memory.
    Raises DataError on frames without labels.
    """
    if isinstance(source, FrameBatch):
        source = [source]
    if window is not None and window < 1:
        raise DataError(f"window must be >= 1, got {window}")
    stride = stride or window or 1
    names = list(class_names) if class_names is not None else [BENIGN]
    if names[0] != BENIGN:
        raise DataError(f"class_names must start with 'benign', got {names!r}")
    fixed = class_names is not None
    fz = FrameFeaturizer(state)
    kept_x: dict[int, np.ndarray] = {}
    kept_k: dict[int, np.ndarray] = {}
    tail_x = np.zeros((0, len(fz.feature_names)), np.float32)
    tail_y = np.zeros(0, np.int64)
    sample_no = 0
    for b in source:
        if not len(b):
            continue
        if (b.label < 0).any():
            raise DataError(f"{name or 'capture'}: frames without labels; give the reader a label file "
                            "(labels=...) to build a labelled SampleSet")
        if not fixed:
            names += [x for x in b.label_names if x not in names]
        y = b.label_codes(names)
        x = fz.transform(b)
        if window is not None:
            # Carry the unfinished tail so windows cross chunk borders exactly as in one pass.
            x = np.concatenate([tail_x, x])
            y = np.concatenate([tail_y, y])
            xs = make_windows(x, window, stride)
            ys = window_labels(y, window, stride, 0, label_rule) if len(xs) else np.zeros(0, np.int64)
            used = len(xs) * stride
            tail_x, tail_y = x[used:], y[used:]
            x, y = xs, ys
        ok = y >= 0
        keys = _keys(sample_no, len(y), seed)
        sample_no += len(y)
        x, y, keys = x[ok], y[ok], keys[ok]
        for c in np.unique(y).tolist():
            m = y == c
            xc, kc = x[m], keys[m]
            if c in kept_x:
                xc, kc = np.concatenate([kept_x[c], xc]), np.concatenate([kept_k[c], kc])
            if max_per_class is not None and len(kc) > max_per_class:
                sel = np.argpartition(kc, max_per_class - 1)[:max_per_class]
                xc, kc = xc[sel], kc[sel]
            kept_x[c], kept_k[c] = xc, kc
    shape = (0, window, len(fz.feature_names)) if window is not None else (0, len(fz.feature_names))
    xs_all, ys_all = [np.zeros(shape, np.float32)], [np.zeros(0, np.int64)]
    for c in sorted(kept_x):
        order = np.argsort(kept_k[c], kind="stable")  # deterministic order independent of chunking
        xs_all.append(kept_x[c][order])
        ys_all.append(np.full(len(order), c, np.int64))
    return SampleSet(
        torch.from_numpy(np.ascontiguousarray(np.concatenate(xs_all))).float(),
        torch.from_numpy(np.concatenate(ys_all)), names, fz.feature_names, name,
    )


def frame_features(batch: FrameBatch, state: FeatureState) -> torch.Tensor:
    """float32 [N, F] features of one whole capture (fresh predecessor state)."""
    return torch.from_numpy(FrameFeaturizer(state).transform(batch))
