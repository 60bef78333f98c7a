"""Reader for the DAGA CAN dataset (Volvo V40 traces, SECloud UNIMORE), plain or zipped.

Each file is a CSV with the header ``timestamp,CAN_ID,DLC,PAYLOAD_HEX,PAYLOAD_BIN,ANOMALY``,
usually as the single member ``<name>.can.txt`` of a ``.zip`` (read straight from the zip, streamed).
The quirks of the real files, and what this reader does with them:

* ``timestamp``: seconds from trace start as float text with float noise (``0.7200019999999999``,
  ``9e-06``); read as float64, unchanged.
* ``CAN_ID``: an 11-bit ID in hex, no ``0x``, no zero padding (``8``, ``1D0``). Some injected rows
  write it as float text (``1.0``, ``290.0``): a trailing ``.0`` is stripped and the rest read as
  hex, so ``290.0`` is ``0x290`` (an ID of the clean traffic), never decimal 290. IDs above
  ``0x7FF`` are out of range (the traces are 11-bit) and handled by ``bad_id``.
* ``DLC``: ``64`` on every row: a bit count, although the dataset README says bytes. The byte
  length is ``DLC // 8`` (8); any multiple of 8 up to 64 is accepted, anything else is an error.
* ``PAYLOAD_HEX``: the payload as a hex number. 16 digits normally; one file writes the all-zero
  payload as ``0``. A shorter value is left-padded with zeros to the ``DLC // 8`` bytes, so ``0``
  reads as 8 zero bytes (it is a number, so padding on the left keeps its value). More digits than
  the DLC allows is an error. ``PAYLOAD_BIN`` repeats the payload in binary and is ignored.
* ``ANOMALY``: ``FALSE``/``False``/``false`` -> benign, ``TRUE``/``True``/``true`` -> the attack.
  The attack name comes from ``attack=`` or from the path (``daga_attack_name``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fastmaml.apps.ids.can.frames import BENIGN, FrameBatch
from fastmaml.apps.ids.can.capture import (CaptureReader, LineError, Row, fast_times, is_digits, parse_hex_id,
                                           parse_time)
from fastmaml.errors import DataError

DAGA_HEADER = ["timestamp", "CAN_ID", "DLC", "PAYLOAD_HEX", "PAYLOAD_BIN", "ANOMALY"]
_HEX_CHARS = frozenset("0123456789abcdefABCDEF")
_FAST_LABEL = {"FALSE": 0, "False": 0, "false": 0, "TRUE": 1, "True": 1, "true": 1}
# The dataset's attack folders; anything else CamelCase is turned into snake_case.
_ATTACK_DIRS = {
    "denialofservice": "dos",
    "singleidreplay": "single_id_replay",
    "orderedsequencereplay": "ordered_sequence_replay",
    "arbitrarysequencereplay": "arbitrary_sequence_replay",
    "unorderedsequencereplay": "unordered_sequence_replay",
    "messageidfuzzing": "message_id_fuzzing",
    "payloadfuzzing": "payload_fuzzing",
}
_CAMEL = re.compile(r"^(?:[A-Z][A-Za-z0-9]*){2,}$")


def _snake(name: str) -> str:
    """``SingleIDReplay`` -> ``single_id_replay``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def daga_attack_name(path: str | Path) -> str:
    """Attack name from a DAGA path: ``infected/SingleIDReplay/ID_8_V40_03.can.zip`` -> ``single_id_replay``.

    Looks at the file's folder, then the file name, for a known DAGA attack (``DenialOfService`` ->
    ``dos``); else a CamelCase folder becomes snake_case; else ``attack`` (e.g. the clean trace,
    which has no attack rows anyway). Pass ``attack=`` to the reader to choose the name yourself.
    """
    p = Path(path)
    folder = p.parent.name
    for text in (folder, p.name):
        key = re.sub(r"[^a-z0-9]", "", text.lower())
        for k, v in _ATTACK_DIRS.items():
            if k in key:
                return v
    if _CAMEL.match(folder) and folder.lower() not in ("clean", "infected"):
        return _snake(folder)
    return "attack"


