"""Flags and states of CAN payloads judged in their context: the ``sig_state`` column.

A masquerade that flips a flag (a reverse light on while the car drives forwards, a door open at
speed) changes no physical signal: the flag is too coarse for the signal columns (at least 8
levels, smooth), and a flag's value on its own is one the car shows every day. What gives it
away is the *combination*: the light's value next to the gear, the brake flag next to the brake
pressure. So every state field (2-16 values, changing in at most 5% of its ID's frames: flags,
gears, modes, not counters or checksums) gets the one context variable that predicts it best in
clean driving, another state field or a physical signal cut into 8 quantile bins, on its own ID
(the same frame) or on another ID (its latest frame), and the table of how often each value came
with each context value.

    sig_state   how unlikely the frame's state values are given their contexts in clean
                driving: -log10 of the smoothed conditional frequency, / 5, clipped to [0, 1]
                (a combination clean driving never showed in 10^5 frames of that context
                scores 1; the worst state field of the frame's ID counts)

A context is kept only where it explains at least half of the state's entropy on the first half
of the fit frames *and* predicts the second half (at most 0.5% of its frames below 1% likely);
a state without one is judged on its own frequency (a value clean driving never or hardly ever
showed). Fields, contexts and tables all come from the whole clean drive (a reverse light flips
only when the car reverses, which the first minutes may not show); a context is chosen on up to
20,000 of the state's frames spread over it. Like ``sig_range``, judging by the table needs a long
clean drive to have seen the combinations a car legitimately shows (:data:`LONG_DRIVE_S`).

A shorter clean drive judges only *followers* (:func:`keep_followers`): a flag that switched inside
a capture together with states on at least two other IDs that name its value -- the reverse light
with the gear and the reversing camera -- and only where all of them name a value and none names the
flag's, for longer than they lag at a switch (``sig_state`` is then 0 or 1). A gear clean driving
showed only held (forwards, the light off) names the light once the gear is known to be followed. On ROAD's real
reverse-light masquerade (the light cleared while the car reverses) that catches 663 of its 673
frames with no clean frame flagged in the held-out recordings; where a short drive has no follower,
the column does not exist and the plausibility rule judges partners' residuals alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from fastmaml.apps.ids.can.relations import frame_spacings, fresh_rows, last_index
from fastmaml.apps.ids.can.signals import (MIN_SIGNAL_FRAMES, Signal, field_values, payload_words, segment_fields,
                                           value_trend, words_to_bytes)
from fastmaml.errors import DataError

STATE_FEATURES: list[str] = ["sig_state"]
# Clean driving (s) everything judged against what a long drive shows needs: the states (FeatureState.fit fits them
# only then), the signal range, tail and still-run columns (can/source.py leaves them out below it) and the
# plausibility rule's range check (baselines.PlausibilityRule.for_state).
LONG_DRIVE_S = 1800.0
_MAX_LEVELS = 16
_MAX_CHANGE = 0.05  # a state changes in at most this share of its ID's frames (a counter changes in all)
_SIGNAL_BINS = 8
_MIN_GAIN = 0.5  # the context must explain this share of the state's entropy
_HOLDOUT_SURPRISE = 0.01  # ... and on the second half at most _HOLDOUT_SHARE of frames may be this unlikely
_HOLDOUT_SHARE = 0.005
_MAX_SELECT_ROWS = 20000  # frames of the state's ID a context is chosen on (evenly spaced)
_ALPHA = 0.5  # additive smoothing of the tables
_SCALE = 5.0  # -log10 p at which the column saturates
# A short drive's followers (keep_followers): a context level names the state level that came with it in this share
# of at least FOLLOW_MIN_FRAMES frames, and a contradiction counts once it lasts FOLLOW_MIN_RUN frames of the state's
# ID or twice the longest clean one
FOLLOW_SHARE = 0.99
FOLLOW_MIN_FRAMES = 20
FOLLOW_MIN_RUN = 10
FOLLOW_MIN_IDS = 2  # ... and the state follows states on at least this many other IDs (one partner may lag or lie)


@dataclass
class StateField:
    """A state field (bits ``[start, start + length)`` of an ID, big-endian) and its clean context table."""

    can_id: int
    start: int
    length: int
    levels: list[float]  # the values clean driving showed, sorted
    context: list[int] = field(default_factory=list)  # [] none; [0, can_id, state index] / [1, can_id, signal index]
    edges: list[float] = field(default_factory=list)  # bin edges of a signal context
    table: list[list[float]] = field(default_factory=list)  # counts [state level (+ unseen), context code (+ unseen)]
    # How the state is judged: "table" (a long drive: sig_state from the table), "follows" (a short drive: only a
    # contradiction of every state it follows on other IDs, lasting more than ``run`` of its frames; keep_followers)
    # or "context" (a short drive: not judged, kept as a possible context of another state)
    judge: str = "table"
    run: int = 0
    follows: list[list[int]] = field(default_factory=list)  # "follows": [context state index, level named per level]

    @property
    def name(self) -> str:
        return f"0x{self.can_id:X}[{self.start}:{self.start + self.length}]"


def _codes(v: np.ndarray, levels: list[float]) -> np.ndarray:
    """Index of each value in ``levels``; ``len(levels)`` for a value clean driving never showed."""
    lv = np.asarray(levels, np.float64)
    pos = np.minimum(np.searchsorted(lv, v), len(lv) - 1)
    return np.where(lv[pos] == v, pos, len(lv))


def _context_codes(st: StateField, values: np.ndarray, states: list[StateField]) -> np.ndarray:
    if st.context[0] == 0:
        return _codes(values, states[st.context[2]].levels)
    return np.searchsorted(np.asarray(st.edges), values, side="right")


def _n_context(st: StateField, states: list[StateField]) -> int:
    if not st.context:
        return 1
    return len(states[st.context[2]].levels) + 1 if st.context[0] == 0 else len(st.edges) + 1


def fit_states(by_id: dict[int, np.ndarray], words: np.ndarray, sigs: list[Signal],
               capture: np.ndarray | None = None) -> list[StateField]:
    """The state fields of clean frames ``words`` (capture order; ``by_id``: their indices per ID,
    :func:`~fastmaml.apps.ids.can.relations.frames_by_id`), each with its context and table (see the module doc).
    ``sigs``: the physical signals (never states, and context candidates); ``capture``: int per frame, which capture
    it comes from."""
    states = find_states(by_id, words, sigs, capture)
    fit_contexts(states, sigs, by_id, words)
    count_tables(states, sigs, by_id, words)
    return states


def fit_followers(by_id: dict[int, np.ndarray], words: np.ndarray, sigs: list[Signal],
                  capture: np.ndarray | None = None) -> list[StateField] | None:
    """A short clean drive's states (arguments as :func:`fit_states`): every state field, judged only where it
    follows states on other IDs (:func:`keep_followers`); None where none does. No contexts are chosen and no
    tables against them counted: a short drive does not judge by them."""
    states = find_states(by_id, words, sigs, capture)
    count_tables(states, sigs, by_id, words)  # each state's own frequencies (no context): kept for the file format
    keep_followers(states, by_id, words, capture)
    return states if any(s.judge == "follows" for s in states) else None


def find_states(by_id: dict[int, np.ndarray], words: np.ndarray, sigs: list[Signal],
                capture: np.ndarray | None = None) -> list[StateField]:
    """The state fields, without contexts; bits of a physical signal ``sigs`` are never a state, nor is a slow
    quantity that only rose or fell within each capture (a fuel level a few steps down: the next drive goes on to
    values this one never showed). Arguments as :func:`fit_states`."""
    taken: dict[int, list[tuple[int, int]]] = {}
    for s in sigs:
        taken.setdefault(s.can_id, []).append((s.start, s.start + s.length))
    states = []
    for cid, rows in sorted(by_id.items()):
        if len(rows) < MIN_SIGNAL_FRAMES:
            continue
        same = None if capture is None else capture[rows][1:] == capture[rows][:-1]
        w = words[rows]
        bits = np.unpackbits(words_to_bytes(w), axis=1)
        flip = (bits[1:] != bits[:-1]).mean(0)
        for start, length in segment_fields(flip):
            if any(a < start + length and start < b for a, b in taken.get(cid, [])):
                continue
            v = field_values(w, start, length)
            levels = np.unique(v)
            if 2 <= len(levels) <= _MAX_LEVELS and np.mean(v[1:] != v[:-1]) <= _MAX_CHANGE and not value_trend(v, same):
                states.append(StateField(int(cid), start, length, [float(x) for x in levels]))
    return states


def _entropy(table: np.ndarray) -> float:
    """H(state | context) in bits from a count table [state, context]."""
    n = table.sum()
    col = table.sum(0, keepdims=True)
    p = table / max(n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(table > 0, p * np.log2(table / np.maximum(col, 1)), 0.0))
    return float(h)


def _count(s_code: np.ndarray, c_code: np.ndarray, n_s: int, n_c: int) -> np.ndarray:
    return np.bincount(s_code * n_c + c_code, minlength=n_s * n_c).reshape(n_s, n_c).astype(np.float64)


def _prob(table: np.ndarray, s_code: np.ndarray, c_code: np.ndarray) -> np.ndarray:
    """Smoothed P(state | context) of each frame from a count table."""
    col = table.sum(0)
    return (table[s_code, c_code] + _ALPHA) / (col[c_code] + _ALPHA * table.shape[0])


def fit_contexts(states: list[StateField], sigs: list[Signal], by_id: dict[int, np.ndarray], words: np.ndarray
                 ) -> None:
    """Each state's best context (see the module doc), chosen on the clean frames, in place."""
    spacing = frame_spacings(by_id)
    for st in states:
        rows = by_id[st.can_id]
        rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), _MAX_SELECT_ROWS)).astype(np.int64)]
        s_code = _codes(field_values(words[rows], st.start, st.length), st.levels)
        n_s = len(st.levels) + 1
        h_marginal = _entropy(_count(s_code, np.zeros_like(s_code), n_s, 1))
        best: tuple[float, list[int], list[float]] | None = None
        candidates = [(0, k, c) for k, c in enumerate(states) if c is not st] + [(1, k, s) for k, s in enumerate(sigs)]
        half = len(rows) // 2
        for kind, k, c in candidates:
            src = rows if c.can_id == st.can_id else fresh_rows(by_id[c.can_id], rows, spacing[c.can_id])
            ok = src >= 0
            if ok.sum() < MIN_SIGNAL_FRAMES:
                continue
            v = field_values(words[np.maximum(src, 0)], c.start, c.length, getattr(c, "little_endian", False))
            if kind == 0:
                c_code, edges, n_c = _codes(v, c.levels), [], len(c.levels) + 1
            else:
                edges = sorted(set(np.quantile(v[ok], np.arange(1, _SIGNAL_BINS) / _SIGNAL_BINS).tolist()))
                c_code, n_c = np.searchsorted(np.asarray(edges), v, side="right"), len(edges) + 1
            table = _count(s_code[ok], c_code[ok], n_s, n_c)
            h = _entropy(table)
            if h > (1 - _MIN_GAIN) * h_marginal or (best is not None and h >= best[0]):
                continue
            first = ok.copy()
            first[half:] = False
            second = ok & ~first
            t1 = _count(s_code[first], c_code[first], n_s, n_c)
            if np.mean(_prob(t1, s_code[second], c_code[second]) < _HOLDOUT_SURPRISE) > _HOLDOUT_SHARE:
                continue
            best = (h, [kind, int(c.can_id), k], [float(e) for e in edges])
        if best is not None:
            st.context, st.edges = best[1], best[2]


