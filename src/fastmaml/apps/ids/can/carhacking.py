"""HCRL Car-Hacking CSV captures (no header; ``Timestamp,ID,DLC,DATA...,Flag`` with T = injected)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fastmaml.apps.ids.can.capture import (HEX_DIGITS, CaptureReader, LineError, Row, fast_times, parse_hex_id,
                                           parse_time)
from fastmaml.apps.ids.can.frames import BENIGN, FrameBatch


# ===================================================================== Car-Hacking
def carhacking_attack_name(path: str | Path) -> str:
    """Attack name from an HCRL file name: ``DoS_dataset.csv`` -> ``dos``, ``gear_dataset.csv`` -> ``gear``."""
    stem = Path(path).stem.lower()
    for suffix in ("_dataset", "-dataset", "_attack", "_data"):
        stem = stem.replace(suffix, "")
    return stem or "attack"


class CarHackingReader(CaptureReader):
    """HCRL Car-Hacking CSV: ``ts,ID,DLC,b0..b{DLC-1},Flag``; T = injected (``attack``), R = benign."""

    format_name = "HCRL Car-Hacking CSV"

    def __init__(self, path: str | Path, attack: str | None = None, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.attack = (attack or carhacking_attack_name(self.path)).lower()

    def _chunks(self) -> Iterator[FrameBatch]:
        with self._open_text() as fh:
            for start, lines in self._line_chunks(fh):
                yield self._parse_chunk(start, lines)

    def _fast(self, lines: list[str]) -> FrameBatch:
        rows = [ln.split(",") for ln in lines]
        n = len(rows)
        dlc = np.array([r[2] for r in rows]).astype(np.int64)
        lens = np.fromiter((len(r) for r in rows), np.int64, n)
        if n and ((lens != dlc + 4).any() or dlc.max() > 8 or dlc.min() < 0):
            raise ValueError("dlc")
        ts = fast_times([r[0] for r in rows])
        ids = np.array([int(r[1], 16) for r in rows], np.int64)
        hexes = ["".join(r[3:-1]) for r in rows]
        if any(len(h) != 2 * d for h, d in zip(hexes, dlc.tolist())):
            raise ValueError("byte width")
        data = np.frombuffer(b"".join(bytes.fromhex(h).ljust(8, b"\0") for h in hexes), np.uint8).reshape(n, 8)
        flags = [r[-1].strip() for r in rows]
        if set(flags) - {"R", "T"}:
            raise ValueError("flag")
        ext = np.fromiter((len(r[1]) > 4 for r in rows), bool, n) | (ids > 0x7FF)
        self._fast_ids(ids, ext)
        return FrameBatch(
            ts, ids.astype(np.uint32), ext, np.zeros(n, bool), np.zeros(n, bool), dlc.astype(np.uint8),
            dlc.astype(np.uint8), data, np.array([0 if f == "R" else 1 for f in flags], np.int16),
            [BENIGN, self.attack],
        )

    def _slow(self, line: str) -> Row | None:
        r = line.split(",")
        if len(r) < 4:
            raise LineError(f"expected Timestamp,ID,DLC,data...,Flag; got {len(r)} fields (truncated line?)")
        ts = parse_time(r[0])
        can_id = parse_hex_id(r[1].strip())
        ext = len(r[1].strip()) > 4 or can_id > 0x7FF
        try:
            dlc = int(r[2])
        except ValueError:
            raise LineError(f"bad DLC {r[2]!r}") from None
        if not 0 <= dlc <= 8:
            raise LineError(f"DLC {dlc} outside 0..8")
        if len(r) != dlc + 4:
            raise LineError(f"DLC {dlc} disagrees with the {len(r) - 4} data bytes present (truncated line?)")
        toks = [t.strip() for t in r[3:-1]]
        for t in toks:
            if len(t) != 2 or any(c not in HEX_DIGITS for c in t):
                raise LineError(f"bad hex data byte {t!r}")
        flag = r[-1].strip()
        if flag not in ("R", "T"):
            raise LineError(f"flag must be R (normal) or T (injected), got {flag!r}")
        return (ts, can_id, ext, False, False, dlc, bytes(int(t, 16) for t in toks), BENIGN if flag == "R" else self.attack)
