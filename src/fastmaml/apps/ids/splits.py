"""Train/test cuts of labelled captures that keep every attack type on both sides.

A capture is cut once in time: everything before the cut trains, everything after tests, so
no frame, window or per-ID history crosses from one part into the other (each part is
featurized on its own). Cutting at a fixed fraction of the frames fails on real captures
where an attack comes in one burst or only early: one side gets every frame of it. So the
cut is placed between two *occurrences* (runs of attack frames closer than ``gap`` on the
capture's clock) at the candidate position whose share of test occurrences is closest to
``test_fraction`` among those that leave each attack type at least ``min_occurrences``
occurrences on each side. Where no such position exists, :class:`~fastmaml.errors.DataError`
names the attack, the capture and its occurrence count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from fastmaml.errors import DataError


@dataclass
class Cut:
    """Where a capture is cut and what ends up on each side."""

    capture: str
    index: int  # first frame of the test part
    clock: float  # the cut on the capture's clock (seconds, or frame index without timestamps)
    occurrences: dict[str, dict[str, int]] = field(default_factory=dict)  # attack -> {"train": n, "test": n}
    frames: dict[str, dict[str, int]] = field(default_factory=dict)  # attack or benign -> {"train": n, "test": n}

    def to_dict(self) -> dict[str, Any]:
        return {"capture": self.capture, "index": self.index, "clock": self.clock, "occurrences": self.occurrences,
                "frames": self.frames}


def occurrences(clock: np.ndarray, codes: np.ndarray, gap: float) -> list[tuple[int, int, int]]:
    """Runs of attack frames of one type: ``(first index, last index, code)``, in time order.

    ``codes``: int per frame, 0 = benign, c > 0 = attack type c. A new occurrence of type c starts
    when its previous frame is more than ``gap`` earlier on ``clock``.
    """
    runs = []
    for c in np.unique(codes[codes > 0]).tolist():
        idx = np.flatnonzero(codes == c)
        starts = np.flatnonzero(np.diff(clock[idx]) > gap) + 1
        for a, b in zip(np.r_[0, starts], np.r_[starts, len(idx)]):
            runs.append((int(idx[a]), int(idx[b - 1]), int(c)))
    return sorted(runs)


def occurrence_cut(clock: np.ndarray, codes: np.ndarray, names: Sequence[str], *, test_fraction: float,
                   gap: float, min_occurrences: int, capture: str = "capture") -> Cut:
    """The cut of one capture (see the module doc). ``names[c]`` names code c (``names[0]`` = benign)."""
    n = len(clock)
    runs = occurrences(clock, codes, gap)
    if not runs:  # benign only: cut by time
        k = int(round(n * (1 - test_fraction)))
        return _describe(capture, clock, codes, names, k, runs)
    types = sorted({c for _, _, c in runs})
    total = {c: sum(1 for r in runs if r[2] == c) for c in types}
    best: tuple[float, int] | None = None
    before = {c: 0 for c in types}
    # Candidate j: the cut lies between run j-1 and run j (runs overlapping in time are never split).
    reach = -1
    for j in range(1, len(runs)):
        before[runs[j - 1][2]] += 1
        reach = max(reach, runs[j - 1][1])
        if runs[j][0] <= reach:
            continue
        if all(min_occurrences <= before[c] and total[c] - before[c] >= min_occurrences for c in types):
            score = abs((len(runs) - j) / len(runs) - test_fraction)
            if best is None or score < best[0]:
                best = (score, j)
    if best is None:
        short = {names[c]: total[c] for c in types if total[c] < 2 * min_occurrences}
        raise DataError(
            f"{capture}: cannot cut it into train and test parts that each hold >= {min_occurrences} occurrences "
            f"of every attack; occurrences per attack: { {names[c]: total[c] for c in types} }"
            + (f" (too few: {short})" if short else " (their occurrences do not interleave)")
            + f". Lower source.min_occurrences, raise source.occurrence_gap_s (now {gap}) to merge nearby frames, "
            "use source.split=time, or give more captures of that attack"
        )
    j = best[1]
    # Cut halfway between the two runs on the clock, so neither part ends inside an occurrence's tail.
    lo, hi = clock[max(r[1] for r in runs[:j])], clock[runs[j][0]]
    k = int(np.searchsorted(clock, (lo + hi) / 2, side="right"))
    k = min(max(k, max(r[1] for r in runs[:j]) + 1), runs[j][0])
    return _describe(capture, clock, codes, names, k, runs)


def time_cut(clock: np.ndarray, codes: np.ndarray, names: Sequence[str], *, test_fraction: float,
             gap: float, capture: str = "capture") -> Cut:
    """Cut at ``1 - test_fraction`` of the frames (the old behaviour; may leave an attack on one side)."""
    return _describe(capture, clock, codes, names, int(round(len(clock) * (1 - test_fraction))),
                     occurrences(clock, codes, gap))


def _describe(capture: str, clock: np.ndarray, codes: np.ndarray, names: Sequence[str], k: int,
              runs: list[tuple[int, int, int]]) -> Cut:
    occ: dict[str, dict[str, int]] = {}
    for first, _, c in runs:
        side = "train" if first < k else "test"
        occ.setdefault(names[c], {"train": 0, "test": 0})[side] += 1
    frames = {}
    for c in np.unique(codes).tolist():
        if c < 0:
            continue
        frames[names[c]] = {"train": int((codes[:k] == c).sum()), "test": int((codes[k:] == c).sum())}
    at = float(clock[k]) if k < len(clock) else float(clock[-1]) if len(clock) else 0.0
    return Cut(capture, int(k), at, occ, frames)


def check_both_sides(cuts: Sequence[Cut], attacks: Sequence[str], min_occurrences: int) -> None:
    """DataError naming each attack that, over all captures, lacks occurrences on a side."""
    problems = []
    for a in attacks:
        tr = sum(c.occurrences.get(a, {}).get("train", 0) for c in cuts)
        te = sum(c.occurrences.get(a, {}).get("test", 0) for c in cuts)
        if min(tr, te) < min_occurrences:
            where = [c.capture for c in cuts if a in c.occurrences]
            problems.append(f"attack {a!r}: {tr} occurrence(s) in train, {te} in test (captures {where})")
    if problems:
        raise DataError("after cutting the captures, " + "; ".join(problems) + f". Every attack needs >= "
                        f"{min_occurrences} on each side: use source.split=occurrences, lower "
                        "source.min_occurrences, or give more captures of that attack")