def count_tables(states: list[StateField], sigs: list[Signal], by_id: dict[int, np.ndarray], words: np.ndarray
                 ) -> None:
    """Each state's table counted over all clean frames (the whole drive), in place."""
    spacing = frame_spacings(by_id)
    for st in states:
        rows = by_id[st.can_id]
        s_code = _codes(field_values(words[rows], st.start, st.length), st.levels)
        if st.context:
            c = states[st.context[2]] if st.context[0] == 0 else sigs[st.context[2]]
            src = rows if c.can_id == st.can_id else fresh_rows(by_id[c.can_id], rows, spacing[c.can_id])
            ok = src >= 0
            v = field_values(words[np.maximum(src, 0)], c.start, c.length, getattr(c, "little_endian", False))
            c_code = _context_codes(st, v, states)
            s_code, c_code = s_code[ok], c_code[ok]
        else:
            c_code = np.zeros_like(s_code)
        st.table = _count(s_code, c_code, len(st.levels) + 1, _n_context(st, states)).tolist()


def follow_map(table: np.ndarray) -> np.ndarray | None:
    """From a clean count table [state level (+ unseen), context level (+ unseen)]: the state level each context level
    came with in at least FOLLOW_SHARE of at least FOLLOW_MIN_FRAMES frames (-1 for a context level that came with no
    one level), where that names two state levels or more -- the state follows the context -- else None."""
    t = np.asarray(table, np.float64)[:-1, :-1]  # the levels clean driving showed
    total = t.sum(0)
    top = t.argmax(0)
    follows = (total >= FOLLOW_MIN_FRAMES) & (t[top, np.arange(t.shape[1])] >= FOLLOW_SHARE * total)
    out = np.where(follows, top, -1)
    return out if len(set(out[follows].tolist())) >= 2 else None


