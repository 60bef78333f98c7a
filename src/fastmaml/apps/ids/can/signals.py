"""Signals of CAN payloads without a DBC, and the signal-level features that see them in context.

A masquerading ECU sends the right ID at the right rate, so nothing in timing or in the
presence of frames gives it away; only what its payload *means* does. This module finds the
signals of every ID in clean traffic and judges each frame's signals against them.

Extraction (READ / LibreCAN style, from bit-flip statistics of clean traffic): for every ID the
probability that each of the 64 payload bits (bit 0 = most significant bit of byte 0) differs
from the ID's previous frame. Inside a big-endian signal the flip rate grows from the most to
the least significant bit, so a signal boundary is a bit that never flips or whose flip rate
falls below half of its left neighbour's. A field is kept as a *physical* signal when it is at
least 4 bits wide, takes >= 8 distinct values and is smooth (99% of frame-to-frame changes
within a fifth of its range): counters, checksums and flags are left out. A short clean capture
never sets the top bits of a quantity that later grows (a wheel speed above any speed driven
before), so a kept signal also takes up to 4 bits above it that are 0 in every clean frame:
the value then carries into them instead of wrapping around. Where up to 4 more bits above the headroom are 0 in
every clean frame too (``Signal.sign_bits``), a value whose top bit is set *with* all of them set is read as a
two's-complement negative: a signed quantity the clean drive saw on one side of zero only (a steering angle that
turned one way) sign-extends into them when it crosses, and read unsigned would leap across the whole field at every
crossing (:func:`signal_values`; full scale, ``sig_full``, stays judged on the unsigned bits).

Byte order (``byte_order="both"``): many cars send multi-byte signals little-endian
(Intel: the low byte first), which the big-endian reading splits at the byte boundary into a
noisy low byte and a coarse high byte, neither of which agrees with anything else on the bus.
So the payload is also read byte-reversed and segmented the same way; a field found there that
spans bytes is kept when it is physical *and its bytes carry*: at each byte boundary inside it,
>= 90% of the (at least 5) frames where the lower part wraps around change the upper part by one
the other way, as a counter's digits do (two independent bytes read as one field almost never
do). It replaces the big-endian fields sharing its bits. On DAGA's clean Volvo capture this
finds 24 little-endian signals and 18 signals with partners instead of 6 (three wheel speeds on
0x150 among them); ``byte_order="big"`` is the reading before. The more partners, the more
relations a short drive cannot check: fitted on DAGA's first 67-91 s, the new ones (wheel speeds
against each other) broke in the next 62-86 s of the same clean drive (7-10 plausibility alerts,
0 read big-endian). So ``auto`` (the features' default, :func:`byte_order_for`) reads both ways only
after ``LONG_DRIVE_S`` of clean driving, as the other whole-drive statistics.

Context: every physical signal is regressed on the latest values of the physical signals of
the other IDs (the bus's recent-value state, sampled and held); the best partners (at most 3,
joint least squares) predict it. Vehicles broadcast one quantity in several messages (wheel
speeds and vehicle speed, engine speed and torque), so a false value disagrees with its
partners even when it is in range and smooth. Two slowly drifting quantities (two temperatures)
also correlate over a short capture without being redundant, and their "relation" breaks later
in the drive; so a partner must explain >= 90% of the target's variance, >= 50% of the variance
of its changes over half a second, and the joint fit on the first half of the clean frames
must still explain >= 80% on the second half.

Per frame, over the physical signals of the frame's ID (0 for IDs without any), the columns of
``SIGNAL_FEATURES``:

    sig_range       how far the value lies outside its clean range, log-scaled to [0, 1]
    sig_edge        how deep the value sits in a tail of its clean distribution: 1/3 per
                    clean quantile (0.1%, 0.01%, extreme) it reaches; a value pinned at the
                    clean maximum scores 1
    sig_jump        change against the ID's previous frame relative to the signal's clean
                    99.9% change, log-scaled
    sig_stuck       frames the value has not changed relative to the longest clean run of an
                    unchanged value, / 4, clipped to [0, 1]
    sig_residual    |value - prediction from the partners' latest values| relative to the clean
                    99.9% residual, log-scaled (0 for signals without partners; where a partner lies more
                    than a quarter of its clean span outside its clean range the joint relation would
                    extrapolate; where that partner also disagrees with its own partners (a suspect: two IDs
                    falsified together) the best partner on another ID still in range judges alone, by its own
                    fit; else 0. A copy -- one partner, slope +-1, whose fit held at the clean span's edges when
                    refitted on its middle -- is judged wherever its partner lies: the same quantity sent twice)
    sig_residual_8  the same, averaged over the signal's last 8 frames: a persistent small
                    offset below the per-frame noise adds up
    sig_has_partner 1 when the ID has a signal with partners (the residual columns mean something)
    sig_leap        how far the value's change over the last L of its ID's frames (L in ``LEAP_LAGS``:
                    1 to 256) exceeds the largest change over L frames in clean driving, log-scaled
                    (0 within it; 0.25 at twice it). A physical quantity has a rate limit: a
                    temperature moves a degree in a minute, a speed a few km/h in a second. A
                    masquerade of a signal nothing else reflects (an offset, a frozen or replayed
                    value) shows nowhere but at its onset, where it leaps; the longer lags keep
                    seeing the leap for up to 256 frames after it (a masquerade that moves the
                    value by a quarter of its range sits that far from where the genuine value
                    was). Needs a long clean drive to know the limits (0 for a trend, which has
                    none: an odometer's low bits wrap).
    sig_full        1 while the value sits at its field's full scale (every bit set), never seen in clean
                    driving, having leapt there in one frame by more than ``FULL_LEAP`` x the most the
                    signal moved over up to 256 frames in clean driving: a slow quantity (a coolant
                    temperature that moved one step in minutes) cannot do that, an attacker pinning it
                    at its maximum (ROAD's maximum-coolant and maximum-speedometer attacks) or a fault
                    sentinel does. Needs no long drive: the field's width, not the clean range, sets
                    the value, and the leap is measured against what the short drive showed, around
                    the circle (a signed value going from 0 to -1, a count wrapping, reach full scale
                    in one step). A stream's first frame (no frame before it: a capture started, or cut,
                    mid-drive) is measured from the nearest clean value. A leap to zero is not judged
                    (resets do that: on ROAD a slow 6-bit field returns to 0 every 17 s). Trends are judged
                    too (a temperature warming up all through the clean drive is one; a count reaching full
                    scale step by step, or wrapping, is no leap); 0 for tables saved before sig_leap. Judged also
                    on the coarse fields
                    (:func:`find_coarse_fields`): slow quantities a short drive showed at 3-7 values, too
                    few for a signal (ROAD's coolant byte over the 145 s its folds fit on).

Everything is fitted on benign training traffic (``fit_signals``) and computed causally with
state carried across chunks, so streamed and one-shot features are identical.

With the car's DBC (``features.dbc``, :mod:`fastmaml.apps.ids.can.dbc`) its signals' fields
replace the segmentation: ``fit_signals(..., fields=...)`` keeps those of them that are physical
in the clean frames (the same >= 8 values and smoothness; no headroom: the DBC gives the width)
and fits their ranges and partners as above. A DBC's Intel signal over several bytes is the one
field that is not big-endian: ``little_endian`` reads it from the payload taken as a
little-endian number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from fastmaml.apps.ids.can.relations import frame_spacings, fresh_rows, last_index, value_trend
from fastmaml.errors import DataError

SIGNAL_FEATURES: list[str] = ["sig_range", "sig_edge", "sig_jump", "sig_stuck", "sig_residual", "sig_residual_8",
                              "sig_has_partner", "sig_leap", "sig_full"]
LEAP_LAGS = (1, 4, 16, 64, 256)  # sig_leap: changes over this many of the ID's frames
FULL_LEAP = 4.0  # sig_full: a one-frame leap to full scale this x the largest clean change over 1-256 frames
_MISSING_SPACINGS = 5.0  # an ID's frames further apart than this x its spacing have frames missing between them
MIN_SIGNAL_FRAMES = 200  # an ID needs this many clean frames for its flip statistics
_FLIP_DROP = 0.5  # a bit flipping less than this x its left neighbour starts a new signal
_MIN_BITS = 4
_MIN_LEVELS = 8
# A coarse field (find_coarse_fields): fewer levels than a signal, at least this many. Three rule out two-valued
# modes (a few bits all set or all clear), which reach full scale as part of their job.
_MIN_COARSE_LEVELS = 3
_HEADROOM_BITS = 4
_SIGN_BITS = 4  # clean-zero bits above a field's headroom a negative value's sign extension must set (Signal.sign_bits)
_SMOOTH = 0.2  # 99% of a physical signal's changes lie within this fraction of its range
_PARTNER_R2 = 0.9
_PARTNER_DELTA_R2 = 0.5
_PARTNER_HOLDOUT_R2 = 0.8
_MIN_CAPTURE_ROWS = 50  # _holds_on_each_capture: a capture with fewer of a target ID's fitted rows is not held out
_DELTA_LAG_S = 0.5
_MAX_PARTNERS = 3
_MAX_FIT_ROWS = 4000  # frames of a target ID its regressions are fitted on (evenly spaced)
_RESID_WINDOW = 8
# A residual is judged only where every partner lies within its clean range widened by this share of its span
# (SignalFeaturizer._residual): outside it the fitted relation extrapolates.
EXTRAPOLATION_MARGIN = 0.25
# ... unless the relation is a copy that held past the middle of the clean span (Signal.extrapolates): the outer
# EDGE_SHARE of each partner's span held out of the fit, the held-out frames' 99% |residual| within EDGE_FACTOR x the
# fitted frames' 99.9%.
EDGE_SHARE = 0.15
EDGE_FACTOR = 2.0
# Only a copy is trusted that far: one partner, slope +-1 within this (two encodings of one quantity agree wherever it
# goes). A blend of several partners fitted on one drive can pass the edge test and still not hold on another
# (ROAD's own-car case: 0x19C, 0x274 and 0x354 fitted on each other over 19 s, another drive beginning far outside).
COPY_SLOPE_TOLERANCE = 0.05
# A signal whose joint residual exceeds this (x its clean 99.9% residual: the plausibility rule's factor) is a suspect:
# where it is also out of range, its partners are judged against their other partners instead (SignalFeaturizer).
SUSPECT_RESIDUAL = 2.0
_TAILS = (0.001, 0.0001)  # sig_edge levels below the extreme
_MAX_RESID_ROWS = 200_000  # frames of a signal its residual scale is measured on over the whole drive
BYTE_ORDERS = ("both", "big")  # find_signals: big-endian and carry-checked little-endian fields / big-endian only
_MIN_WRAPS = 5  # a little-endian field's lower part wraps at least this often in clean traffic ...
_CARRY_SHARE = 0.9  # ... and this share of the wraps carry into the part above


@dataclass
class Signal:
    """One physical signal: bits ``[start, start + length)`` of an ID's payload, big-endian, unsigned (or signed:
    ``sign_bits``, ``signed``)."""

    can_id: int
    start: int
    length: int
    lo: float  # clean range
    hi: float
    low_tails: list[float]  # clean quantiles _TAILS (lower tail)
    high_tails: list[float]  # clean quantiles 1 - _TAILS (upper tail)
    step: float  # clean 99.9% |change| between consecutive frames
    max_run: float  # longest clean run of an unchanged value, in frames; 0: no bound (it sat still to a drive's end)
    partners: list[list[int]] = field(default_factory=list)  # [[can_id, signal index], ...]
    coef: list[float] = field(default_factory=list)  # prediction = coef[:-1] . partner values + coef[-1]
    resid_scale: float = 1.0  # clean 99.9% |residual|
    # With several partners, each one's own fit [slope, intercept, clean 99.9% |residual|], in ``partners`` order: where
    # a partner lies far outside its clean range (the joint fit would extrapolate) and disagrees with its own partners,
    # the signal is judged against the best in-range partner on another ID alone. Empty: one partner, or a table saved
    # before.
    solo: list[list[float]] = field(default_factory=list)
    # A copy (one partner, slope +-1) whose fit, refitted on the frames where the partner lies in the middle of its
    # clean span, predicted the frames at the span's edges (_extrapolates): the same quantity sent twice, which
    # agrees past the clean range; judged wherever the partner lies. False: judged only while every partner is near
    # its clean range (a table saved before: False).
    extrapolates: bool = False
    little_endian: bool = False  # a DBC Intel signal over several bytes: bits counted in the byte-reversed word
    label: str = ""  # the DBC's Message.Signal name; "" for an inferred signal
    # +1 / -1: the value only ever rose / fell in clean driving (an odometer, a fuel level): it has no range to judge
    # by, since the next drive always goes past the last one's end (and the low bits of a long one wrap); 0: no trend.
    trend: int = 0
    # Share of the clean frames at the range's ends: a value that sits at its maximum much of the time (a warm
    # engine's coolant temperature) is not in a tail there, and sig_edge does not score it.
    lo_share: float = 0.0
    hi_share: float = 0.0
    # Largest clean |v[t] - v[t - L]| within one capture for each L of LEAP_LAGS (sig_leap); empty: not measured.
    max_change: list[float] = field(default_factory=list)
    # Bits just above the field (its headroom's) that were 0 in every clean frame and are no other signal's (at most
    # _SIGN_BITS): a value whose top bit is set while all of these are set too is a two's-complement number sign-
    # extended into them, read as negative (signal_values). 0: always read unsigned.
    sign_bits: int = 0
    # The field itself is a two's-complement number (its top bit the sign): clean driving showed it on both sides of
    # zero, or the DBC says so. Read signed; no headroom, no sign bits.
    signed: bool = False

    @property
    def name(self) -> str:
        bits = f"0x{self.can_id:X}[{'le ' if self.little_endian else ''}{self.start}:{self.start + self.length}]"
        return f"{self.label} {bits}" if self.label else bits


def payload_words(data: np.ndarray) -> np.ndarray:
    """uint64 [n]: the first 8 payload bytes as one big-endian word (shorter payloads zero padded)."""
    d = np.zeros((len(data), 8), np.uint8)
    w = min(data.shape[1], 8) if data.ndim == 2 else 0
    d[:, :w] = data[:, :w]
    return d.view(">u8").reshape(-1).astype(np.uint64)


def field_values(words: np.ndarray, start: int, length: int, little_endian: bool = False) -> np.ndarray:
    """float64 values of bits ``[start, start + length)`` (bit 0 = MSB of byte 0; ``little_endian``: of byte 7)."""
    if little_endian:
        words = words.byteswap()
    shift = np.uint64(64 - start - length)
    mask = np.uint64((1 << length) - 1)
    return ((words >> shift) & mask).astype(np.float64)


def write_field(words: np.ndarray, start: int, length: int, values: np.ndarray,
                little_endian: bool = False) -> np.ndarray:
    """``words`` with bits ``[start, start + length)`` replaced by ``values`` (clipped to the field)."""
    if little_endian:
        return write_field(words.byteswap(), start, length, values).byteswap()
    shift = np.uint64(64 - start - length)
    mask = np.uint64((1 << length) - 1)
    v = np.clip(np.round(values), 0, (1 << length) - 1).astype(np.uint64)
    return (words & ~(mask << shift)) | (v << shift)


def signal_values(words: np.ndarray, s: Signal) -> np.ndarray:
    """float64 raw values of signal ``s`` in payload ``words``, negative where sign-extended (``Signal.sign_bits``).

    Why: a signed quantity a short drive saw on one side of zero only (a steering angle, a yaw rate; on ROAD's real
    car 0x162 and 0x5E1 stayed at 0-99 over the coolant and reverse-light recordings) is segmented as an unsigned
    field with headroom; on the next drive it swings to -70 and, read unsigned, leaps across the whole field
    (0 -> 2047) at every zero crossing, and the two IDs that carry it disagree by 2,000 for the frames between their
    crossings.
    A two's-complement value sets the clean-zero bits above the field too (the sign extension); a value pinned at
    the field's full scale by an attacker (ROAD's max speedometer: one byte at 0xFF) does not, and stays a leap.
    """
    v = field_values(words, s.start, s.length, s.little_endian)
    if s.signed:
        return as_signed(v, s.length)
    if s.sign_bits <= 0:
        return v
    ext = field_values(words, s.start - s.sign_bits, s.sign_bits, s.little_endian)
    negative = (v >= 2.0 ** (s.length - 1)) & (ext == 2.0 ** s.sign_bits - 1)
    return np.where(negative, v - 2.0 ** s.length, v)


def as_signed(v: np.ndarray, length: int) -> np.ndarray:
    """Unsigned values ``v`` of a ``length``-bit field read as two's-complement numbers."""
    return np.where(v >= 2.0 ** (length - 1), v - 2.0 ** length, v)


