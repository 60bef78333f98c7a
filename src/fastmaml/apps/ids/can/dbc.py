"""Signals from the car's DBC (``features.dbc``), and how well the inferred segmentation found them.

With a DBC the signals' bits are known, so :func:`read_dbc` gives their fields to
:func:`~fastmaml.apps.ids.can.signals.fit_signals` instead of the bit-flip segmentation; the
partner search, the signal features, the masquerade targets and the signal rules then work on
them unchanged. The DBC is read with cantools (``pip install cantools``), imported only here.

Bit positions follow signals.py: bit 0 is the most significant bit of payload byte 0 and a
field is ``length`` consecutive bits read as one unsigned big-endian number (the raw value; a
DBC's scale and offset are linear, so ranges, steps and partner fits on raw values are the
same up to that factor). A DBC's Motorola (big-endian) signal is such a field as it stands. An
Intel (little-endian) signal inside one byte is one too; an Intel signal over several bytes is
not (its bytes run the other way), so it is kept with ``little_endian=True``: its ``start`` then
counts in the payload read as one little-endian number (byte 7 first), where it is contiguous
again. A signed signal is such a field read as a two's-complement number (``signed``). Floating-point and
multiplexed signals, and bits beyond the first 8 bytes, have no such field; they are left out and
listed with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from fastmaml.errors import DataError

MATCH_BITS = 2  # an inferred signal "finds" a DBC signal when both its ends lie within this many bits


class Field(NamedTuple):
    """One DBC signal's bits in the signals.py convention (see the module doc)."""

    can_id: int
    start: int
    length: int
    little_endian: bool
    label: str  # Message.Signal
    signed: bool = False  # a two's-complement number


def _cantools() -> Any:
    try:
        import cantools
    except ImportError:
        raise DataError("features.dbc needs cantools to read the DBC: pip install cantools "
                        "(or pip install 'fastmaml[ids]')") from None
    return cantools


def to_field(can_id: int, start: int, length: int, byte_order: str, label: str = "", signed: bool = False) -> Field:
    """A DBC signal's ``start|length@order`` (cantools numbering) as a Field; ValueError if it leaves 8 bytes."""
    if byte_order == "big_endian":
        # DBC Motorola start = the signal's most significant bit, numbered byte * 8 + bit (bit 0 = LSB).
        msb = start // 8 * 8 + 7 - start % 8
        f = Field(can_id, msb, length, False, label, signed)
    elif start // 8 == (start + length - 1) // 8:
        # Intel inside one byte: DBC start = its least significant bit; the same bits read big-endian.
        f = Field(can_id, start // 8 * 8 + 8 - start % 8 - length, length, False, label, signed)
    else:
        # Intel over several bytes: in the payload read little-endian, LSB-0 bits [start, start + length).
        f = Field(can_id, 64 - start - length, length, True, label, signed)
    if f.start < 0 or f.start + f.length > 64:
        raise ValueError("lies beyond the first 8 payload bytes")
    return f


def read_dbc(path: str | Path) -> tuple[list[Field], list[str]]:
    """The fields of ``path``'s signals, and one ``"Message.Signal: why"`` line per signal left out.

    DataError naming the file when it is missing or not a DBC, or naming ``pip install cantools``.
    """
    cantools = _cantools()
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"features.dbc: DBC file {p} not found")
    try:
        db = cantools.database.load_file(str(p), database_format="dbc", strict=False)
    except (cantools.database.Error, OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"features.dbc: cannot read {p} as a DBC file ({e})") from e
    fields: list[Field] = []
    skipped: list[str] = []
    for msg in db.messages:
        for s in msg.signals:
            label = f"{msg.name}.{s.name}"
            why = ("floating point" if s.is_float else
                   "multiplexed" if s.multiplexer_ids or s.is_multiplexer else "")
            if not why:
                try:
                    fields.append(to_field(int(msg.frame_id), int(s.start), int(s.length), s.byte_order, label,
                                           bool(s.is_signed)))
                    continue
                except ValueError as e:
                    why = str(e)
            skipped.append(f"{label}: {why}")
    if not fields:
        raise DataError(f"features.dbc: {p} holds no signal the IDS can read (integer, not multiplexed, "
                        f"in the first 8 bytes); left out: {skipped[:5]}")
    return fields, skipped


@dataclass
class SegmentationScore:
    """The inferred segmentation (no DBC) against the DBC's signals on the same clean frames.

    Counted over the DBC signals the IDS keeps (physical: >= 8 values, smooth; see signals.py)
    and over the inferred signals on IDs the DBC describes (other IDs cannot be judged).
    """

    dbc_signals: int
    found: int  # DBC signals with an inferred signal whose both ends lie within match_bits
    exact: int  # ... with exactly its bits
    inferred: int
    spurious: int  # inferred signals that find none of those DBC signals (a signed one read as unsigned too)
    match_bits: int = MATCH_BITS
    missed: list[str] = field(default_factory=list)  # labels of the DBC signals not found

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"inferred segmentation found {self.found} of {self.dbc_signals} DBC signals (both ends within "
                f"{self.match_bits} bits), {self.exact} exactly; {self.spurious} of its {self.inferred} signals "
                "match none")


def _close(a: Any, b: Any, tol: int) -> bool:
    return (a.can_id == b.can_id and bool(getattr(a, "little_endian", False)) == bool(b.little_endian)
            and abs(a.start - b.start) <= tol and abs((a.start + a.length) - (b.start + b.length)) <= tol)


def score_segmentation(inferred: list[Any], dbc: list[Any], tol: int = MATCH_BITS) -> SegmentationScore:
    """Score ``inferred`` signals against ``dbc`` ones (anything with can_id, start, length, little_endian)."""
    ids = {d.can_id for d in dbc}
    mine = [s for s in inferred if s.can_id in ids]
    found = [any(_close(s, d, tol) for s in mine) for d in dbc]
    exact = [any(_close(s, d, 0) for s in mine) for d in dbc]
    spurious = [s for s in mine if not any(_close(s, d, tol) for d in dbc)]
    return SegmentationScore(len(dbc), sum(found), sum(exact), len(mine), len(spurious), tol,
                             [getattr(d, "label", "") or f"0x{d.can_id:X}[{d.start}:{d.start + d.length}]"
                              for d, f in zip(dbc, found) if not f])


__all__ = ["MATCH_BITS", "Field", "SegmentationScore", "read_dbc", "score_segmentation", "to_field"]