class DagaReader(CaptureReader):
    """DAGA CAN CSV (or a .zip holding one). Labels: ``ANOMALY`` False -> benign, True -> ``attack``.

    Args:
        attack: name for the injected frames; default ``daga_attack_name(path)``.
    """

    format_name = "DAGA CSV"
    zip_members = (".txt", ".csv")

    def __init__(self, path: str | Path, attack: str | None = None, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.attack = (attack or daga_attack_name(self.path)).strip().lower()
        if not self.attack or self.attack == BENIGN:
            raise DataError(f"attack name {attack!r} for {self.path} must be a non-empty name other than {BENIGN!r}")

    def _chunks(self) -> Iterator[FrameBatch]:
        return self._header_csv_chunks(DAGA_HEADER, "DAGA CSV",
                                       " (for other CSV layouts use format='csv' with a column map)")

    def _fast(self, lines: list[str]) -> FrameBatch:
        lines = lines if all(lines) else [ln for ln in lines if ln]  # e.g. a blank last line
        n = len(lines)
        if any(ln.count(",") != 5 for ln in lines):
            raise ValueError("column count")
        # One join+split gives every field; column k of row i is f[6 * i + k].
        f = ",".join(lines).split(",")
        ts = fast_times(f[0::6])
        id_tok = [t[:-2] if t.endswith(".0") else t for t in f[1::6]]
        if not all(id_tok) or not set("".join(id_tok)) <= _HEX_CHARS:
            raise ValueError("id")
        ids = np.array([int(t, 16) for t in id_tok], np.int64)
        if set(f[2::6]) != {"64"}:
            raise ValueError("dlc")  # other bit counts: precise path
        hexes = f[3::6]
        if any(len(h) != 16 for h in hexes):
            hexes = [h.rjust(16, "0") if h else "" for h in hexes]
        # fromhex skips whitespace, so a stray space shows up as a short result.
        data = np.frombuffer(bytes.fromhex("".join(hexes)), np.uint8)
        if data.size != 8 * n or any(len(h) != 16 for h in hexes):
            raise ValueError("payload")
        label = np.array([_FAST_LABEL[x] for x in f[5::6]], np.int16)
        ext = np.zeros(n, bool)
        self._fast_ids(ids, ext)
        return FrameBatch(
            ts, ids.astype(np.uint32), ext, np.zeros(n, bool), np.zeros(n, bool), np.full(n, 8, np.uint8),
            np.full(n, 8, np.uint8), data.reshape(n, 8).copy(), label, [BENIGN, self.attack],
        )

    def _slow(self, line: str) -> Row | None:
        r = [x.strip() for x in line.split(",")]
        if len(r) != 6:
            raise LineError(f"expected 6 comma-separated fields ({','.join(DAGA_HEADER)}), got {len(r)} "
                             "(truncated line?)")
        ts_s, id_s, dlc_s, hx, _bits, lab = r
        ts = parse_time(ts_s)
        can_id = parse_hex_id(id_s[:-2] if id_s.endswith(".0") else id_s, "CAN_ID")
        if not is_digits(dlc_s) or int(dlc_s) % 8 or int(dlc_s) > 64:
            raise LineError(f"DLC {dlc_s!r} is not a bit count 0..64 in steps of 8 (DAGA files have 64)")
        nbytes = int(dlc_s) // 8
        if (not hx and nbytes) or len(hx) > 2 * nbytes or any(c not in _HEX_CHARS for c in hx):
            raise LineError(f"bad PAYLOAD_HEX {hx!r}: expected up to {2 * nbytes} hex digits for DLC {dlc_s} bits")
        data = bytes.fromhex(hx.rjust(2 * nbytes, "0"))
        low = lab.lower()
        if low not in ("true", "false"):
            raise LineError(f"ANOMALY must be True or False, got {lab!r}")
        return (ts, can_id, False, False, False, nbytes, data, self.attack if low == "true" else BENIGN)


__all__ = ["DAGA_HEADER", "DagaReader", "daga_attack_name"]