def contradicted(s_code: np.ndarray, c_codes: list[np.ndarray], follows: list[list[int]], n_levels: int
                 ) -> np.ndarray:
    """Bool per frame: every followed context names a level for the state and none names the state's level
    (``c_codes``: each followed context's level code per frame, -1 where stale). Where a context shows a level that
    names nothing (one clean driving never showed, or showed with either state value: the car in a gear the clean
    drive did not show), the moment is new and not judged."""
    named = np.ones(len(s_code), bool)
    agreed = np.zeros(len(s_code), bool)
    for c_code, f in zip(c_codes, follows):
        m = np.asarray(f[1:] + [-1], np.int64)  # the context's unseen level (and a stale one) names nothing
        expected = m[np.where(c_code < 0, len(m) - 1, np.minimum(c_code, len(m) - 1))]
        named &= expected >= 0
        agreed |= expected == s_code
    return named & ~agreed & (s_code < n_levels)


def keep_followers(states: list[StateField], by_id: dict[int, np.ndarray], words: np.ndarray,
                   capture: np.ndarray | None = None) -> None:
    """A short drive: judge only the states that follow states on other IDs, in place.

    A short clean drive cannot show every value a car's flags take, nor every combination: judging a flag by how
    often clean driving showed it (the table) raised thousands of false alerts an hour on the next recording of the
    same car. What a short drive can show is a flag that switched inside one capture together with states on other
    IDs that name its value (:func:`follow_map`, :func:`_switched_together`): the reverse light with the gear, the
    gear lever and the reversing camera, on at least :data:`FOLLOW_MIN_IDS` IDs. A masquerade that clears the light
    while the car reverses contradicts all of them, whatever else the next drive brings. So a state is judged only if
    clean driving showed every value its bits can take (a flag: a field with unseen values is not known well enough),
    only where every followed context names a level and none names the state's (:func:`contradicted`), and only once
    the contradiction has lasted longer than twice the longest clean one (the partners' lag at a switch), at least
    :data:`FOLLOW_MIN_RUN` frames. Every other state is kept, unjudged, as a possible context."""
    spacing = frame_spacings(by_id)

    def level_codes(c: StateField, at: np.ndarray) -> np.ndarray:  # -1 where the context's latest frame is stale
        src = fresh_rows(by_id[c.can_id], at, spacing[c.can_id], capture)
        return np.where(src >= 0, _codes(field_values(words[np.maximum(src, 0)], c.start, c.length), c.levels), -1)

    codes, switches = [], []
    for st in states:
        rows = by_id[st.can_id]
        s_code = _codes(field_values(words[rows], st.start, st.length), st.levels)
        cap = np.zeros(len(rows), np.int64) if capture is None else capture[rows]
        codes.append((rows, s_code, cap))
        switches.append(np.flatnonzero((s_code[1:] != s_code[:-1]) & (cap[1:] == cap[:-1])) + 1)
        st.judge, st.run, st.follows = "context", 0, []
    for k, st in enumerate(states):
        if not len(switches[k]) or len(st.levels) < 2 ** st.length:
            continue  # never switched inside a capture, or the next drive may show values clean driving did not
        rows, s_code, cap = codes[k]
        pick = np.linspace(0, len(rows) - 1, min(len(rows), _MAX_SELECT_ROWS)).astype(np.int64)
        pick_rows, pick_code = rows[pick], s_code[pick]
        around = _around_switches(cap, switches[k])
        follows, c_codes = [], []
        for j, c in enumerate(states):
            if c.can_id == st.can_id or not len(switches[j]):
                continue
            picked = level_codes(c, pick_rows)  # chosen on the spread-out frames, as fit_contexts chooses
            ok = picked >= 0
            m = follow_map(_count(pick_code[ok], picked[ok], len(st.levels) + 1, len(c.levels) + 1))
            if m is None:
                continue
            c_code = level_codes(c, rows)
            m = _switched_together(m, s_code, c_code, switches[k], around)
            if m is not None:
                follows.append([j] + m.tolist())
                c_codes.append(c_code)
        if len({states[f[0]].can_id for f in follows}) >= FOLLOW_MIN_IDS:
            wrong = contradicted(s_code, c_codes, follows, len(st.levels))
            st.judge, st.follows = "follows", follows
            st.run = max(2 * int(_run_lengths(wrong, 0, _level_changes(s_code)).max()), FOLLOW_MIN_RUN)