def _unsigned(words: np.ndarray, s: Signal) -> np.ndarray:
    """Signal ``s``'s field in ``words`` read unsigned, sign bits ignored."""
    return field_values(words, s.start, s.length, s.little_endian)


def words_to_bytes(words: np.ndarray) -> np.ndarray:
    """Inverse of ``payload_words``: uint8 [n, 8]."""
    return words.astype(">u8").view(np.uint8).reshape(-1, 8).copy()


def segment_fields(flip: np.ndarray) -> list[tuple[int, int]]:
    """``(start, length)`` of the candidate fields of one ID from its 64 bit-flip rates (see module doc)."""
    fields: list[tuple[int, int]] = []
    start = None
    for i in range(65):
        f = flip[i] if i < 64 else 0.0
        boundary = f == 0 or (start is not None and f < _FLIP_DROP * flip[i - 1])
        if boundary and start is not None:
            fields.append((start, i - start))
            start = None
        if f > 0 and start is None:
            start = i
    return fields


def _longest_run(v: np.ndarray, same: np.ndarray | None = None) -> int:
    """The longest run of an unchanged value in ``v`` (frames), or 0 for no bound.

    Runs end at capture boundaries (``same`` [len(v) - 1]: consecutive values from the same capture). A run still
    going when its capture ends was cut short, not ended: a signal that reaches a steady state (a warm engine's
    coolant temperature, a speed on cruise control) sits still until the drive stops. Where such a run is more than
    twice the longest run that ended, stillness is normal for the signal and there is no bound to judge by.
    """
    if not len(v):
        return 0
    cut = np.diff(v) != 0
    ends_capture = np.zeros(len(v), bool)
    ends_capture[-1] = True
    if same is not None:
        cut |= ~same
        ends_capture[:-1] |= ~same
    ends = np.concatenate([np.flatnonzero(cut), [len(v) - 1]])  # the last frame of each run
    lengths = np.diff(np.concatenate([[-1], ends]))
    censored = ends_capture[ends]  # still going when its capture ended
    ended = int(lengths[~censored].max()) if (~censored).any() else 0
    open_run = int(lengths[censored].max()) if censored.any() else 0
    return 0 if open_run > 2 * max(ended, 1) else max(ended, open_run)


