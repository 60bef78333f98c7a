"""The capture-reader base class and the line-parsing helpers every CAN text format shares.

See :mod:`fastmaml.apps.ids.can.readers` for the formats and ``open_capture``.
"""

from __future__ import annotations

import itertools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from fastmaml.apps.ids.can.frames import CanFrame, FrameBatch, ReadStats
from fastmaml.errors import DataError

DEFAULT_CHUNK = 65536
HEX_DIGITS = set("0123456789abcdefABCDEF")


BAD_ID_POLICIES = ("error", "skip", "keep")


class LineError(Exception):
    """A problem with one line; turned into DataError (with file and line) or a counted skip."""


# One parsed frame: (timestamp, can_id, is_ext, is_remote, is_fd, dlc, data, label-or-None)
Row = tuple[float, int, bool, bool, bool, int, bytes, "str | None"]


def rows_to_batch(rows: list[Row]) -> FrameBatch:
    return FrameBatch.from_frames(CanFrame(*r) for r in rows)


def check_text(line: str) -> None:
    if "\x00" in line or "\ufffd" in line:
        raise LineError("binary (non-text) content; is this really a text capture?")


def parse_hex_id(tok: str, what: str = "CAN ID") -> int:
    if not tok or any(c not in HEX_DIGITS for c in tok):
        raise LineError(f"bad hex {what} {tok!r}")
    return int(tok, 16)


def id_out_of_range(can_id: int, ext: bool) -> bool:
    return can_id > (0x1FFFFFFF if ext else 0x7FF)


def id_problem(can_id: int, ext: bool) -> str:
    return f"CAN ID 0x{can_id:X} out of range for a {'29' if ext else '11'}-bit identifier"


def open_zip_member(path: Path, exts: tuple[str, ...] = (".csv",), what: str = ".csv") -> IO[bytes]:
    """The single data file inside a zip (``__MACOSX/`` and folders ignored), opened for streaming."""
    zf = zipfile.ZipFile(path)
    members = [
        m for m in zf.namelist()
        if not m.startswith("__MACOSX/") and not m.endswith("/") and m.lower().endswith(exts)
    ]
    if len(members) != 1:
        zf.close()
        raise DataError(
            f"{path}: expected exactly one {what} in the zip (ignoring __MACOSX/), found {members}; "
            "extract the wanted file and open it directly"
        )
    return zf.open(members[0])


