"""Cross-ID redundancy of CAN payloads: the relations behind the ``xid_residual`` feature.

Vehicles broadcast the same physical quantity in several messages (vehicle speed and wheel
speeds, ...). From benign traffic each byte / 16-bit big-endian word of an ID is linearly
regressed on every byte/word of every other ID's latest frame; relations with R^2 >= 0.99
between smooth signals (no counters, checksums or flags) that do not only count up (trends: two of them fit each
other as they fit the clock) are kept, at most 4 per ID.
"""

from __future__ import annotations

import numpy as np

MIN_ID_FRAMES = 20  # an ID needs this many benign frames before its timing/deltas/relations are learned
_REL_R2 = 0.99  # a relation must explain this much of the target's benign variance
_REL_MIN_LEVELS = 16  # target and source must take this many distinct values (no coarse flags or slow trends)
_REL_SMOOTH = 0.1  # a usable signal's 99.9% frame-to-frame change is at most this fraction of its range
_REL_PER_ID = 4  # strongest relations kept per target ID (bounds detection cost)
_N_SIG = 12  # signals of a payload: 8 bytes + 4 big-endian 16-bit words
_TREND_SHARE = 0.995  # value_trend: this share of the clean changes go one way
_TREND_MIN_CHANGES = 10
_TREND_END_SHARE = 0.05  # ... and at most this share of them sit at the end of its range