def _physical(v: np.ndarray, min_levels: int = _MIN_LEVELS, max_levels: float = np.inf) -> bool:
    """Whether field values ``v`` look like a physical quantity (not a flag, counter, checksum or noise): at least
    ``min_levels`` (and fewer than ``max_levels``) distinct values, and smooth."""
    lo, hi = float(v.min()), float(v.max())
    if not min_levels <= len(np.unique(v)) < max_levels or hi <= lo:
        return False
    return bool(np.quantile(np.abs(np.diff(v)), 0.99) <= _SMOOTH * (hi - lo))


def _physical_signed(v: np.ndarray, length: int) -> bool:
    """Whether the unsigned values ``v`` of a ``length``-bit field are a two's-complement physical signal seen on both
    sides of zero: values in both halves of the field, and read signed a physical signal a quarter of the span or
    less. Read unsigned such a field leaps across its whole width at every zero crossing (a yaw rate near zero
    crosses often enough to fail the smoothness test), and two IDs carrying it disagree by that much between their
    crossings."""
    top = v >= 2.0 ** (length - 1)
    if not top.any() or top.all():
        return False
    signed = as_signed(v, length)
    return 4.0 * (float(signed.max()) - float(signed.min())) <= float(v.max()) - float(v.min()) and _physical(signed)


def _coarse(v: np.ndarray) -> bool:
    """A slow quantity the clean frames showed at too few values to be a signal (:func:`find_coarse_fields`)."""
    return _physical(v, _MIN_COARSE_LEVELS, _MIN_LEVELS)


def _signal(cid: int, start: int, length: int, v: np.ndarray, little_endian: bool = False, label: str = "",
            signed: bool = False) -> Signal:
    """A Signal with its clean statistics from values ``v`` (the ID's frames in capture order, unsigned; read as
    two's-complement numbers when ``signed``)."""
    s = Signal(int(cid), start, length, 0.0, 0.0, [], [], 1.0, 1.0, little_endian=little_endian, label=label,
               signed=signed)
    _set_statistics(s, as_signed(v, length) if signed else v)
    return s


def _set_statistics(s: Signal, v: np.ndarray, same: np.ndarray | None = None,
                    steady: np.ndarray | None = None) -> None:
    """``s``'s clean range, tails, 99.9% change, longest still run, trend and largest changes from its values ``v``
    (capture order); ``same`` [len(v) - 1]: whether consecutive values come from the same capture (changes across
    captures are not the signal's own); ``steady``: whether no frame of the ID is missing between them (where
    attack frames were cut out of a capture, the change across the hole took seconds, not one frame)."""
    step = np.abs(np.diff(v)) if same is None else np.abs(np.diff(v))[same]
    s.lo, s.hi = float(v.min()), float(v.max())
    s.low_tails = [float(np.quantile(v, q)) for q in _TAILS]
    s.high_tails = [float(np.quantile(v, 1 - q)) for q in _TAILS]
    s.step = float(max(np.quantile(step, 0.999), 1.0)) if len(step) else 1.0
    s.max_run = float(_longest_run(v, same))
    s.trend = value_trend(v, same)
    s.lo_share, s.hi_share = float(np.mean(v == s.lo)), float(np.mean(v == s.hi))
    pairs = same if steady is None else (steady if same is None else same & steady)  # consecutive, no hole
    s.max_change = max_changes(v, pairs)


