"""Streaming readers for CAN captures, yielding ``FrameBatch`` chunks.

Formats:
    * ``cic``: CICIoV2024 decimal CSV (``ID,DATA_0..DATA_7,label,category,specific_class``),
      plain or straight from the ``.zip`` (``__MACOSX/`` entries ignored). No timestamps.
    * ``carhacking``: HCRL Car-Hacking CSV, no header, ``Timestamp,ID(hex),DLC,DATA...,Flag``.
    * ``candump``: can-utils ``candump`` text, log-file form (``-l`` / ``-L``) and console form
      (``-ta``/``-td``/``-tz``/no timestamps, ``-x`` direction columns tolerated).
    * ``pythoncan``: anything ``can.LogReader`` opens (ASC, BLF, TRC, python-can CSV, ...).
    * ``daga``: DAGA CAN dataset CSV, plain or zipped (``daga.py``).
    * ``csv``: any labelled CSV export, columns mapped by name or auto-detected (``csv_columns.py``).

Every reader reports ``stats`` (a ``ReadStats``: frames read, lines skipped and why).
A malformed line raises ``DataError`` naming file, line and problem; with
``skip_malformed=True`` it is skipped and counted instead, never dropped silently. Damage
(NUL bytes, a lone CR, bytes that are not UTF-8, 'nan'/'inf' timestamps, a repeated header,
an overlong line) is such a malformed line; a cut or corrupt zip is a DataError naming the
file. No reader lets a raw Python exception (csv.Error, zipfile.BadZipFile, ...) escape.
An empty file (no bytes, or a CICIoV2024 header only) yields zero frames and reports
``frames_read == 0``; a file that is not the format at all (no valid first line) raises.

Text readers parse a chunk of lines with a vectorized fast path and, only when that fails,
re-parse the chunk line by line to find and report (or skip) the bad line; so the common
case stays fast and the error case stays precise.

Identifiers out of range for their width (an 11-bit ``0xFFF``, a 29-bit value above
``0x1FFFFFFF``) occur in real logs. ``bad_id`` chooses what happens: ``error`` (default; a
DataError naming file, line and the option, or a counted skip under ``skip_malformed``),
``skip`` (drop the frame, count it in ``stats``; side label files stay aligned because the
dropped frame's label is dropped too) or ``keep`` (keep the frame as read: ``can_id`` holds
the value, ``is_extended`` the width the format says). ``reader.bad_ids`` counts such frames.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fastmaml.apps.ids.can.candump import CandumpReader, load_label_file
from fastmaml.apps.ids.can.carhacking import CarHackingReader, carhacking_attack_name
from fastmaml.apps.ids.can.capture import (BAD_ID_POLICIES, ZIP_MAGIC, CaptureReader, LineError, Row,
                                           id_out_of_range, open_zip_member, rows_to_batch)
from fastmaml.apps.ids.can.csv_columns import ColumnCsvReader, header_auto_maps
from fastmaml.apps.ids.can.daga import DAGA_HEADER, DagaReader
from fastmaml.apps.ids.can.frames import BENIGN, FD_MAX, FrameBatch
from fastmaml.errors import DataError

CIC_HEADER = ["ID", *[f"DATA_{i}" for i in range(8)], "label", "category", "specific_class"]

# ====================================================================== CICIoV2024
def cic_label(specific_class: str) -> str:
    """CICIoV2024 ``specific_class`` to fastmaml label: BENIGN -> benign, else lower case."""
    s = specific_class.strip()
    return BENIGN if s.upper() == "BENIGN" else s.lower()


class CicIov2024Reader(CaptureReader):
    """CICIoV2024 decimal CSV (or .zip holding one). Label = ``specific_class``; no timestamps."""

    format_name = "CICIoV2024 decimal CSV"
    zip_members = (".csv",)

    def _chunks(self) -> Iterator[FrameBatch]:
        return self._header_csv_chunks(CIC_HEADER, "CICIoV2024 decimal CSV")

    def _fast(self, lines: list[str]) -> FrameBatch:
        n = len(lines)
        if any(ln.count(",") != 11 for ln in lines):
            raise ValueError("column count")
        rows = [ln.rsplit(",", 3) for ln in lines]
        # One flat int conversion is ~5x faster than a 2-D string array; bad integers raise.
        nums = np.array(",".join([r[0] for r in rows]).split(","), dtype=np.int64).reshape(n, 9)
        if n and (nums[:, 1:].min() < 0 or nums[:, 1:].max() > 255):
            raise ValueError("range")
        self._fast_ids(nums[:, 0], nums[:, 0] > 0x7FF)
        labels = [r[3] for r in rows]
        names = sorted(set(labels))
        if any(not x.strip() for x in names):
            raise ValueError("empty label")
        mapped = [cic_label(x) for x in names]
        uniq = list(dict.fromkeys(mapped))
        code = {x: uniq.index(cic_label(x)) for x in names}
        can_id = nums[:, 0].astype(np.uint32)
        return FrameBatch(
            np.full(n, np.nan), can_id, can_id > 0x7FF, np.zeros(n, bool), np.zeros(n, bool),
            np.full(n, 8, np.uint8), np.full(n, 8, np.uint8), nums[:, 1:].astype(np.uint8),
            np.array([code[x] for x in labels], np.int16), uniq,
        )

    def _slow(self, line: str) -> Row | None:
        r = line.split(",")
        if len(r) != 12:
            raise LineError(f"expected 12 comma-separated fields, got {len(r)} (truncated line?)")
        try:
            vals = [int(x) for x in r[:9]]
        except ValueError:
            raise LineError("ID and DATA_0..DATA_7 must be decimal integers") from None
        if vals[0] < 0:
            raise LineError(f"ID {vals[0]} is negative")
        if any(not 0 <= v <= 255 for v in vals[1:]):
            raise LineError("data byte outside 0..255")
        if not r[11].strip():
            raise LineError("empty specific_class")
        return (np.nan, vals[0], vals[0] > 0x7FF, False, False, 8, bytes(vals[1:]), cic_label(r[11]))


# ======================================================================== python-can
class PythonCanReader(CaptureReader):
    """Any format ``can.LogReader`` opens (ASC, BLF, TRC, python-can CSV, MF4, SQLite).

    python-can reports no line numbers; a parse failure raises DataError naming the file and
    the frame index reached. Error frames are skipped and counted. A message python-can decodes
    but no CAN frame can be (over 64 data bytes, a non-finite timestamp) is a malformed frame:
    DataError naming file and frame, or skipped and counted with ``skip_malformed``. A non-empty
    file giving zero frames raises DataError. Limitation: python-can itself stops quietly at a truncated
    BLF and only logs a warning for a bad TRC line, so those cases cannot be counted here.
    """

    format_name = "python-can"

    def __init__(self, path: str | Path, labels: str | Path | None = None, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.labels_path = labels

    def _chunks(self) -> Iterator[FrameBatch]:
        try:
            import can
        except ImportError as e:  # pragma: no cover - depends on the install
            raise DataError(f"{self.path}: reading this format needs python-can; pip install 'fastmaml[ids]'") from e
        side = load_label_file(self.labels_path) if self.labels_path is not None else None
        rows: list[Row] = []
        k = 0
        offset = 0
        self._dropped = []

        def flush() -> FrameBatch:
            nonlocal offset
            b = rows_to_batch(rows)
            slots = len(b) + len(self._dropped)
            if side is not None:
                if offset + slots > len(side[0]):
                    raise DataError(f"{self.labels_path}: fewer labels than frames in {self.path}")
                b.label, b.label_names = np.delete(side[0][offset: offset + slots], self._dropped), list(side[1])
            offset += slots
            rows.clear()
            self._dropped = []
            return b

        try:
            reader = can.LogReader(str(self.path))
            with reader:
                for msg in reader:
                    k += 1
                    if msg.is_error_frame:
                        self.stats.skip(f"frame {k}: error frame")
                        continue
                    # python-can takes some damaged records as frames (a TRC line made a 21 kB payload).
                    problem = _message_problem(msg)
                    if problem:
                        if not self.skip_malformed:
                            raise DataError(f"{self.path}: frame {k}: {problem} ({self.format_name} format); the "
                                            "file is damaged there: pass skip_malformed=True (source.skip_malformed: "
                                            "true in a config) to skip and count such frames")
                        self.stats.skip(f"frame {k}: {problem}")
                        self._dropped.append(len(rows) + len(self._dropped))  # its label goes with it
                        continue
                    row: Row = (
                        float(msg.timestamp), int(msg.arbitration_id), bool(msg.is_extended_id),
                        bool(msg.is_remote_frame), bool(msg.is_fd), int(msg.dlc), bytes(msg.data), None,
                    )
                    if id_out_of_range(row[1], row[2]) and not self._keep_bad_id(
                            f"frame {k}", row[1], row[2], str(msg), len(rows)):
                        continue
                    rows.append(row)
                    if len(rows) >= self.chunk_size:
                        yield flush()
            if rows or self._dropped:  # a dropped last frame still owns a label
                yield flush()
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - python-can raises many kinds on corrupt input
            raise DataError(
                f"{self.path}: python-can could not parse the capture after {k} frames: {type(e).__name__}: {e}; "
                "check the file is a complete capture of the format its extension says"
            ) from e
        if k == 0 and self.path.stat().st_size > 0:
            # python-can returns nothing (no error) for some garbage files; never report that as "empty".
            raise DataError(
                f"{self.path}: python-can found no frames in a non-empty file ({self.path.stat().st_size} bytes); "
                "the file is corrupt, not of the format its extension says, or holds only a header"
            )
        if side is not None and offset != len(side[0]):
            raise DataError(f"{self.labels_path}: has {len(side[0])} labels but {self.path} has {offset} frames")


def _message_problem(msg: Any) -> str:
    """Why a python-can message cannot be a frame ('' when it can)."""
    if not math.isfinite(msg.timestamp):
        return f"timestamp {msg.timestamp} is not a finite number"
    if len(msg.data) > FD_MAX:
        return f"{len(msg.data)} data bytes exceed {FD_MAX}"
    if not 0 <= msg.dlc <= FD_MAX:
        return f"DLC {msg.dlc} outside 0..{FD_MAX}"
    return ""


# ===================================================================== auto-detect
_PYTHONCAN_EXT = {".asc", ".blf", ".trc", ".mf4", ".db", ".sqlite"}
_CH_LINE = re.compile(r"^\d+(\.\d+)?,[0-9a-fA-F]{1,8},\d+,")


# Every capture format by name, listed once: ``open_capture`` picks from it, messages name its keys.
_READERS: dict[str, type[CaptureReader]] = {
    "cic": CicIov2024Reader, "carhacking": CarHackingReader, "candump": CandumpReader,
    "pythoncan": PythonCanReader, "daga": DagaReader, "csv": ColumnCsvReader}
_FORMATS = tuple(_READERS)


def _zip_format(path: Path) -> str:
    """A zip's format from the first line of its single data member (``cic`` when that is unclear)."""
    # Imported here: daga.py and csv_columns.py build on this module's CaptureReader.

    try:
        fh = open_zip_member(path, (".csv", ".txt", ".tsv"))
    except DataError:
        return "cic"  # its reader reports the member problem
    with fh:
        first = fh.readline(4096).decode("utf-8", "replace").lstrip("\ufeff").strip()
    if not first or first.startswith("ID,DATA_0"):
        return "cic"
    if first.replace(" ", "") == ",".join(DAGA_HEADER):
        return "daga"
    if header_auto_maps(first):
        return "csv"
    raise DataError(
        f"{path}: cannot tell the format of the CSV inside the zip from its header {first[:80]!r}; "
        f"pass format='csv' with a column map (columns=...), or one of {', '.join(_FORMATS)}"
    )