def signals(data: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    """float64 [n, 12] (or [n, len(cols)]): bytes 0..7, then words b0b1, b2b3, b4b5, b6b7 (big-endian)."""
    d = data[:, :8].astype(np.float64)
    if d.shape[1] < 8:
        d = np.pad(d, ((0, 0), (0, 8 - d.shape[1])))
    sig = np.concatenate([d, d[:, 0::2] * 256.0 + d[:, 1::2]], axis=1)
    return sig if cols is None else sig[:, cols]


def signal(data: np.ndarray, j: int) -> np.ndarray:
    """Signal ``j`` of ``_signals`` alone (the detection hot path needs one column, not twelve)."""
    if j < 8:
        return data[:, j].astype(np.float64)
    k = 2 * (j - 8)
    return data[:, k].astype(np.float64) * 256.0 + data[:, k + 1]


def value_trend(v: np.ndarray, same: np.ndarray | None = None) -> int:
    """+1 / -1 when the clean values only rose / fell (>= 99.5% of at least 10 changes one way, <= 5% of the
    frames at the end of the range), else 0: what ``signals.Signal.trend`` records, and values :func:`fit_relations`
    leaves out."""
    d = np.diff(v) if same is None else np.diff(v)[same]
    d = d[d != 0]
    if len(d) < _TREND_MIN_CHANGES or float(v.max()) <= float(v.min()):
        return 0
    up = float((d > 0).mean())
    # A quantity that rose and then sat at its top (a warm engine's temperature) has no trend: its maximum means
    # something. Only one still on its way at the end of the clean drive does (few frames at the end of its range).
    if up >= _TREND_SHARE and np.mean(v == v.max()) <= _TREND_END_SHARE:
        return 1
    if up <= 1.0 - _TREND_SHARE and np.mean(v == v.min()) <= _TREND_END_SHARE:
        return -1
    return 0


def last_index(ids: np.ndarray, cid: int) -> np.ndarray:
    """For each position k, the index of the last frame of ``cid`` at or before k (-1 if none)."""
    pos = np.where(ids == cid, np.arange(len(ids)), -1)
    return np.maximum.accumulate(pos)


def latest_rows(positions: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each frame index in ``rows``, the latest of ``positions`` (one ID's frame indices, sorted) at or before
    it; -1 where there is none. ``last_index`` for chosen rows, without an array the size of the capture per ID
    (hours of driving hold tens of millions of frames)."""
    if not len(positions):
        return np.full(len(rows), -1, np.int64)
    k = np.searchsorted(positions, rows, side="right") - 1
    return np.where(k >= 0, positions[np.maximum(k, 0)], -1)


# A partner's latest frame more than this many of its median frame spacings before the row is stale (see fresh_rows).
STALE_SPACINGS = 5.0


def frame_spacings(by_id: dict[int, np.ndarray]) -> dict[int, float]:
    """Each ID's median spacing between its frames (in frame indices; 0 with fewer than two): what
    :func:`fresh_rows` judges staleness by, computed once per pass rather than once per look-up."""
    return {cid: float(np.median(np.diff(p))) if len(p) > 1 else 0.0 for cid, p in by_id.items()}


def fresh_rows(positions: np.ndarray, rows: np.ndarray, spacing: float, capture: np.ndarray | None = None
               ) -> np.ndarray:
    """:func:`latest_rows`, but -1 also where that latest frame is stale: more than :data:`STALE_SPACINGS` x the
    ID's median frame ``spacing`` (:func:`frame_spacings`) before the row, or (``capture``: int per frame) from another
    capture.

    For clean statistics measured against another ID's latest value. The clean frames of a labelled capture have holes
    where attack frames were left out: next to a masquerade of the partner, the latest *clean* partner value is
    seconds old, and a residual against it measures the gap, not clean driving (on a ROAD-shaped folder, 1,000 such
    frames of two 10 s masquerades of the wheel speeds raised the speed's 99.9% residual 75-fold, and the
    plausibility rule missed the speedometer masquerades it had caught).
    """
    src = latest_rows(positions, rows)
    if len(positions) > 1:
        src = np.where(rows - src > STALE_SPACINGS * spacing, -1, src)
    if capture is not None:
        src = np.where((src >= 0) & (capture[np.maximum(src, 0)] != capture[rows]), -1, src)
    return src


def frames_by_id(ids: np.ndarray) -> dict[int, np.ndarray]:
    """Each CAN ID's frame indices, increasing: one sort of the capture, shared by the passes over a whole drive
    (rather than one scan of tens of millions of frames per ID and pass)."""
    ids = np.asarray(ids, np.int64)
    order = np.argsort(ids, kind="stable")
    uniq, starts = np.unique(ids[order], return_index=True)
    return dict(zip(uniq.tolist(), np.split(order, starts[1:])))


def refit_scales(relations: list[list[float]], by_id: dict[int, np.ndarray], data: np.ndarray,
                 max_rows: int = 200_000, capture: np.ndarray | None = None) -> None:
    """Each relation's residual scale (row[6]) measured again over all benign frames ``data`` (``by_id``: their
    indices per ID, :func:`frames_by_id`), in place.

    The relations are found on the first seconds of traffic; their 99.9% residual is measured over the whole drive, so
    that a residual clean driving reaches later (higher speeds, other gears) is not taken for an attack. Against the
    source's fresh frames only (:func:`fresh_rows`; ``capture``: int per frame, which capture it comes from).
    """
    none = np.zeros(0, np.int64)
    spacing = frame_spacings(by_id)
    for r in relations:
        tx, ts, sy, ss, a, b = int(r[0]), int(r[1]), int(r[2]), int(r[3]), r[4], r[5]
        rows = by_id.get(tx, none)
        rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), max_rows)).astype(np.int64)] if len(rows) else rows
        src = fresh_rows(by_id.get(sy, none), rows, spacing.get(sy, 0.0), capture)
        ok = src >= 0
        if ok.sum() < MIN_ID_FRAMES:
            continue
        res = np.abs(signal(data[rows[ok]], ts) - (a * signal(data[src[ok]], ss) + b))
        r[6] = max(float(np.quantile(res, 0.999)), 1.0)


def fit_relations(ids: np.ndarray, data: np.ndarray) -> list[list[float]]:
    """Linear cross-ID relations target = a * source + b found in benign frames (see module doc).

    Returns ``[target_id, target_signal, source_id, source_signal, a, b, scale]`` rows.
    """
    uniq, cnt = np.unique(ids, return_counts=True)
    cand = uniq[cnt >= MIN_ID_FRAMES].tolist()
    if len(cand) < 2:
        return []
    sig = signals(data)
    last = {c: last_index(ids, c) for c in cand}
    # Physical quantities are smooth: frame-to-frame change small against their range. Counters,
    # checksums and low bytes of words jump around; a "relation" between two of them (e.g. two
    # ECUs' counters running in step in the fit capture) is an accident of phase, not redundancy.
    usable: dict[int, np.ndarray] = {}
    for c in cand:
        v = sig[ids == c]
        levels = np.array([len(np.unique(v[:, j])) >= _REL_MIN_LEVELS for j in range(_N_SIG)])
        step = np.quantile(np.abs(np.diff(v, axis=0)), 0.999, axis=0)
        # Two values that only count up (a counter, an odometer's low part) fit each other as well as they fit the
        # clock: a relation between them is the time, not a shared quantity, and it breaks where one wraps and the
        # other does not (on the CrySyS trace, 6 s of clean frames at the top of the residual scale after 24 s).
        steady = np.array([value_trend(v[:, j]) == 0 for j in range(_N_SIG)])
        usable[c] = levels & (step <= _REL_SMOOTH * (v.max(0) - v.min(0))) & steady
    out: list[list[float]] = []
    for x in cand:
        rows = np.flatnonzero(ids == x)
        t = sig[rows]
        t_ok = usable[x]
        if not t_ok.any():
            continue
        best: dict[int, tuple[float, int, int]] = {}  # target signal -> (r2, source id, source signal)
        for y in cand:
            if y == x:
                continue
            src = last[y][rows]
            ok = src >= 0
            if ok.sum() < MIN_ID_FRAMES:
                continue
            tt, ss = t[ok], sig[src[ok]]
            s_ok = usable[y] & (ss.std(0) > 0)
            if not s_ok.any():
                continue
            tz = (tt - tt.mean(0)) / np.maximum(tt.std(0), 1e-12)
            sz = (ss - ss.mean(0)) / np.maximum(ss.std(0), 1e-12)
            r2 = ((tz.T @ sz) / len(tt)) ** 2  # [target signal, source signal]
            r2[~t_ok] = 0.0
            r2[:, ~s_ok] = 0.0
            for j in np.flatnonzero(r2.max(1) >= _REL_R2).tolist():
                k = int(r2[j].argmax())
                if r2[j, k] > best.get(j, (0.0, 0, 0))[0]:
                    best[j] = (float(r2[j, k]), int(y), k)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:_REL_PER_ID]
        for j, (_, y, k) in ranked:
            src = last[y][rows]
            ok = src >= 0
            tv, sv = t[ok, j], sig[src[ok], k]
            a, b = np.polyfit(sv, tv, 1)
            res = np.abs(tv - (a * sv + b))
            scale = max(float(np.quantile(res, 0.999)), 1.0)  # at least one unit of the target's resolution
            out.append([int(x), int(j), int(y), int(k), float(a), float(b), scale])
    return out