def max_changes(v: np.ndarray, same: np.ndarray | None = None) -> list[float]:
    """The largest |v[t] - v[t - L]| for each L of ``LEAP_LAGS``, both frames from one capture (``same`` as in
    :func:`_set_statistics`), at least 1 (one step of the field); 0 where no pair that far apart exists."""
    capture = np.zeros(len(v), np.int64) if same is None else np.r_[0, np.cumsum(~same)]
    out = []
    for lag in LEAP_LAGS:
        if len(v) <= lag:
            out.append(0.0)
            continue
        d = np.abs(v[lag:] - v[:-lag])[capture[lag:] == capture[:-lag]]
        out.append(float(max(d.max(), 1.0)) if len(d) else 0.0)
    return out


def payload_bits(start: int, length: int, little_endian: bool = False) -> set[int]:
    """The payload bits (0 = MSB of byte 0) of field ``[start, start + length)`` (of the byte-reversed word when
    ``little_endian``)."""
    pos = np.arange(start, start + length)
    return set(((7 - pos // 8) * 8 + pos % 8).tolist()) if little_endian else set(pos.tolist())


def carries(words: np.ndarray, start: int, length: int) -> bool:
    """Whether field ``[start, start + length)`` of ``words`` (capture order) is one number across its byte
    boundaries: at each, the lower part wraps around >= ``_MIN_WRAPS`` times and ``_CARRY_SHARE`` of the wraps
    change the upper part by one the other way."""
    end = start + length
    for cut in range((start // 8 + 1) * 8, end, 8):
        upper = field_values(words, start, cut - start)
        lower = field_values(words, cut, end - cut)
        d_lo, d_up = np.diff(lower), np.diff(upper)
        wrap = np.abs(d_lo) > 2.0 ** (end - cut) / 2
        if wrap.sum() < _MIN_WRAPS or float((d_up[wrap] == -np.sign(d_lo[wrap])).mean()) < _CARRY_SHARE:
            return False
    return True


def _segmented(w: np.ndarray, bits: np.ndarray, skip: set[int] | frozenset[int] = frozenset(),
               keep: Callable[[np.ndarray], bool] = _physical,
               signed_too: bool = True) -> list[tuple[int, int, np.ndarray]]:
    """``(start, length, values)`` of the physical fields (``keep``; with ``signed_too`` also those physical read as
    two's-complement numbers, :func:`_physical_signed`) of one ID's words ``w`` (``bits``: them unpacked, [n, 64]) by
    bit-flip segmentation, values unsigned; bits in ``skip`` (taken by another reading) bound fields as
    never-flipping ones do."""
    flip = (bits[1:] != bits[:-1]).mean(0)
    if skip:
        flip[sorted(skip)] = 0.0
    return [(start, length, v) for start, length in segment_fields(flip)
            if length >= _MIN_BITS and (keep(v := field_values(w, start, length))
                                        or (signed_too and _physical_signed(v, length)))]


def _headroom(bits: np.ndarray, start: int, taken: set[int] | frozenset[int] = frozenset(),
              little_endian: bool = False, most: int = _HEADROOM_BITS) -> int:
    """How many bits above a field starting at ``start`` are free: 0 in every clean frame and taken by nothing
    (at most ``most``): a quantity beyond anything the clean capture showed carries into them."""
    head = 0
    while (head < most and start - head > 0 and not bits[:, start - head - 1].any()
           and not taken & payload_bits(start - head - 1, 1, little_endian)):
        head += 1
    return head


def _with_headroom(cid: int, bits: np.ndarray, start: int, length: int, v: np.ndarray,
                   taken: set[int] | frozenset[int], little_endian: bool = False) -> Signal:
    """The Signal of a segmented field: signed where clean driving showed it on both sides of zero, else widened by
    its headroom, with the free bits above that as its sign bits."""
    if _physical_signed(v, length):
        return _signal(cid, start, length, v, little_endian, signed=True)
    head = _headroom(bits, start, taken, little_endian)
    s = _signal(cid, start - head, length + head, v, little_endian)
    # Only a field with its full headroom: a field that ends where another begins, or the payload does, has no room
    # to show a sign extension (the next bit up belongs to something else).
    if head == _HEADROOM_BITS:
        s.sign_bits = _headroom(bits, s.start, taken, little_endian, _SIGN_BITS)
    return s


def byte_order_for(byte_order: str, long_drive: bool) -> str:
    """The reading ``find_signals`` takes for a configured ``features.byte_order``: ``auto`` is ``both`` after a long
    clean drive (``long_drive``) and ``big`` before (module doc), ``both`` and ``big`` are themselves."""
    if byte_order not in ("auto", *BYTE_ORDERS):
        raise DataError(f"byte_order {byte_order!r} unknown; use auto, both or big")
    return ("both" if long_drive else "big") if byte_order == "auto" else byte_order


def find_signals(ids: np.ndarray, data: np.ndarray, fields: list | None = None,
                 byte_order: str = "both") -> list[Signal]:
    """The physical signals of clean frames ``ids`` / ``data`` (capture order), without partners.

    ``fields``: the DBC's (anything with can_id, start, length, little_endian, label, as
    :func:`fastmaml.apps.ids.can.dbc.read_dbc` gives) instead of the bit-flip segmentation.
    ``byte_order``: ``both`` also finds little-endian signals (module doc), ``big`` reads big-endian only.
    """
    if byte_order not in BYTE_ORDERS:
        raise DataError(f"byte_order {byte_order!r} unknown; use one of {', '.join(BYTE_ORDERS)}")
    ids = np.asarray(ids, np.int64)
    words = payload_words(data)
    uniq, cnt = np.unique(ids, return_counts=True)
    enough = set(uniq[cnt >= MIN_SIGNAL_FRAMES].tolist())
    sigs: list[Signal] = []
    if fields is not None:
        for f in fields:
            if f.can_id in enough:
                v = field_values(words[ids == f.can_id], f.start, f.length, f.little_endian)
                signed = bool(getattr(f, "signed", False))
                if _physical(as_signed(v, f.length) if signed else v):
                    sigs.append(_signal(f.can_id, f.start, f.length, v, f.little_endian, f.label, signed))
        return sigs
    for cid in sorted(enough):
        w = words[ids == cid]
        little: list[Signal] = []
        taken: set[int] = set()  # payload bits of the little-endian signals
        if byte_order == "both":
            swapped = w.byteswap()
            sbits = np.unpackbits(words_to_bytes(swapped), axis=1)
            for start, length, v in _segmented(swapped, sbits):
                if start // 8 != (start + length - 1) // 8 and carries(swapped, start, length):
                    s = _with_headroom(cid, sbits, start, length, v, taken, True)
                    little.append(s)
                    taken |= payload_bits(s.start - s.sign_bits, s.length + s.sign_bits, True)
        bits = np.unpackbits(words_to_bytes(w), axis=1)
        for start, length, v in _segmented(w, bits, taken):  # the rest of the payload, big-endian
            sigs.append(_with_headroom(cid, bits, start, length, v, taken))
        sigs += little
    return sigs


def find_coarse_fields(ids: np.ndarray, data: np.ndarray, sigs: list[Signal],
                       fields: list | None = None) -> list[Signal]:
    """Fields of clean frames ``ids`` / ``data`` (capture order) that are slow quantities seen at too few values to
    be signals: 3 to 7 levels, smooth, outside the bits of ``sigs`` (``fields``: the DBC's instead of the
    segmentation, as in :func:`find_signals`). Judged by ``sig_full`` only (:class:`SignalFeaturizer`).

    Why: over a short drive a temperature moves a few steps. ROAD's coolant byte took 7 values over the 145 s of
    clean driving its folds fit on (118-137, one step at a time), one short of a signal, so its masquerade at full
    scale went unjudged; its leap from 137 to 255 is no less implausible for that.
    """
    ids = np.asarray(ids, np.int64)
    words = payload_words(data)
    uniq, cnt = np.unique(ids, return_counts=True)
    enough = uniq[cnt >= MIN_SIGNAL_FRAMES].tolist()
    out: list[Signal] = []
    if fields is not None:
        for f in fields:
            if f.can_id in enough and _coarse(v := field_values(words[ids == f.can_id], f.start, f.length,
                                                               f.little_endian)):
                out.append(_signal(f.can_id, f.start, f.length, v, f.little_endian, f.label))
        return out
    for cid in enough:
        w = words[ids == cid]
        taken = set().union(*(payload_bits(s.start, s.length, s.little_endian) for s in sigs if s.can_id == cid))
        bits = np.unpackbits(words_to_bytes(w), axis=1)
        out += [_signal(cid, start, length, v) for start, length, v in _segmented(w, bits, taken, _coarse, False)]
    return out


def fit_signals(ids: np.ndarray, data: np.ndarray, clock: np.ndarray | None = None,
                fields: list | None = None, byte_order: str = "both", capture: np.ndarray | None = None,
                drive: np.ndarray | None = None) -> list[Signal]:
    """Physical signals of clean frames ``ids`` / ``data`` (in capture order), with their partners.

    ``clock``: timestamps in seconds (for the half-second changes partners are checked on); without
    it the frame index stands in, with 1,000 frames a second. ``fields``, ``byte_order``: see :func:`find_signals`.
    ``capture``: int per frame, which capture it comes from where several are laid end to end: a partner's changes
    are measured within captures, and the relation is kept only where, fitted on the other captures, it predicts
    each one (:func:`_holds_on_each_capture`). ``drive``: int per frame, which drive (captures of one drive held out
    together; default: each capture its own; ``features.drive_index``).
    """
    sigs = find_signals(ids, data, fields, byte_order)
    ids = np.asarray(ids, np.int64)
    clk = np.arange(len(ids)) / 1000.0 if clock is None else np.asarray(clock, np.float64)
    _fit_partners(sigs, ids, payload_words(data), clk, capture, drive)
    return sigs


def fit_statistics(sigs: list[Signal], by_id: dict[int, np.ndarray], words: np.ndarray,
                   capture: np.ndarray | None = None, clock: np.ndarray | None = None) -> None:
    """Each signal's clean statistics (range, tails, change, still run, trend, residual against its partners) measured
    again over *all* clean frames ``words`` (capture order; ``by_id``: their indices per ID,
    :func:`~fastmaml.apps.ids.can.relations.frames_by_id`), in place; partnerships with a trend dropped.
    ``capture``: int per frame, which capture (drive) it comes from, where several are laid end to end; ``clock``:
    seconds per frame, to tell where frames of an ID are missing (the largest changes are measured between frames
    that follow each other at the ID's rate).

    Why: the signals and their partners are found on the first few minutes of clean driving (that fixes what the
    payload holds), but a few minutes do not show how far the values go: fitted there, the range of a speed, a
    temperature or a fuel level is exceeded by the rest of the drive, and those clean frames look like attacks.
    """
    none = np.zeros(0, np.int64)
    for s in sigs:
        rows = by_id.get(s.can_id, none)
        if len(rows) >= 2:
            same = None if capture is None else capture[rows][1:] == capture[rows][:-1]
            steady = None
            if clock is not None:
                dt = np.diff(clock[rows])
                spacing = float(np.median(dt if same is None else dt[same])) if len(dt) else 0.0
                steady = dt <= _MISSING_SPACINGS * spacing
            _set_statistics(s, signal_values(words[rows], s), same, steady)
    # Two quantities that only rose or fell over the drive (a warming temperature, a fuel level, a trip counter)
    # are related through the clock, not through the car: the relation found on the first minutes breaks when one
    # of them levels off. Neither side of a partnership may be a trend.
    for s in sigs:
        if s.partners and (s.trend or any(sigs[k].trend for _, k in s.partners)):
            s.partners, s.coef, s.resid_scale, s.solo = [], [], 1.0, []
    spacing = frame_spacings(by_id)
    for s in sigs:
        rows = by_id.get(s.can_id, none)
        if not s.partners or len(rows) < 2:
            continue
        take = rows[np.linspace(0, len(rows) - 1, min(len(rows), _MAX_RESID_ROWS)).astype(np.int64)]
        pred = np.full(len(take), s.coef[-1])
        have = np.ones(len(take), bool)
        values = []
        for (pid, k), c in zip(s.partners, s.coef[:-1]):
            src = fresh_rows(by_id.get(pid, none), take, spacing.get(pid, 0.0), capture)
            have &= src >= 0
            values.append((src >= 0, signal_values(words[np.maximum(src, 0)], sigs[k])))
            pred += c * values[-1][1]
        v = signal_values(words[take], s)
        if have.sum() >= MIN_SIGNAL_FRAMES:
            s.resid_scale = float(max(np.quantile(np.abs(v - pred)[have], 0.999), 1.0))
        for fit, (fresh, pv) in zip(s.solo, values):
            if fresh.sum() >= MIN_SIGNAL_FRAMES:
                fit[2] = float(max(np.quantile(np.abs(v - fit[0] * pv - fit[1])[fresh], 0.999), 1.0))


def _r2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared correlation of ``b`` [n] with every column of ``a`` [n, m]."""
    az = (a - a.mean(0)) / np.maximum(a.std(0), 1e-12)
    bz = (b - b.mean()) / max(b.std(), 1e-12)
    return (az.T @ bz / len(b)) ** 2


def _fit_line(x: np.ndarray, t: np.ndarray, rows: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """The design matrix of ``t ~ x`` [n, m] (a column of ones appended) and the least-squares coefficients fitted on
    ``rows`` of it: every check below fits on some rows and measures the residual on others."""
    a = np.concatenate([x, np.ones((len(t), 1))], 1)
    coef, *_ = np.linalg.lstsq(a[rows], t[rows], rcond=None)
    return a, coef


def _holdout_r2(x: np.ndarray, t: np.ndarray) -> float:
    """R^2 on the second half of a least-squares fit on the first half."""
    h = len(t) // 2
    a, coef = _fit_line(x, t, slice(0, h))
    res = t[h:] - a[h:] @ coef
    return 1.0 - float(res.var()) / max(float(t[h:].var()), 1e-12)


def _is_copy(coef: np.ndarray) -> bool:
    """One partner and a slope of +-1 (within ``COPY_SLOPE_TOLERANCE``): the same quantity sent twice, or mirrored."""
    return len(coef) == 2 and abs(abs(float(coef[0])) - 1.0) <= COPY_SLOPE_TOLERANCE


def _extrapolates(x: np.ndarray, t: np.ndarray) -> bool:
    """Whether the linear relation ``t ~ x`` [n, m] holds beyond where it was fitted: refitted on the rows where every
    partner lies in the middle of its span (its outer ``EDGE_SHARE`` on each side held out), it predicts the held-out
    rows (99% |residual|) within ``EDGE_FACTOR`` x its 99.9% |residual| on the rows it was fitted on.

    Why: fitted on a short drive, a partner later goes where the drive never went. Two copies of a wheel speed
    still agree there; a relation that was only locally linear (a curve, a blend that held over one drive) does not,
    and its residual would flag clean driving. This tells them apart on the clean drive itself.
    """
    lo, hi = x.min(0), x.max(0)
    margin = EDGE_SHARE * (hi - lo)
    core = ((x >= lo + margin) & (x <= hi - margin)).all(1)
    if core.sum() < MIN_SIGNAL_FRAMES or (~core).sum() < MIN_SIGNAL_FRAMES:
        return False  # too little of the drive on one side to tell
    a, coef = _fit_line(x, t, core)
    res = np.abs(t - a @ coef)
    return bool(np.quantile(res[~core], 0.99) <= EDGE_FACTOR * max(float(np.quantile(res[core], 0.999)), 1.0))


def _holds_on_each_capture(x: np.ndarray, t: np.ndarray, capture: np.ndarray, scale: float) -> bool:
    """Whether the linear relation ``t ~ x`` [n, m], fitted on all captures but one, predicts that one's rows
    (99% |residual|) within ``EDGE_FACTOR`` x ``scale`` (the residual scale it will be judged by), for every capture
    with ``_MIN_CAPTURE_ROWS`` rows.

    Why: fitted on several drives laid end to end, a relation can join values that each drive held nearly still
    (ROAD's 0x65C against 0x684: one pair of values per recording). It fits the drives it saw and not the next
    one; on a held-out ROAD recording its residual sat above every clean frame's on every frame, and the learned
    detectors alerted all the time. One drive: nothing to check against (True).
    """
    caps, counts = np.unique(capture, return_counts=True)
    caps = caps[counts >= _MIN_CAPTURE_ROWS]
    if len(caps) < 2:
        return True
    for c in caps:
        held = capture == c
        a, coef = _fit_line(x, t, ~held)
        if np.quantile(np.abs(t[held] - a[held] @ coef), 0.99) > EDGE_FACTOR * scale:
            return False
    return True


def _fit_partners(sigs: list[Signal], ids: np.ndarray, words: np.ndarray, clock: np.ndarray,
                  capture: np.ndarray | None = None, drive: np.ndarray | None = None) -> None:
    """Each signal's partners on other IDs and its linear prediction from their latest values (``capture``,
    ``drive``: as in :func:`fit_signals`)."""
    by_id: dict[int, list[int]] = {}
    for j, s in enumerate(sigs):
        by_id.setdefault(s.can_id, []).append(j)
    positions = {cid: np.flatnonzero(ids == cid) for cid in by_id}
    spacing = frame_spacings(positions)
    by_drive = capture if drive is None else drive
    for cid, members in by_id.items():
        rows = positions[cid]
        rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), _MAX_FIT_ROWS)).astype(np.int64)]
        # The bus's recent-value state at this ID's frames: every other ID's signals, sampled and held (where fresh:
        # next to a partner's frames left out as attack frames, its latest clean value is seconds old).
        cols, names = [], []
        for other, oj in by_id.items():
            if other == cid:
                continue
            src = fresh_rows(positions[other], rows, spacing[other])
            for j in oj:
                s = sigs[j]
                cols.append(np.where(src >= 0, signal_values(words[np.maximum(src, 0)], s), np.nan))
                names.append(j)
        if not cols:
            continue
        state = np.stack(cols, 1)
        ok = ~np.isnan(state).any(1)
        if ok.sum() < MIN_SIGNAL_FRAMES:
            continue
        state = state[ok]
        t_clk = clock[rows[ok]]
        dt = float(np.median(np.diff(t_clk))) if len(t_clk) > 1 else 1.0
        lag = max(1, int(round(_DELTA_LAG_S / max(dt, 1e-9))))
        cap = None if capture is None else capture[rows[ok]]
        held_out = None if by_drive is None else by_drive[rows[ok]]  # what the capture check holds out at a time
        for j in members:
            s = sigs[j]
            t = signal_values(words[rows[ok]], s)
            r2 = _r2(state, t)
            # Changes within one capture: from one drive's end to the next drive's start is no change of the car's.
            same = np.ones(max(len(t) - lag, 0), bool) if cap is None else cap[lag:] == cap[:-lag]
            r2_delta = (_r2((state[lag:] - state[:-lag])[same], (t[lag:] - t[:-lag])[same]) if same.sum() > lag
                        else np.zeros_like(r2))
            good = (r2 >= _PARTNER_R2) & (r2_delta >= _PARTNER_DELTA_R2)
            best = [int(k) for k in np.argsort(-r2)[:_MAX_PARTNERS] if good[k]]
            if not best or _holdout_r2(state[:, best], t) < _PARTNER_HOLDOUT_R2:
                continue
            a, coef = _fit_line(state[:, best], t)
            res = np.abs(t - a @ coef)
            scale = max(float(np.quantile(res, 0.999)), 1.0)
            if held_out is not None and not _holds_on_each_capture(state[:, best], t, held_out, scale):
                continue
            s.partners = [[sigs[names[k]].can_id, names[k]] for k in best]
            s.coef = [float(c) for c in coef]
            s.resid_scale = scale
            s.extrapolates = _is_copy(coef) and _extrapolates(state[:, best], t)
            s.solo = []
            if len(best) > 1:
                for k in best:
                    a1, c1 = _fit_line(state[:, k:k + 1], t)
                    s.solo.append([float(c1[0]), float(c1[1]), float(max(np.quantile(np.abs(t - a1 @ c1), 0.999),
                                                                          1.0))])


def signals_to_dicts(sigs: list[Signal]) -> list[dict]:
    """JSON-able form (a FeatureState's ``signals`` entry)."""
    return [asdict(s) for s in sigs]


def signals_from_dicts(rows: list[dict], source: str = "<dict>") -> list[Signal]:
    """Inverse of ``signals_to_dicts``; DataError naming ``source`` on a corrupt or out-of-range table."""
    try:
        sigs = [Signal(**r) for r in rows]
    except TypeError as e:
        raise DataError(f"{source}: corrupt signal table ({e}); refit the FeatureState") from e
    for s in sigs:
        if not (0 <= s.start - max(s.sign_bits, 0) and 1 <= s.length and s.start + s.length <= 64) or any(
                not 0 <= p[1] < len(sigs) for p in s.partners) or (s.solo and len(s.solo) != len(s.partners)):
            raise DataError(f"{source}: signal {s.name} is out of range; refit the FeatureState")
    return sigs


def _log_scale(r: np.ndarray) -> np.ndarray:
    return np.minimum(np.log2(1.0 + r) / 4.0, 1.0)


def _tail_depth(v: np.ndarray, levels: list[float], end: float, end_share: float) -> np.ndarray:
    """How many of the upper tail levels (``_TAILS`` quantiles, then the clean maximum ``end``) ``v`` lies beyond:
    strictly beyond a level, or on it where it is the maximum and no more than that tail's share of clean frames sit
    there (a value pinned at a maximum clean driving rarely reached scores 1; one it often sits at does not)."""
    depth = np.zeros(len(v))
    for q, h in zip((*_TAILS, 0.0), (*levels, end)):
        depth += (v > h) | ((v == h) & (h == end) & (end_share <= max(q, _TAILS[-1])))
    return depth


class SignalFeaturizer:
    """Streaming ``SIGNAL_FEATURES`` of consecutive chunks of one capture."""

    def __init__(self, sigs: list[Signal], coarse: list[Signal] | None = None) -> None:
        self.sigs = sigs
        self.coarse = list(coarse or [])  # judged by sig_full only (find_coarse_fields)
        self.by_id: dict[int, list[int]] = {}
        for j, s in enumerate(sigs + self.coarse):  # index j >= len(sigs): a coarse field
            self.by_id.setdefault(s.can_id, []).append(j)
        self._partner_ids = sorted({p[0] for s in sigs for p in s.partners})
        self.reset()

    def reset(self) -> None:
        self._last_word: dict[int, int] = {}  # latest payload word of every signal-carrying ID
        self._run: dict[int, tuple[float, int]] = {}  # signal -> (last value, frames unchanged)
        self._resid: dict[int, np.ndarray] = {}  # signal -> its last few normalized residuals
        self._recent: dict[int, np.ndarray] = {}  # signal -> its last max(LEAP_LAGS) values (sig_leap)
        self._full: dict[int, bool] = {}  # signal -> whether its last value was a judged leap to full scale
        self._suspect_last: dict[int, bool] = {}  # signal -> whether its last frame disagreed with its partners

    def transform(self, ids: np.ndarray, data: np.ndarray) -> np.ndarray:
        """float32 [n, len(SIGNAL_FEATURES)] for the next chunk (frames in capture order)."""
        ids = np.asarray(ids, np.int64)
        n = len(ids)
        out = np.zeros((n, len(SIGNAL_FEATURES)), np.float32)
        if n == 0 or not self.sigs + self.coarse:
            return out
        words = payload_words(data)
        last = {cid: last_index(ids, cid) for cid in self._partner_ids}
        carried_words = dict(self._last_word)  # the state before this chunk, read by every ID below
        # Every partnered signal's joint residual first: a signal's fallback asks whether its out-of-range partner,
        # on another ID, disagreed with its own partners at its latest frame.
        rows_of = {cid: np.flatnonzero(ids == cid) for cid in self.by_id}
        joint_parts: dict[int, tuple] = {}
        joint: dict[int, np.ndarray] = {}  # signal -> its joint residual at every frame of this chunk (its ID's)
        values: dict[int, np.ndarray] = {}  # signal -> its values at its ID's frames (read once)
        for cid, members in self.by_id.items():
            rows = rows_of[cid]
            if not len(rows):
                continue
            for j in members:
                if j < len(self.sigs) and self.sigs[j].partners:
                    s = self.sigs[j]
                    values[j] = signal_values(words[rows], s)
                    joint_parts[j] = self._joint(s, rows, values[j], words, last, carried_words)
                    full_r = np.zeros(n)
                    full_r[rows] = joint_parts[j][0]
                    joint[j] = full_r
        for cid, members in self.by_id.items():
            rows = rows_of[cid]
            if not len(rows):
                continue
            w = words[rows]
            prev_w = np.empty_like(w)
            prev_w[1:] = w[:-1]
            carried = carried_words.get(cid)
            has_prev = np.ones(len(rows), bool)
            if carried is None:
                has_prev[0] = False
                prev_w[0] = w[0]
            else:
                prev_w[0] = np.uint64(carried)
            cols = np.zeros((len(rows), len(SIGNAL_FEATURES)))
            for j in members:
                if j >= len(self.sigs):  # a coarse field: only whether it leapt to full scale
                    s = self.coarse[j - len(self.sigs)]
                    full = self._at_full_scale(j, s, signal_values(w, s), signal_values(prev_w, s), has_prev)
                    np.maximum(cols[:, 8], full, out=cols[:, 8])
                    continue
                s = self.sigs[j]
                v = values[j] if j in values else signal_values(w, s)
                width = s.hi - s.lo + 1.0
                if s.trend:  # a trend has no range: an odometer goes past its last clean value, its low bits wrap
                    outside = edge = np.zeros(len(v))
                else:
                    outside = np.maximum(np.maximum(s.lo - v, v - s.hi), 0.0) / width
                    edge = np.maximum(_tail_depth(-v, [-x for x in s.low_tails], -s.lo, s.lo_share),
                                      _tail_depth(v, s.high_tails, s.hi, s.hi_share))
                prev_v = signal_values(prev_w, s)
                jump = np.where(has_prev, np.abs(v - prev_v) / s.step, 0.0)
                stuck = self._stuck(j, v) / s.max_run if s.max_run > 0 else np.zeros(len(v))
                if s.partners:
                    res, res8 = self._residual(j, s, *joint_parts[j], v, joint)
                else:
                    res, res8 = np.zeros(len(v)), np.zeros(len(v))
                leap = np.zeros(len(v)) if s.trend else self._leap(j, s, v)
                # Full scale is every bit of the field set, whatever the sign: judged on the unsigned reading, so
                # a field pinned at all ones (an attacker's 0xFF) is not the small negative -1 here.
                if s.signed:  # all ones is -1, next to zero: no full scale to leap to
                    full = np.zeros(len(v))
                elif s.sign_bits:
                    full = self._at_full_scale(j, s, _unsigned(w, s), _unsigned(prev_w, s), has_prev)
                else:
                    full = self._at_full_scale(j, s, v, prev_v, has_prev)
                np.maximum(cols[:, 0], _log_scale(16.0 * outside), out=cols[:, 0])
                np.maximum(cols[:, 1], edge / (len(_TAILS) + 1), out=cols[:, 1])
                np.maximum(cols[:, 2], _log_scale(jump), out=cols[:, 2])
                np.maximum(cols[:, 3], np.minimum(stuck / 4.0, 1.0), out=cols[:, 3])
                np.maximum(cols[:, 4], _log_scale(res), out=cols[:, 4])
                np.maximum(cols[:, 5], _log_scale(res8), out=cols[:, 5])
                if s.partners:
                    cols[:, 6] = 1.0
                np.maximum(cols[:, 7], _log_scale(leap), out=cols[:, 7])
                np.maximum(cols[:, 8], full, out=cols[:, 8])
            out[rows] = cols
            self._last_word[cid] = int(w[-1])
        for j, r in joint.items():
            self._suspect_last[j] = bool(r[rows_of[self.sigs[j].can_id][-1]] > SUSPECT_RESIDUAL)
        return out

    def _stuck(self, j: int, v: np.ndarray) -> np.ndarray:
        """Frames each value has been unchanged, counting the current one and runs from earlier chunks."""
        idx = np.arange(len(v))
        starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
        run_start = starts[np.searchsorted(starts, idx, side="right") - 1]
        run = (idx - run_start + 1).astype(np.float64)
        prev = self._run.get(j)
        if prev is not None and prev[0] == v[0]:
            run[: (starts[1] if len(starts) > 1 else len(v))] += prev[1]
        self._run[j] = (float(v[-1]), int(run[-1]))
        return run

    def _leap(self, j: int, s: Signal, v: np.ndarray) -> np.ndarray:
        """max over L of (|v[t] - v[t - L]| / the clean maximum over L frames - 1), at least 0; the values before
        this chunk come from earlier chunks (so any chunking gives the same result)."""
        out = np.zeros(len(v))
        if len(s.max_change) != len(LEAP_LAGS):  # a signal table from before sig_leap: no limits known
            return out
        recent = self._recent.get(j, np.zeros(0))
        seq = np.concatenate([recent, v])
        self._recent[j] = seq[-LEAP_LAGS[-1]:]
        idx = np.arange(len(recent), len(seq))
        for lag, limit in zip(LEAP_LAGS, s.max_change):
            if limit <= 0:
                continue
            have = idx >= lag
            prev = seq[np.maximum(idx - lag, 0)]
            out = np.maximum(out, np.where(have, np.abs(v - prev) / limit - 1.0, 0.0))
        return out

    def _at_full_scale(self, j: int, s: Signal, v: np.ndarray, prev: np.ndarray, has_prev: np.ndarray) -> np.ndarray:
        """1.0 on the frames of runs at the field's full scale that began with a leap there (``sig_full``); a run
        going on from the previous chunk keeps its judgement."""
        top = float(2 ** s.length - 1)
        out = np.zeros(len(v))
        if len(s.max_change) != len(LEAP_LAGS) or s.hi >= top:  # no limits known, or clean driving showed it
            return out
        at = v == top
        # Measured around the circle: a signed value going below 0, or a count wrapping, reaches full scale in a step.
        leap = np.minimum(np.abs(v - prev), top + 1.0 - np.abs(v - prev))
        # With no frame before (a capture's start, or a stream started mid-drive), from the nearest clean value.
        leap[~has_prev] = min(top - s.hi, s.lo + 1.0)
        onset = at & (leap > FULL_LEAP * max(s.max_change))
        begins = at & ~np.r_[False, at[:-1]]  # the first frame of each run at full scale in this chunk
        judged = onset[begins]
        if at[0] and has_prev[0] and prev[0] == top:  # the run began in an earlier chunk
            judged[0] = self._full.get(j, False)
        out[at] = judged[np.cumsum(begins)[at] - 1]
        self._full[j] = bool(out[-1] > 0)
        return out

    def _joint(self, s: Signal, rows: np.ndarray, v: np.ndarray, words: np.ndarray, last: dict[int, np.ndarray],
               carried_words: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """The joint fit's normalized residual (0 where not judged), where it is judged, where every partner has a
        value, and each partner's (values, in range, latest frame in this chunk or -1)."""
        pred = np.full(len(v), s.coef[-1])
        have = np.ones(len(v), bool)
        fresh = np.ones(len(v), bool)
        partner_values = []
        for (pid, k), c in zip(s.partners, s.coef[:-1]):
            src = last[pid][rows]
            pw = words[np.maximum(src, 0)]
            carried = carried_words.get(pid)
            if carried is not None:
                pw = np.where(src >= 0, pw, np.uint64(carried))
                ok = np.ones(len(v), bool)
            else:
                ok = src >= 0
            p = self.sigs[k]
            pv = signal_values(pw, p)
            pred += c * pv
            # The relation holds where it was fitted: a partner far outside its clean range (another drive's
            # start, a value a short drive never reached, or a falsified partner) extrapolates it. Not judged there;
            # the partner's own frames are judged against theirs.
            margin = np.inf if s.extrapolates else EXTRAPOLATION_MARGIN * (p.hi - p.lo)
            in_range = (pv >= p.lo - margin) & (pv <= p.hi + margin)
            have &= ok & in_range
            fresh &= ok
            partner_values.append((pv, in_range, src))
        return np.where(have, np.abs(v - pred) / s.resid_scale, 0.0), have, fresh, partner_values

    def _suspect(self, k: int, src: np.ndarray, joint: dict[int, np.ndarray]) -> np.ndarray:
        """Whether signal ``k`` disagreed with its own partners (joint residual above ``SUSPECT_RESIDUAL``) at its
        latest frame ``src`` (-1: a frame of an earlier chunk)."""
        here = joint.get(k)
        now = here[np.maximum(src, 0)] > SUSPECT_RESIDUAL if here is not None else np.zeros(len(src), bool)
        return np.where(src >= 0, now, self._suspect_last.get(k, False))

    def _residual(self, j: int, s: Signal, r: np.ndarray, have: np.ndarray, fresh: np.ndarray,
                  partner_values: list, v: np.ndarray, joint: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The residual with the fallback to single partners applied, and its mean over the last 8 frames."""
        # Where a partner lies out of range *and disagrees with its own partners* (a suspect: falsified, not merely
        # somewhere a short drive never went), the best partner on another ID still in range judges alone, by its
        # own fit. The CrySyS sample's DOUBLE file falsifies 0x110 and 0x410 together: 0x410's joint fit takes
        # 0x110 as a partner, and without this 0x410's offset went unjudged while its other partner, 0x280, said
        # otherwise. Not where the partner out of range agrees with its partners (a drive that began where the
        # clean one never went: ROAD's own-car case, where the in-range partners' single fits did not hold either),
        # and not by another signal of an ID that left its range (ROAD's 0x65C against two signals of 0x33).
        fallback = fresh & ~have
        if s.solo and fallback.any():
            unexplained = np.zeros(len(v), bool)  # a partner out of range that is no suspect
            for (pid, k), (_, in_range, src) in zip(s.partners, partner_values):
                unexplained |= ~in_range & ~self._suspect(k, src, joint)
            done = ~fallback | unexplained
            for i in sorted(range(len(s.solo)), key=lambda i: s.solo[i][2]):
                slope, intercept, scale = s.solo[i]
                pv = partner_values[i][0]
                same_id_out = np.zeros(len(v), bool)
                for (pid, _), (_, in_range, _) in zip(s.partners, partner_values):
                    if pid == s.partners[i][0]:
                        same_id_out |= ~in_range
                take = ~done & ~same_id_out
                r = np.where(take, np.abs(v - slope * pv - intercept) / scale, r)
                done |= take
        # Mean of the last 8 residuals, summed oldest first so that any chunking gives the same bits.
        hist = self._resid.get(j, np.zeros(0))
        pad = _RESID_WINDOW - 1 - len(hist)
        seq = np.concatenate([np.zeros(pad), hist, r])
        seen = np.concatenate([np.zeros(pad), np.ones(len(hist) + len(r))])
        total, count = np.zeros(len(r)), np.zeros(len(r))
        for w in range(_RESID_WINDOW):
            total += seq[w:w + len(r)]
            count += seen[w:w + len(r)]
        self._resid[j] = seq[-(_RESID_WINDOW - 1):][seen[-(_RESID_WINDOW - 1):] > 0]
        return r, total / count


__all__ = ["FULL_LEAP", "LEAP_LAGS", "SIGNAL_FEATURES", "Signal", "SignalFeaturizer", "as_signed", "field_values",
           "find_coarse_fields", "find_signals", "fit_signals", "fit_statistics", "max_changes", "payload_words",
           "segment_fields", "signal_values", "signals_from_dicts", "signals_to_dicts", "value_trend", "write_field",
           "words_to_bytes"]