def detect_format(path: str | Path) -> str:
    """One of ``cic``, ``carhacking``, ``candump``, ``pythoncan``, ``daga``, ``csv`` from extension and first line.

    A zip is judged by the first line of its single CSV/TXT member. A CSV whose header the
    column-mapped reader can map on its own is ``csv``, checked after every named format.
    """

    path = Path(path)
    if not path.is_file():
        raise DataError(f"capture {path} not found; check the path")
    ext = path.suffix.lower()
    if ext in _PYTHONCAN_EXT:
        return "pythoncan"
    if zipfile.is_zipfile(path):
        return _zip_format(path)
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(ZIP_MAGIC):  # is_zipfile failed: the directory at its end is gone
        raise DataError(f"{path}: a truncated or damaged zip archive; download or copy it again")
    if head.startswith(b"LOGG"):
        return "pythoncan"  # BLF with another extension
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace").lstrip("\ufeff").strip()
    if not first:
        if ext == ".csv":
            return "cic" if "cic" in path.name.lower() or "decimal" in path.name.lower() else "carhacking"
        return "candump"
    if first.startswith("ID,DATA_0"):
        return "cic"
    if first.lower().startswith("timestamp,arbitration_id,extended"):
        return "pythoncan"  # python-can's own CSV; other "timestamp,arbitration_id,..." exports are csv
    if first.replace(" ", "") == ",".join(DAGA_HEADER):
        return "daga"
    if _CH_LINE.match(first):
        return "carhacking"
    if first.startswith("(") or re.match(r"^\s*\w+\s+[0-9A-Fa-f]{3,8}\s+\[\d+\]", first):
        return "candump"
    if header_auto_maps(first):
        return "csv"
    if ext in (".log", ".txt", ".candump"):
        return "candump"
    raise DataError(
        f"{path}:1: cannot tell the capture format from {first[:80]!r}; pass format= one of {', '.join(_FORMATS)} "
        "(format='csv' with a column map reads any labelled CSV export)"
    )