def _around_switches(cap: np.ndarray, switches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each switch (a row index of the state's frames), the rows FOLLOW_MIN_RUN frames before and after it, kept
    inside the switch's capture (``cap``: the capture of each of the state's frames)."""
    n = len(cap)
    new_capture = cap[1:] != cap[:-1]
    first = np.maximum.accumulate(np.where(np.r_[True, new_capture], np.arange(n), 0))  # its capture's first frame
    last = np.minimum.accumulate(np.where(np.r_[new_capture, True], np.arange(n), n)[::-1])[::-1]  # ... and last
    return (np.maximum(switches - 1 - FOLLOW_MIN_RUN, first[switches]),
            np.minimum(switches + FOLLOW_MIN_RUN, last[switches]))


def _switched_together(m: np.ndarray, s_code: np.ndarray, c_code: np.ndarray, switches: np.ndarray,
                       around: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """``m`` (:func:`follow_map`) where clean driving showed the state switching together with the context, for two
    state levels or more: at a switch of the state inside a capture, the context went from a level naming the old
    state level to one naming the new, within FOLLOW_MIN_RUN of the state's frames either side (``around``:
    :func:`_around_switches`). Else None (two levels that only ever came together in different recordings say which
    recording it is, not that one follows the other). Once that shows the context is one the state follows, every
    level ``m`` names counts, also one seen only held (the car driving forwards with the light off, when the switches
    were into and out of reverse)."""
    before, after = c_code[around[0]], c_code[around[1]]
    named = np.r_[m, -1]  # a stale (-1) or unseen context level names nothing
    together = ((before >= 0) & (after >= 0) & (before != after) & (named[before] == s_code[switches - 1])
                & (named[after] == s_code[switches]))
    switched = np.where(np.isin(np.arange(len(m)), np.r_[before[together], after[together]]), m, -1)
    return m if len(set(switched[switched >= 0].tolist())) >= 2 else None


def _level_changes(s_code: np.ndarray, before: int = -1) -> np.ndarray:
    """Bool per frame: the state's level differs from the frame before (``before``: the level before the first)."""
    return s_code != np.r_[before, s_code[:-1]]


