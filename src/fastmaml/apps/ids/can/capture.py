"""The capture-reader base class and the line-parsing helpers every CAN text format shares.

See :mod:`fastmaml.apps.ids.can.readers` for the formats and ``open_capture``.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from fastmaml.apps.ids.can.frames import CanFrame, FrameBatch, ReadStats
from fastmaml.errors import DataError

DEFAULT_CHUNK = 65536
HEX_DIGITS = set("0123456789abcdefABCDEF")
# Characters no text capture holds inside a line: C0 controls but tab (NUL, a lone CR, ...),
# DEL, and U+FFFD from bytes that are not UTF-8. They mark a damaged or binary file.
_NOT_TEXT_CHARS = (*map(chr, range(0x09)), *map(chr, range(0x0A, 0x20)), "\x7f", "\ufffd")
_NOT_TEXT = re.compile("[" + re.escape("".join(_NOT_TEXT_CHARS)) + "]")
ZIP_MAGIC = b"PK\x03\x04"


BAD_ID_POLICIES = ("error", "skip", "keep")


class LineError(Exception):
    """A problem with one line; turned into DataError (with file and line) or a counted skip."""


# One parsed frame: (timestamp, can_id, is_ext, is_remote, is_fd, dlc, data, label-or-None)
Row = tuple[float, int, bool, bool, bool, int, bytes, "str | None"]


def rows_to_batch(rows: list[Row]) -> FrameBatch:
    return FrameBatch.from_frames(CanFrame(*r) for r in rows)


def shorten(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters (messages quote lines and values that may be huge)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_text(line: str) -> None:
    """LineError when ``line`` holds characters no text capture has (see ``_NOT_TEXT``)."""
    m = _NOT_TEXT.search(line)
    if m is None:
        return
    c = m.group()
    if c == "\x00":
        raise LineError("binary (non-text) content: NUL bytes; is this really a text capture (or a damaged one)?")
    if c == "\ufffd":
        raise LineError("binary (non-text) content: bytes that are not UTF-8 text; a damaged line, "
                        "or a file in another encoding (re-save it as UTF-8)")
    if c == "\r":
        raise LineError("a lone carriage return (\\r) inside the line: a damaged line break, or old Mac "
                        "line endings (convert them to \\n)")
    raise LineError(f"binary (non-text) content: control character {c!r}")


def parse_time(tok: str, what: str = "timestamp") -> float:
    """A timestamp token as float seconds; LineError unless it is a finite number ('nan', 'inf' are not)."""
    try:
        ts = float(tok)
    except ValueError:
        raise LineError(f"bad {what} {shorten(tok, 40)!r}") from None
    if not math.isfinite(ts):
        raise LineError(f"bad {what} {shorten(tok, 40)!r}: not a finite number")
    return ts


def fast_times(toks: list[str]) -> np.ndarray:
    """Timestamp tokens as float64 for a fast path; ValueError (to the precise path) unless all are finite."""
    ts = np.array(toks, dtype=np.float64)
    if not np.isfinite(ts).all():
        raise ValueError("non-finite timestamp")
    return ts


def is_digits(tok: str) -> bool:
    """True for a non-empty run of ASCII digits (``str.isdigit`` also takes "²", which ``int`` refuses)."""
    return tok.isascii() and tok.isdigit()


def parse_hex_id(tok: str, what: str = "CAN ID") -> int:
    if not tok or any(c not in HEX_DIGITS for c in tok):
        raise LineError(f"bad hex {what} {tok!r}")
    return int(tok, 16)


def id_out_of_range(can_id: int, ext: bool) -> bool:
    return can_id > (0x1FFFFFFF if ext else 0x7FF)


def id_problem(can_id: int, ext: bool) -> str:
    return f"CAN ID 0x{can_id:X} out of range for a {'29' if ext else '11'}-bit identifier"


def _bad_zip(path: Path, e: BaseException) -> DataError:
    return DataError(f"{path}: the zip archive is damaged or truncated ({type(e).__name__}: {shorten(str(e))}); "
                     "download or copy it again, or extract what is readable and open the extracted file")


class _ZipMemberStream(io.RawIOBase):
    """A zip member's bytes, any failure while reading them raised as DataError naming the archive.

    zipfile reports damage as many unrelated types (BadZipFile for a bad CRC or header, zlib.error
    and EOFError for bad or cut deflate data, NotImplementedError for a flipped method, ...).
    """

    def __init__(self, path: Path, zf: zipfile.ZipFile, member: str) -> None:
        super().__init__()
        self._path, self._zf = path, zf
        try:
            self._fh = zf.open(member)
        except Exception as e:  # noqa: BLE001 - see the class docstring
            zf.close()
            raise _bad_zip(path, e) from e

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            return self._fh.readinto(b)
        except Exception as e:  # noqa: BLE001 - see the class docstring
            raise _bad_zip(self._path, e) from e

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
            self._zf.close()
        super().close()


def open_zip_member(path: Path, exts: tuple[str, ...] = (".csv",), what: str = ".csv") -> IO[bytes]:
    """The single data file inside a zip (``__MACOSX/`` and folders ignored), opened for streaming.

    A damaged archive raises DataError naming it, when opened or later while its member is read.
    """
    try:
        zf = zipfile.ZipFile(path)
    except Exception as e:  # noqa: BLE001 - BadZipFile, or OSError/ValueError/EOFError from a bad directory
        raise _bad_zip(path, e) from e
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
    return io.BufferedReader(_ZipMemberStream(path, zf, members[0]))


class CaptureReader:
    """Base class: iterate to get ``FrameBatch`` chunks; ``stats`` counts what happened."""

    format_name = "?"
    # Extensions of the data file a reader takes from inside a zip; () = the format is never zipped.
    zip_members: tuple[str, ...] = ()

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
        self._header: str | None = None  # the header line, for formats that have one

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
        msg = shorten(msg, 300)  # messages quote values, which a damaged line can make huge
        if self.skip_malformed:
            self.stats.skip(f"line {line_no}: {msg}")
            return
        raise DataError(
            f"{self.path}:{line_no}: {msg}: {shorten(line)!r} ({self.format_name} format). "
            "Fix or delete the line, or pass skip_malformed=True (source.skip_malformed: true in a config) "
            "to skip and count such lines"
        )

    def _header_csv_chunks(self, header: list[str], what: str, hint: str = "") -> Iterator[FrameBatch]:
        """Chunks of a CSV with a fixed header line (CICIoV2024, DAGA); DataError naming the file otherwise."""
        with self._open_text() as fh:
            first = fh.readline()
            if not first:
                return  # empty file: zero frames
            head = first.decode("utf-8", "replace").lstrip("\ufeff").strip()
            if [h.strip() for h in head.split(",")] != header:
                raise DataError(f"{self.path}:1: not a {what} header: {shorten(head)!r}; "
                                f"expected {','.join(header)}{hint}")
            self._header = head
            for start, lines in self._line_chunks(fh, 2):
                yield self._parse_chunk(start, lines)

    def _open_text(self) -> IO[bytes]:
        """The capture's bytes: the data member of a zip (formats with ``zip_members``), else the file."""
        if self.zip_members and zipfile.is_zipfile(self.path):
            what = "/".join(self.zip_members) + " file"
            return open_zip_member(self.path, self.zip_members, what)
        fh = open(self.path, "rb")
        if fh.read(len(ZIP_MAGIC)) == ZIP_MAGIC:
            # A zip's directory is at its end: a cut zip no longer passes is_zipfile and reached here.
            fh.close()
            kind = "a truncated or damaged zip archive" if self.zip_members else "a zip archive"
            raise DataError(f"{self.path}: this is {kind}, not a {self.format_name} text file; "
                            + ("download or copy it again" if self.zip_members else "extract the capture from it"))
        fh.seek(0)
        return fh

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
        # Some fast paths would take a control byte or U+FFFD (a label "BEN\ufffdIGN" is a new class),
        # so a chunk holding one goes straight to the precise path, which reports the line.
        text = "".join(lines)
        if not any(c in text for c in _NOT_TEXT_CHARS):  # ~4x faster than the regex on a chunk
            try:
                return self._fast(lines)
            except Exception:  # noqa: BLE001 - any failure sends the chunk to the precise path
                self.bad_ids = seen  # the precise path counts them again
        rows: list[Row] = []
        for k, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                if self._header is not None and line.strip() == self._header:
                    raise LineError("the header line again (captures joined into one file?)")
                check_text(line)
                row = self._slow(line)
            except LineError as e:
                self._fail(start + k, str(e), line)
                continue
            except (ValueError, IndexError, KeyError, OverflowError, TypeError) as e:
                # The per-line parsers turn the problems they know into LineError; whatever
                # else a damaged line makes them raise is still that line's fault.
                self._fail(start + k, f"unparseable line ({type(e).__name__}: {e})", line)
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
            shown = shorten(line)
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