def open_capture(path: str | Path, format: str = "auto", **kw: Any) -> CaptureReader:
    """A reader for ``path``. ``format`` is ``auto`` or one of ``cic``, ``carhacking``, ``candump``,
    ``pythoncan``, ``daga``, ``csv``.

    Extra keywords go to the reader (``chunk_size``, ``skip_malformed``, ``bad_id``, ``labels``,
    ``attack``, ``columns`` for ``csv`` ...).
    """

    fmt = detect_format(path) if format == "auto" else format
    if fmt not in _READERS:
        raise DataError(f"unknown capture format {format!r}; use one of auto, {', '.join(_FORMATS)}")
    try:
        return _READERS[fmt](path, **kw)
    except TypeError as e:
        if "unexpected keyword" not in str(e):
            raise
        # e.g. columns= for a file detected as candump: say which format took the call
        raise DataError(f"{path}: the {fmt} reader does not take that option ({e}); "
                        "check the format (pass format=... explicitly) or drop the option") from e


def read_capture(path: str | Path, format: str = "auto", **kw: Any) -> FrameBatch:
    """Whole capture as one FrameBatch (convenience for small files)."""
    return open_capture(path, format, **kw).read_all()


__all__ = [
    "BAD_ID_POLICIES", "CaptureReader", "CicIov2024Reader", "CarHackingReader", "CandumpReader", "PythonCanReader",
    "open_zip_member",
    "open_capture", "read_capture", "detect_format", "load_label_file", "cic_label", "carhacking_attack_name",
]