def _run_lengths(flags: np.ndarray, carried: int = 0, restarts: np.ndarray | None = None) -> np.ndarray:
    """For each position, how many flags in a row are True up to and including it: ``carried`` the run before the
    first, ``restarts`` (bool) where a run starts afresh (the state took another level: another contradiction)."""
    idx = np.arange(1, len(flags) + 1)
    start = np.where(flags, -1, idx)  # -1: no False (nor restart) yet in this chunk
    if restarts is not None:
        start = np.where(flags & restarts, idx - 1, start)
    last = np.maximum.accumulate(start)
    return np.where(last < 0, idx + carried, idx - last)


def states_to_dicts(states: list[StateField]) -> list[dict]:
    return [asdict(s) for s in states]


def states_from_dicts(rows: list[dict], n_signals: int, source: str = "<dict>") -> list[StateField]:
    """Inverse of ``states_to_dicts``; DataError naming ``source`` on a corrupt table."""
    try:
        states = [StateField(**r) for r in rows]
    except TypeError as e:
        raise DataError(f"{source}: corrupt state table ({e}); refit the FeatureState") from e
    for s in states:
        bad = not (0 <= s.start and 1 <= s.length and s.start + s.length <= 64) or not s.levels
        if s.context:
            n_ref = len(states) if s.context[0] == 0 else n_signals
            bad = bad or len(s.context) != 3 or not 0 <= s.context[2] < n_ref
        bad = bad or s.judge not in ("table", "follows", "context") or (s.judge == "follows" and not s.follows)
        for f in s.follows:
            bad = bad or not (f and 0 <= f[0] < len(states) and len(f) == len(states[f[0]].levels) + 1
                              and all(-1 <= x < len(s.levels) for x in f[1:]))
        if bad or np.shape(s.table) != (len(s.levels) + 1, _n_context(s, states)):
            raise DataError(f"{source}: state field {s.name} is out of range; refit the FeatureState")
    return states