class CaptureReader:
    """Base class: iterate to get ``FrameBatch`` chunks; ``stats`` counts what happened."""

    format_name = "?"

    def __init__(self, path: str | Path, *, chunk_size: int = DEFAULT_CHUNK, skip_malformed: bool = False,
                 bad_id: str = "error") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"capture {self.path} not found; check the path")
        if chunk_size < 1:
            raise DataError(f"chunk_size must be >= 1, got {chunk_size}")
        if bad_id not in BAD_ID_POLICIES:
            raise DataError(f"bad_id must be one of {', '.join(BAD_ID_POLICIES)}, got {bad_id!r}")
        self.chunk_size = chunk_size
        self.skip_malformed = skip_malformed
        self.bad_id = bad_id
        self.bad_ids = 0  # frames whose ID was out of range (kept, skipped or reported)
        self.stats = ReadStats(source=str(self.path))
        # Positions (within the current chunk's frame sequence, dropped ones included) of frames
        # dropped for their ID, so readers applying side labels by frame index can drop those too.
        self._dropped: list[int] = []

    def __iter__(self) -> Iterator[FrameBatch]:
        self.stats = ReadStats(source=str(self.path))
        self.bad_ids = 0
        for batch in self._chunks():
            self.stats.frames_read += len(batch)
            if len(batch):
                yield batch

    def _chunks(self) -> Iterator[FrameBatch]:  # pragma: no cover - abstract
        raise NotImplementedError

    def frames(self) -> Iterator[CanFrame]:
        """Frame records one by one (slow; for small captures and debugging)."""
        for batch in self:
            yield from batch

    def read_all(self) -> FrameBatch:
        """Whole capture as one batch (mind the memory on big files)."""
        return FrameBatch.concat(list(self))

    # -- helpers for text formats ------------------------------------------------
    def _fail(self, line_no: int, msg: str, line: str) -> None:
        shown = line if len(line) <= 120 else line[:117] + "..."
        if self.skip_malformed:
            self.stats.skip(f"line {line_no}: {msg}")
            return
        raise DataError(
            f"{self.path}:{line_no}: {msg}: {shown!r} ({self.format_name} format). "
            "Fix or delete the line, or pass skip_malformed=True to skip and count such lines"
        )

    def _header_csv_chunks(self, header: list[str], what: str, hint: str = "") -> Iterator[FrameBatch]:
        """Chunks of a CSV with a fixed header line (CICIoV2024, DAGA); DataError naming the file otherwise."""
        with self._open_text() as fh:
            first = fh.readline()
            if not first:
                return  # empty file: zero frames
            head = first.decode("utf-8", "replace").lstrip("\ufeff").strip()
            if [h.strip() for h in head.split(",")] != header:
                raise DataError(f"{self.path}:1: not a {what} header: {head[:120]!r}; expected {','.join(header)}{hint}")
            for start, lines in self._line_chunks(fh, 2):
                yield self._parse_chunk(start, lines)

    def _open_text(self) -> IO[bytes]:
        return open(self.path, "rb")

    def _line_chunks(self, fh: IO[bytes], first_line_no: int = 1) -> Iterator[tuple[int, list[str]]]:
        """Chunks of decoded lines (newline stripped), with the number of the first line."""
        line_no = first_line_no
        while True:
            raw = list(itertools.islice(fh, self.chunk_size))
            if not raw:
                return
            # 'replace' keeps line numbering intact; the per-line path reports U+FFFD as binary.
            lines = [r.decode("utf-8", "replace").rstrip("\r\n") for r in raw]
            yield line_no, lines
            line_no += len(lines)

    def _parse_chunk(self, start: int, lines: list[str]) -> FrameBatch:
        self._dropped = []
        seen = self.bad_ids
        try:
            return self._fast(lines)
        except Exception:  # noqa: BLE001 - any failure sends the chunk to the precise path
            self.bad_ids = seen  # the precise path counts them again
            rows: list[Row] = []
            for k, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    check_text(line)
                    row = self._slow(line)
                except LineError as e:
                    self._fail(start + k, str(e), line)
                    continue
                if row is None:
                    continue
                if row[1] > 0xFFFFFFFF:
                    self._fail(start + k, f"CAN ID {row[1]:#x} does not fit in 32 bits", line)
                    continue
                # Checked after the whole line parsed, so a garbled line is reported as such.
                if id_out_of_range(row[1], row[2]) and not self._keep_bad_id(
                        f"line {start + k}", row[1], row[2], line, len(rows)):
                    continue
                rows.append(row)
            return rows_to_batch(rows) if rows else FrameBatch.empty()

    def _keep_bad_id(self, where: str, can_id: int, ext: bool, line: str, n_kept: int) -> bool:
        """Apply ``bad_id`` to one out-of-range frame: True keeps it, False drops it (or raises)."""
        self.bad_ids += 1
        if self.bad_id == "keep":
            return True
        msg = id_problem(can_id, ext)
        if self.bad_id == "error" and not self.skip_malformed:
            shown = line if len(line) <= 120 else line[:117] + "..."
            loc = f":{where[5:]}" if where.startswith("line ") else f": {where}"
            raise DataError(
                f"{self.path}{loc}: {msg}: {shown!r} ({self.format_name} format). "
                "Pass bad_id='skip' to drop such frames (counted) or bad_id='keep' to keep them as read"
            )
        self.stats.skip(f"{where}: {msg} (bad_id={self.bad_id!r})")
        self._dropped.append(n_kept + len(self._dropped))
        return False

    def _fast_ids(self, ids: np.ndarray, ext: np.ndarray) -> None:
        """Fast-path ID check: out-of-range IDs are kept under ``keep``, else sent to the precise path."""
        if len(ids) and (ids.min() < 0 or ids.max() > 0xFFFFFFFF):
            raise ValueError("id sign or width")
        bad = ids > np.where(ext, 0x1FFFFFFF, 0x7FF)
        if bad.any():
            if self.bad_id != "keep":
                raise ValueError("id range")
            self.bad_ids += int(bad.sum())

    def _fast(self, lines: list[str]) -> FrameBatch:  # pragma: no cover - abstract
        raise NotImplementedError

    def _slow(self, line: str) -> Row | None:  # pragma: no cover - abstract
        raise NotImplementedError
