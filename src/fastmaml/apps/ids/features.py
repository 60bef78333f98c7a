"""CAN frames -> feature tensors -> ``SampleSet``.

Frame-level features (``FRAME_FEATURES``, F = 15), all roughly in [0, 1] or [-1, 1]:
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

from fastmaml.apps.ids.frames import BENIGN, FrameBatch
from fastmaml.apps.ids.samples import SampleSet
from fastmaml.errors import DataError

FRAME_FEATURES: list[str] = [
    "id_scaled", "is_extended", "dlc", *[f"b{i}" for i in range(8)], "dt_log_ratio", "hamming", "bytes_changed",
    "id_known",
]
_POP = np.array([bin(i).count("1") for i in range(256)], np.float32)
_MAX_DT_SAMPLES = 20000  # per ID, enough for a stable median


@dataclass
class FeatureState:
    """What features learn from benign training traffic: the clock and each ID's typical period."""

    clock: str  # "time" (seconds) or "index" (frames)
    periods: dict[int, float]
    default_period: float
    known_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {
            "format": "fastmaml.ids.FeatureState", "version": 1, "clock": self.clock,
            "periods": {str(k): v for k, v in sorted(self.periods.items())},
            "default_period": self.default_period, "known_ids": sorted(self.known_ids),
        }

    @staticmethod
    def from_dict(d: dict, source: str = "<dict>") -> FeatureState:
        """Inverse of ``to_dict``; DataError on a wrong or incomplete dict."""
        if d.get("format") != "fastmaml.ids.FeatureState" or d.get("clock") not in ("time", "index"):
            raise DataError(f"{source}: not a fastmaml FeatureState (format/clock missing); refit with FeatureState.fit")
        try:
            return FeatureState(
                d["clock"], {int(k): float(v) for k, v in d["periods"].items()}, float(d["default_period"]),
                [int(x) for x in d["known_ids"]],
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
    def fit(batches: Iterable[FrameBatch] | FrameBatch, clock: str = "auto") -> FeatureState:
        """Learn periods (median same-ID inter-arrival) and known IDs from benign frames.

        Frames labelled as attacks are ignored; unlabelled frames count as benign.
        ``clock``: ``"time"``, ``"index"`` or ``"auto"`` (time when the first chunk has timestamps).
        """
        if isinstance(batches, FrameBatch):
            batches = [batches]
        dts: dict[int, list[np.ndarray]] = {}
        counts: dict[int, int] = {}
        last: dict[int, float] = {}
        offset = 0
        for b in batches:
            if not len(b):
                continue
            if clock == "auto":
                clock = "time" if b.has_timestamps else "index"
            if clock == "time" and not b.has_timestamps:
                raise DataError(f"FeatureState.fit: clock='time' but frames lack timestamps; use clock='index'")
            clk = b.timestamp if clock == "time" else np.arange(offset, offset + len(b), dtype=np.float64)
            offset += len(b)
            keep = ~b.is_attack()
            ids, clk = b.can_id[keep], clk[keep]
            for cid in np.unique(ids).tolist():
                c = clk[ids == cid]
                prev = last.get(cid)
                seq = c if prev is None else np.concatenate([[prev], c])
                last[cid] = float(c[-1])
                if counts.get(cid, 0) < _MAX_DT_SAMPLES and len(seq) > 1:
                    d = np.diff(seq)
                    dts.setdefault(cid, []).append(d)
                    counts[cid] = counts.get(cid, 0) + len(d)
        if not last:
            raise DataError("FeatureState.fit: no benign frames given; fit on benign training traffic")
        periods = {cid: float(max(np.median(np.concatenate(v)), 1e-9)) for cid, v in dts.items()}
        default = float(np.median(list(periods.values()))) if periods else 1.0
        return FeatureState("index" if clock == "auto" else clock, periods, default, sorted(last))


class FrameFeaturizer:
    """Streaming frame-level feature extractor; call ``transform`` on consecutive chunks."""

    feature_names = FRAME_FEATURES

    def __init__(self, state: FeatureState) -> None:
        self.state = state
        ids = np.array(sorted(state.periods), np.int64)
        self._pid = ids
        self._pval = np.array([state.periods[i] for i in ids.tolist()], np.float64)
        self._known = np.array(sorted(state.known_ids), np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the previous frames (start of a new capture)."""
        self._last_clock: dict[int, float] = {}
        self._last_data: dict[int, np.ndarray] = {}
        self._offset = 0

    def transform(self, b: FrameBatch) -> np.ndarray:
        """float32 [len(b), 15] features of the next chunk of the capture."""
        n = len(b)
        out = np.empty((n, len(FRAME_FEATURES)), np.float32)
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
        for k in firsts.tolist():
            cid = int(ids[k])
            if cid in self._last_clock:
                prev_clk[k] = self._last_clock[cid]
                prev_data[k] = self._last_data[cid]
                has_prev[k] = True
        for k in order[last_sorted].tolist():
            cid = int(ids[k])
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
        return out


def window_labels(labels: np.ndarray, window: int, stride: int, benign: int = 0, rule: str = "any") -> np.ndarray:
    """Label per window of ``labels`` (int codes, ``benign`` = benign code), see the module doc."""
    n = (len(labels) - window) // stride + 1 if len(labels) >= window else 0
    if n <= 0:
        return np.zeros(0, np.int64)
    idx = np.arange(n)[:, None] * stride + np.arange(window)[None, :]
    w = labels[idx]
    att = w != benign
    n_att = att.sum(1)
    out = np.full(n, benign, np.int64)
    need = n_att > (window // 2) if rule == "majority" else n_att > 0
    if rule not in ("any", "majority"):
        raise DataError(f"label_rule must be 'any' or 'majority', got {rule!r}")
    for r in np.flatnonzero(need).tolist():  # only attack windows pay for the vote
        vals, cnt = np.unique(w[r][att[r]], return_counts=True)
        out[r] = vals[np.argmax(cnt)]
    return out


def make_windows(feats: np.ndarray, window: int, stride: int) -> np.ndarray:
    """[n_windows, window, F] view-copy of consecutive frame features."""
    n = (len(feats) - window) // stride + 1 if len(feats) >= window else 0
    if n <= 0:
        return np.zeros((0, window, feats.shape[1]), np.float32)
    idx = np.arange(n)[:, None] * stride + np.arange(window)[None, :]
    return feats[idx]


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
    tail_x = np.zeros((0, len(FRAME_FEATURES)), np.float32)
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
    shape = (0, window, len(FRAME_FEATURES)) if window is not None else (0, len(FRAME_FEATURES))
    xs_all, ys_all = [np.zeros(shape, np.float32)], [np.zeros(0, np.int64)]
    for c in sorted(kept_x):
        order = np.argsort(kept_k[c], kind="stable")  # deterministic order independent of chunking
        xs_all.append(kept_x[c][order])
        ys_all.append(np.full(len(order), c, np.int64))
    return SampleSet(
        torch.from_numpy(np.ascontiguousarray(np.concatenate(xs_all))).float(),
        torch.from_numpy(np.concatenate(ys_all)), names, list(FRAME_FEATURES), name,
    )


def frame_features(batch: FrameBatch, state: FeatureState) -> torch.Tensor:
    """float32 [N, 15] features of one whole capture (fresh predecessor state)."""
    return torch.from_numpy(FrameFeaturizer(state).transform(batch))