class StateFeaturizer:
    """Streaming ``STATE_FEATURES`` of consecutive chunks of one capture."""

    def __init__(self, states: list[StateField], sigs: list[Signal]) -> None:
        self.states, self.sigs = states, sigs
        self._tables = [np.asarray(s.table, np.float64) for s in states]
        self._judged = [k for k, s in enumerate(states) if s.judge != "context"]
        self._context_ids = sorted({states[k].context[1] for k in self._judged
                                    if states[k].context and states[k].judge == "table"}
                                   | {states[f[0]].can_id for k in self._judged for f in states[k].follows})
        self.reset()

    def reset(self) -> None:
        self._last_word: dict[int, int] = {}  # latest payload word of every context ID
        # frames each follower has held a level its contexts contradict, up to now, and its latest level
        self._runs, self._codes = [0] * len(self.states), [-1] * len(self.states)

    def _context(self, st: StateField) -> StateField | Signal:
        return self.states[st.context[2]] if st.context[0] == 0 else self.sigs[st.context[2]]

    def _latest(self, c: StateField | Signal, rows: np.ndarray, words: np.ndarray, last: dict[int, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
        """Context ``c``'s value on each of ``rows`` (its ID's latest frame, carried over chunks) and whether known."""
        src = last[c.can_id][rows]
        carried = self._last_word.get(c.can_id)
        cw = np.where(src >= 0, words[np.maximum(src, 0)], np.uint64(carried or 0))
        known = (src >= 0) | (carried is not None)
        return field_values(cw, c.start, c.length, getattr(c, "little_endian", False)), known

    def _follower_score(self, k: int, s_code: np.ndarray, rows: np.ndarray, words: np.ndarray,
                        last: dict[int, np.ndarray]) -> np.ndarray:
        """1 on the frames where state ``k`` has contradicted every state it follows for more than its run."""
        st = self.states[k]
        c_codes = []
        for f in st.follows:
            c = self.states[f[0]]
            v, ok = self._latest(c, rows, words, last)
            c_codes.append(np.where(ok, _codes(v, c.levels), -1))
        wrong = contradicted(s_code, c_codes, st.follows, len(st.levels))
        run = _run_lengths(wrong, self._runs[k], _level_changes(s_code, self._codes[k]))
        self._runs[k], self._codes[k] = int(run[-1]), int(s_code[-1])
        return (run > st.run).astype(np.float64)

    def _table_score(self, k: int, s_code: np.ndarray, rows: np.ndarray, words: np.ndarray,
                     last: dict[int, np.ndarray]) -> np.ndarray:
        """-log10 P(state | context) / _SCALE, clipped to [0, 1], of state ``k`` on each of its frames."""
        st = self.states[k]
        if not st.context:
            c_code, ok = np.zeros(len(rows), np.int64), np.ones(len(rows), bool)
        else:
            c = self._context(st)
            if c.can_id == st.can_id:
                v = field_values(words[rows], c.start, c.length, getattr(c, "little_endian", False))
                ok = np.ones(len(rows), bool)
            else:
                v, ok = self._latest(c, rows, words, last)
            c_code = _context_codes(st, v, self.states)
        p = _prob(self._tables[k], s_code, c_code)
        return np.where(ok, np.minimum(-np.log10(p) / _SCALE, 1.0), 0.0)

    def transform(self, ids: np.ndarray, data: np.ndarray) -> np.ndarray:
        """float32 [n, 1] for the next chunk (frames in capture order)."""
        ids = np.asarray(ids, np.int64)
        out = np.zeros((len(ids), len(STATE_FEATURES)), np.float32)
        if not len(ids) or not self.states:
            return out
        words = payload_words(data)
        last = {cid: last_index(ids, cid) for cid in self._context_ids}
        for k in self._judged:
            st = self.states[k]
            rows = np.flatnonzero(ids == st.can_id)
            if not len(rows):
                continue
            s_code = _codes(field_values(words[rows], st.start, st.length), st.levels)
            if st.judge == "follows":
                score = self._follower_score(k, s_code, rows, words, last)
            else:
                score = self._table_score(k, s_code, rows, words, last)
            out[rows, 0] = np.maximum(out[rows, 0], score)
        for cid in self._context_ids:
            pos = np.flatnonzero(ids == cid)
            if len(pos):
                self._last_word[cid] = int(words[pos[-1]])
        return out


__all__ = ["STATE_FEATURES", "LONG_DRIVE_S", "FOLLOW_MIN_IDS", "FOLLOW_MIN_RUN", "FOLLOW_SHARE", "StateField",
           "StateFeaturizer", "contradicted", "count_tables", "find_states", "fit_contexts", "fit_followers",
           "fit_states", "follow_map", "keep_followers", "states_from_dicts", "states_to_dicts"]
