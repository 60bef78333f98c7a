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

Folders of real captures often hold one injection interval per file, several files per attack
type. :func:`plan_split` serves them: it holds out whole files where a type has several
(``by_capture``), and cuts a capture that holds a single interval *inside* it
(:func:`within_interval_cut`), so both parts still hold attack frames; ``auto`` picks per
attack type. A file held out whole is a :class:`Cut` at frame 0 (all test) or at its end (all
train), so everything downstream treats every split alike.
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
    method: str = ""  # how it was cut (plan_split): by_capture, occurrences, within_interval or time

    @property
    def whole(self) -> str | None:
        """``"train"`` or ``"test"`` for a capture held out whole (by_capture), else None."""
        if self.method != "by_capture":
            return None
        return "test" if self.index == 0 else "train"

    def to_dict(self) -> dict[str, Any]:
        d = {"capture": self.capture, "index": self.index, "clock": self.clock, "occurrences": self.occurrences,
             "frames": self.frames}
        if self.method:  # only plan_split sets it: the cuts of the occurrences/time splits read as before
            d["method"] = self.method
        return d


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
        single = [names[c] for c in types if total[c] == 1]
        if single:
            # One long occurrence (one injection interval): merging more frames cannot help, a
            # smaller gap splits it, and several files of the attack can be held out whole.
            fix = (f"{single} come(s) in a single occurrence: lower source.occurrence_gap_s (now {gap}) below the "
                   "gaps inside it to split it into several, use source.split=by_capture (several capture files of "
                   "that attack, held out whole) or source.split=auto (also cuts a single interval inside it), or "
                   "lower source.min_occurrences")
        else:
            fix = (f"Lower source.min_occurrences, raise source.occurrence_gap_s (now {gap}) to merge nearby frames, "
                   "use source.split=time or source.split=auto, or give more captures of that attack")
        raise DataError(
            f"{capture}: cannot cut it into train and test parts that each hold >= {min_occurrences} occurrences "
            f"of every attack; occurrences per attack: { {names[c]: total[c] for c in types} }"
            + (f" (too few: {short})" if short else " (their occurrences do not interleave)") + ". " + fix
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


def within_interval_cut(clock: np.ndarray, codes: np.ndarray, names: Sequence[str], *, test_fraction: float,
                        gap: float, capture: str = "capture") -> Cut:
    """A cut inside the attack frames, for a capture holding one injection interval (or too few to cut between).

    The cut lies just before an attack frame, where the share of each attack type's frames after
    it is closest to ``test_fraction`` (the worst type counts) among the positions that leave every
    type at least one frame on each side. Train and test then hold parts of the same occurrence
    (so test scores are optimistic next to held-out captures), but still no frame, and (each part
    featurized on its own) no per-ID history, is on both sides. An occurrence the cut runs through
    counts on both sides.
    """
    idx = np.flatnonzero(codes > 0)
    types = np.unique(codes[idx])
    if not len(types):  # benign only: cut by time
        return time_cut(clock, codes, names, test_fraction=test_fraction, gap=gap, capture=capture)
    onehot = codes[idx][:, None] == types[None, :]
    # before[j, t]: frames of type t among the first j attack frames (the cut just before attack frame j).
    before = np.cumsum(onehot, axis=0) - onehot
    total = before[-1] + onehot[-1]
    ok = ((before >= 1) & (before <= total - 1)).all(axis=1)
    if not ok.any():
        raise DataError(
            f"{capture}: cannot cut it inside its attack frames so that both parts hold frames of every attack; "
            f"frames per attack: { {names[int(c)]: int(n) for c, n in zip(types, total)} }. Give more or longer "
            "captures of that attack"
        )
    score = np.abs((total - before) / total - test_fraction).max(axis=1)
    j = int(np.flatnonzero(ok)[np.argmin(score[ok])])
    cut = _describe(capture, clock, codes, names, int(idx[j]), occurrences(clock, codes, gap), straddle=True)
    cut.method = "within_interval"
    return cut


def whole_cut(clock: np.ndarray, codes: np.ndarray, names: Sequence[str], *, side: str, gap: float,
              capture: str = "capture") -> Cut:
    """A capture held out whole: ``side="test"`` cuts before its first frame, ``"train"`` after its last."""
    cut = _describe(capture, clock, codes, names, 0 if side == "test" else len(clock), occurrences(clock, codes, gap))
    cut.method = "by_capture"
    return cut


def _describe(capture: str, clock: np.ndarray, codes: np.ndarray, names: Sequence[str], k: int,
              runs: list[tuple[int, int, int]], straddle: bool = False) -> Cut:
    occ: dict[str, dict[str, int]] = {}
    for first, last, c in runs:
        counts = occ.setdefault(names[c], {"train": 0, "test": 0})
        if straddle and first < k <= last:  # the cut runs through it: part of it on each side
            counts["train"] += 1
            counts["test"] += 1
        else:
            counts["train" if first < k else "test"] += 1
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


# ------------------------------------------------------------ splits of capture folders
FILE_SPLITS = ("by_capture", "within_interval", "auto")  # source.split values planned by plan_split
Timeline = tuple[np.ndarray, np.ndarray, float]  # one capture: (clock, codes, occurrence gap on that clock)


@dataclass
class SplitPlan:
    """How :func:`plan_split` split a folder of captures.

    ``cuts[i]`` is capture i's cut, None where it is left out (its attack could not be cut);
    ``skipped``: attack -> why none of its captures could be used.
    """

    cuts: list[Cut | None]
    skipped: dict[str, str] = field(default_factory=dict)

    def attacks(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per attack in ``names``: how it was split and the captures on each side (for stats and the report)."""
        out: dict[str, dict[str, Any]] = {}
        for a in names:
            held = [c for c in self.cuts if c is not None and c.frames.get(a, {}).get("train", 0)
                    + c.frames.get(a, {}).get("test", 0) > 0]
            if not held:
                continue
            methods = list(dict.fromkeys(c.method for c in sorted(held, key=lambda c: c.method != "by_capture")))
            out[a] = {"method": "+".join(methods),
                      "train_files": [c.capture for c in held if c.whole == "train"],
                      "test_files": [c.capture for c in held if c.whole == "test"],
                      "cut_files": [c.capture for c in held if c.whole is None]}
        return out

    def summary(self, names: Sequence[str]) -> str:
        """One line: the split chosen per attack, e.g. ``dos by_capture (3 train files, 1 test file); ...``."""
        def files(n: int, what: str = "") -> str:
            return f"{n} {what}{' ' if what else ''}file{'s' if n != 1 else ''}"

        parts = []
        for a, d in self.attacks(names).items():
            pieces = []
            if d["train_files"] or d["test_files"]:
                pieces.append(f"by_capture ({files(len(d['train_files']), 'train')}, "
                              f"{files(len(d['test_files']), 'test')})")
            for m in [m for m in d["method"].split("+") if m != "by_capture"]:
                n = sum(1 for c in self.cuts if c is not None and c.method == m and c.capture in d["cut_files"])
                pieces.append(f"{m} ({files(n)})")
            parts.append(f"{a} " + " + ".join(pieces))
        parts += [f"{a} skipped ({why})" for a, why in self.skipped.items() if a in names]
        return "split: " + "; ".join(parts)


def held_out_count(n_files: int, test_fraction: float) -> int:
    """Files of one attack held out whole: about ``test_fraction`` of them, at least one, never all."""
    return min(n_files - 1, max(1, int(round(test_fraction * n_files))))


def plan_split(timelines: Sequence[Timeline], captures: Sequence[str], names: Sequence[str], *, kind: str,
               test_fraction: float, min_occurrences: int) -> SplitPlan:
    """The cuts of a folder of captures for ``source.split`` = ``kind`` (one of :data:`FILE_SPLITS`).

    * ``by_capture``: every attack type needs >= 2 captures holding only it; the last
      :func:`held_out_count` of them (in the order given) test whole, the others train whole.
    * ``within_interval``: each capture with attack frames is cut inside them
      (:func:`within_interval_cut`).
    * ``auto``, per attack type: by_capture when it has >= 2 captures holding only it; else its
      capture is cut between occurrences when it has enough (:func:`occurrence_cut`), else
      inside its interval; a capture that cannot be cut either way is left out and its
      attack(s) recorded in ``skipped`` (a fold the comparison reports and skips).

    Benign-only captures are cut by time (as the occurrence split does), so every family keeps
    their benign frames on both sides. DataError where ``by_capture`` cannot hold a type out.
    """
    held = [sorted(set(np.unique(codes[codes > 0]).tolist())) for _, codes, _ in timelines]
    # Whole-file candidates: captures holding one attack type only (a file with several types
    # cannot be on one side for one type and on the other side for another).
    files: dict[int, list[int]] = {}
    for i, types in enumerate(held):
        if len(types) == 1:
            files.setdefault(types[0], []).append(i)
    side: dict[int, str] = {}
    if kind in ("by_capture", "auto"):
        for idx in files.values():
            if len(idx) >= 2:
                test = idx[len(idx) - held_out_count(len(idx), test_fraction):]
                side.update({i: "test" if i in test else "train" for i in idx})
    if kind == "by_capture":
        problems = [f"attack {names[c]!r} has {len(files.get(c, []))} capture(s) holding only it"
                    for c in sorted({c for types in held for c in types}) if len(files.get(c, [])) < 2]
        problems += [f"{captures[i]} holds several attack types {[names[c] for c in types]}"
                     for i, types in enumerate(held) if len(types) > 1]
        if problems:
            raise DataError("source.split=by_capture holds out whole capture files and needs >= 2 files per attack "
                            "type, each holding one type: " + "; ".join(problems) + ". Use source.split=auto "
                            "(cuts such captures in time) or give more capture files of that attack")
    cuts: list[Cut | None] = []
    why: dict[int, str] = {}
    for i, (clock, codes, gap) in enumerate(timelines):
        what = captures[i]
        if i in side:
            cuts.append(whole_cut(clock, codes, names, side=side[i], gap=gap, capture=what))
            continue
        if not held[i]:
            cut = time_cut(clock, codes, names, test_fraction=test_fraction, gap=gap, capture=what)
            cut.method = "time"
        elif kind == "within_interval":
            cut = within_interval_cut(clock, codes, names, test_fraction=test_fraction, gap=gap, capture=what)
        else:
            try:
                cut = occurrence_cut(clock, codes, names, test_fraction=test_fraction, gap=gap,
                                     min_occurrences=min_occurrences, capture=what)
                cut.method = "occurrences"
            except DataError:
                try:  # too few occurrences (typically one injection interval): cut inside it
                    cut = within_interval_cut(clock, codes, names, test_fraction=test_fraction, gap=gap, capture=what)
                except DataError as err:
                    why[i], cut = str(err), None
        cuts.append(cut)
    # An attack is skipped only when none of its captures is used.
    used = {c for i, types in enumerate(held) if cuts[i] is not None for c in types}
    skipped = {names[c]: why[i] for i in why for c in held[i] if c not in used}
    return SplitPlan(cuts, skipped)
