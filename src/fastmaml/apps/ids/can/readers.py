"""Streaming readers for CAN captures, yielding ``FrameBatch`` chunks.

Formats:
    * ``cic``: CICIoV2024 decimal CSV (``ID,DATA_0..DATA_7,label,category,specific_class``),
      plain or straight from the ``.zip`` (``__MACOSX/`` entries ignored). No timestamps.
    * ``carhacking``: HCRL Car-Hacking CSV, no header, ``Timestamp,ID(hex),DLC,DATA...,Flag``.
    * ``candump``: can-utils ``candump`` text, log-file form (``-l`` / ``-L``) and console form
      (``-ta``/``-td``/``-tz``/no timestamps, ``-x`` direction columns tolerated).
    * ``pythoncan``: anything ``can.LogReader`` opens (ASC, BLF, TRC, python-can CSV, ...).

Every reader reports ``stats`` (a ``ReadStats``: frames read, lines skipped and why).
A malformed line raises ``DataError`` naming file, line and problem; with
``skip_malformed=True`` it is skipped and counted instead, never dropped silently.
An empty file (no bytes, or a CICIoV2024 header only) yields zero frames and reports
``frames_read == 0``; a file that is not the format at all (no valid first line) raises.

Text readers parse a chunk of lines with a vectorized fast path and, only when that fails,
re-parse the chunk line by line to find and report (or skip) the bad line; so the common
case stays fast and the error case stays precise.
"""

from __future__ import annotations

import itertools
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from fastmaml.apps.ids.can.frames import BENIGN, CLASSIC_MAX, FD_DLC_TO_LEN, FD_MAX, CanFrame, FrameBatch, ReadStats
from fastmaml.errors import DataError

DEFAULT_CHUNK = 65536
CIC_HEADER = ["ID", *[f"DATA_{i}" for i in range(8)], "label", "category", "specific_class"]
_HEX = set("0123456789abcdefABCDEF")


class _LineError(Exception):
    """A problem with one line; turned into DataError (with file and line) or a counted skip."""


# One parsed frame: (timestamp, can_id, is_ext, is_remote, is_fd, dlc, data, label-or-None)
_Row = tuple[float, int, bool, bool, bool, int, bytes, "str | None"]


def _rows_to_batch(rows: list[_Row]) -> FrameBatch:
    return FrameBatch.from_frames(CanFrame(*r) for r in rows)


def _check_text(line: str) -> None:
    if "\x00" in line or "\ufffd" in line:
        raise _LineError("binary (non-text) content; is this really a text capture?")


def _parse_hex_id(tok: str, what: str = "CAN ID") -> int:
    if not tok or any(c not in _HEX for c in tok):
        raise _LineError(f"bad hex {what} {tok!r}")
    return int(tok, 16)


def _check_id(can_id: int, ext: bool) -> None:
    if can_id > (0x1FFFFFFF if ext else 0x7FF):
        raise _LineError(f"CAN ID 0x{can_id:X} out of range for a {'29' if ext else '11'}-bit identifier")


class CaptureReader:
    """Base class: iterate to get ``FrameBatch`` chunks; ``stats`` counts what happened."""

    format_name = "?"

    def __init__(self, path: str | Path, *, chunk_size: int = DEFAULT_CHUNK, skip_malformed: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"capture {self.path} not found; check the path")
        if chunk_size < 1:
            raise DataError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.skip_malformed = skip_malformed
        self.stats = ReadStats(source=str(self.path))

    def __iter__(self) -> Iterator[FrameBatch]:
        self.stats = ReadStats(source=str(self.path))
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
        try:
            return self._fast(lines)
        except Exception:  # noqa: BLE001 - any failure sends the chunk to the precise path
            rows: list[_Row] = []
            for k, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    _check_text(line)
                    row = self._slow(line)
                except _LineError as e:
                    self._fail(start + k, str(e), line)
                    continue
                if row is not None:
                    rows.append(row)
            return _rows_to_batch(rows) if rows else FrameBatch.empty()

    def _fast(self, lines: list[str]) -> FrameBatch:  # pragma: no cover - abstract
        raise NotImplementedError

    def _slow(self, line: str) -> _Row | None:  # pragma: no cover - abstract
        raise NotImplementedError


# ====================================================================== CICIoV2024
def cic_label(specific_class: str) -> str:
    """CICIoV2024 ``specific_class`` to fastmaml label: BENIGN -> benign, else lower case."""
    s = specific_class.strip()
    return BENIGN if s.upper() == "BENIGN" else s.lower()


class CicIov2024Reader(CaptureReader):
    """CICIoV2024 decimal CSV (or .zip holding one). Label = ``specific_class``; no timestamps."""

    format_name = "CICIoV2024 decimal CSV"

    def _open_text(self) -> IO[bytes]:
        if zipfile.is_zipfile(self.path):
            zf = zipfile.ZipFile(self.path)
            members = [
                m for m in zf.namelist()
                if not m.startswith("__MACOSX/") and not m.endswith("/") and m.lower().endswith(".csv")
            ]
            if len(members) != 1:
                raise DataError(
                    f"{self.path}: expected exactly one .csv in the zip (ignoring __MACOSX/), found {members}; "
                    "extract the wanted CSV and open it directly"
                )
            return zf.open(members[0])
        return open(self.path, "rb")

    def _chunks(self) -> Iterator[FrameBatch]:
        with self._open_text() as fh:
            header = fh.readline()
            if not header:
                return  # empty file: zero frames
            head = header.decode("utf-8", "replace").strip().split(",")
            if [h.strip() for h in head] != CIC_HEADER:
                raise DataError(
                    f"{self.path}:1: not a CICIoV2024 decimal CSV header: {header[:120]!r}; "
                    f"expected {','.join(CIC_HEADER)}"
                )
            for start, lines in self._line_chunks(fh, 2):
                yield self._parse_chunk(start, lines)

    def _fast(self, lines: list[str]) -> FrameBatch:
        n = len(lines)
        if any(ln.count(",") != 11 for ln in lines):
            raise ValueError("column count")
        rows = [ln.rsplit(",", 3) for ln in lines]
        # One flat int conversion is ~5x faster than a 2-D string array; bad integers raise.
        nums = np.array(",".join([r[0] for r in rows]).split(","), dtype=np.int64).reshape(n, 9)
        if n and (nums.min() < 0 or nums[:, 1:].max() > 255 or nums[:, 0].max() > 0x1FFFFFFF):
            raise ValueError("range")
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

    def _slow(self, line: str) -> _Row | None:
        r = line.split(",")
        if len(r) != 12:
            raise _LineError(f"expected 12 comma-separated fields, got {len(r)} (truncated line?)")
        try:
            vals = [int(x) for x in r[:9]]
        except ValueError:
            raise _LineError("ID and DATA_0..DATA_7 must be decimal integers") from None
        if not 0 <= vals[0] <= 0x1FFFFFFF:
            raise _LineError(f"ID {vals[0]} out of range")
        if any(not 0 <= v <= 255 for v in vals[1:]):
            raise _LineError("data byte outside 0..255")
        if not r[11].strip():
            raise _LineError("empty specific_class")
        return (np.nan, vals[0], vals[0] > 0x7FF, False, False, 8, bytes(vals[1:]), cic_label(r[11]))


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
        ts = np.array([r[0] for r in rows]).astype(np.float64)
        ids = np.array([int(r[1], 16) for r in rows], np.int64)
        hexes = ["".join(r[3:-1]) for r in rows]
        if any(len(h) != 2 * d for h, d in zip(hexes, dlc.tolist())):
            raise ValueError("byte width")
        data = np.frombuffer(b"".join(bytes.fromhex(h).ljust(8, b"\0") for h in hexes), np.uint8).reshape(n, 8)
        flags = [r[-1].strip() for r in rows]
        bad = set(flags) - {"R", "T"}
        if bad or (n and (ids.min() < 0 or ids.max() > 0x1FFFFFFF)):
            raise ValueError("flag")
        ext = np.fromiter((len(r[1]) > 4 for r in rows), bool, n) | (ids > 0x7FF)
        return FrameBatch(
            ts, ids.astype(np.uint32), ext, np.zeros(n, bool), np.zeros(n, bool), dlc.astype(np.uint8),
            dlc.astype(np.uint8), data, np.array([0 if f == "R" else 1 for f in flags], np.int16),
            [BENIGN, self.attack],
        )

    def _slow(self, line: str) -> _Row | None:
        r = line.split(",")
        if len(r) < 4:
            raise _LineError(f"expected Timestamp,ID,DLC,data...,Flag; got {len(r)} fields (truncated line?)")
        try:
            ts = float(r[0])
        except ValueError:
            raise _LineError(f"bad timestamp {r[0]!r}") from None
        can_id = _parse_hex_id(r[1].strip())
        ext = len(r[1].strip()) > 4 or can_id > 0x7FF
        _check_id(can_id, ext)
        try:
            dlc = int(r[2])
        except ValueError:
            raise _LineError(f"bad DLC {r[2]!r}") from None
        if not 0 <= dlc <= 8:
            raise _LineError(f"DLC {dlc} outside 0..8")
        if len(r) != dlc + 4:
            raise _LineError(f"DLC {dlc} disagrees with the {len(r) - 4} data bytes present (truncated line?)")
        toks = [t.strip() for t in r[3:-1]]
        for t in toks:
            if len(t) != 2 or any(c not in _HEX for c in t):
                raise _LineError(f"bad hex data byte {t!r}")
        flag = r[-1].strip()
        if flag not in ("R", "T"):
            raise _LineError(f"flag must be R (normal) or T (injected), got {flag!r}")
        return (ts, can_id, ext, False, False, dlc, bytes(int(t, 16) for t in toks), BENIGN if flag == "R" else self.attack)


# ======================================================================== candump
_CONSOLE_TS = re.compile(r"^\s*\(([^)]*)\)\s*")


def load_label_file(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Per-frame labels from a side file: ``index,label`` CSV, or a Car-Hacking CSV (flags in frame order).

    Returns (codes int16 [N], names); the side CSV must list indices 0..N-1 in order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file {path} not found")
    with open(path, "rb") as fh:
        first = fh.readline().decode("utf-8", "replace").strip()
    if first.replace(" ", "").lower() == "index,label":
        names: list[str] = []
        codes: list[int] = []
        with open(path, encoding="utf-8", errors="replace") as fh:
            next(fh)
            for k, line in enumerate(fh, start=2):
                parts = line.strip().split(",")
                if len(parts) != 2 or not parts[0].isdigit() or not parts[1]:
                    raise DataError(f"{path}:{k}: expected 'index,label', got {line.strip()!r}; fix the label file")
                if int(parts[0]) != len(codes):
                    raise DataError(
                        f"{path}:{k}: frame index {parts[0]} out of order (expected {len(codes)}); "
                        "list every frame once, in capture order"
                    )
                if parts[1] not in names:
                    names.append(parts[1])
                codes.append(names.index(parts[1]))
        return np.array(codes, np.int16), names
    batch = CarHackingReader(path).read_all()
    return batch.label, batch.label_names


class CandumpReader(CaptureReader):
    """can-utils candump text (log or console form). Labels from an optional side file.

    Args:
        labels: path of an ``index,label`` CSV or a Car-Hacking CSV aligned frame by frame.
            Without it labels are unknown (-1). A count mismatch raises DataError at the end.
        delta_timestamps: console ``-td`` stamps are per-frame deltas and get accumulated.
            None (default) guesses: stamps that ever decrease are deltas.
    """

    format_name = "candump"

    def __init__(self, path: str | Path, labels: str | Path | None = None,
                 delta_timestamps: bool | None = None, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.labels_path = labels
        self.delta_timestamps = delta_timestamps

    def _chunks(self) -> Iterator[FrameBatch]:
        side = load_label_file(self.labels_path) if self.labels_path is not None else None
        offset = 0
        t_acc = 0.0
        delta = self.delta_timestamps
        with self._open_text() as fh:
            for start, lines in self._line_chunks(fh):
                batch = self._parse_chunk(start, lines)
                if len(batch) and not np.isnan(batch.timestamp).all():
                    if delta is None:
                        console = not lines[0].lstrip().startswith("(") or "[" in lines[0]
                        delta = console and bool((np.diff(batch.timestamp) < 0).any())
                    if delta:
                        cs = np.cumsum(batch.timestamp) + t_acc
                        t_acc = float(cs[-1])
                        batch.timestamp = cs
                if side is not None:
                    codes, names = side
                    n = len(batch)
                    if offset + n > len(codes):
                        raise DataError(
                            f"{self.labels_path}: has {len(codes)} labels but {self.path} has more frames; "
                            "regenerate the label file for this capture"
                        )
                    batch.label = codes[offset: offset + n].copy()
                    batch.label_names = list(names)
                offset += len(batch)
                yield batch
        if side is not None and offset != len(side[0]):
            raise DataError(
                f"{self.labels_path}: has {len(side[0])} labels but {self.path} has {offset} frames; "
                "regenerate the label file for this capture"
            )

    # Log form: "(ts) iface ID#DATA [flag]"
    def _fast(self, lines: list[str]) -> FrameBatch:
        parts = [ln.split() for ln in lines]
        if not parts or any(len(p) not in (3, 4) or p[0][0] != "(" for p in parts):
            raise ValueError("not simple log form")
        frames = [p[2] for p in parts]
        if any("#" not in f or "##" in f or "#R" in f or "_" in f for f in frames):
            raise ValueError("special frames")
        n = len(parts)
        ts = np.array([p[0][1:-1] for p in parts]).astype(np.float64)
        split = [f.split("#") for f in frames]
        id_tok = [s[0] for s in split]
        id_len = np.fromiter((len(t) for t in id_tok), np.int64, n)
        if ((id_len != 3) & (id_len != 8)).any():
            raise ValueError("id width")
        ids = np.array([int(t, 16) for t in id_tok], np.int64)
        ext = id_len == 8
        if (ids > np.where(ext, 0x1FFFFFFF, 0x7FF)).any():
            raise ValueError("id range")
        hexes = [s[1] for s in split]
        lens = np.fromiter((len(h) for h in hexes), np.int64, n)
        if (lens % 2).any() or lens.max() > 16:
            raise ValueError("data")
        data = np.frombuffer(b"".join(bytes.fromhex(h).ljust(8, b"\0") for h in hexes), np.uint8).reshape(n, 8)
        ln = (lens // 2).astype(np.uint8)
        return FrameBatch(
            ts, ids.astype(np.uint32), ext, np.zeros(n, bool), np.zeros(n, bool), ln, ln, data,
            np.full(n, -1, np.int16), [],
        )

    def _slow(self, line: str) -> _Row | None:
        s = line.strip()
        if s.startswith("(") and "#" in s:
            return self._slow_log(s)
        return self._slow_console(line)

    def _slow_log(self, s: str) -> _Row:
        p = s.split()
        if len(p) not in (3, 4):
            raise _LineError("expected '(timestamp) interface ID#DATA'")
        if not (p[0].startswith("(") and p[0].endswith(")")):
            raise _LineError(f"bad timestamp {p[0]!r}")
        try:
            ts = float(p[0][1:-1])
        except ValueError:
            raise _LineError(f"bad timestamp {p[0]!r}") from None
        id_tok, sep, rest = p[2].partition("#")
        if not sep:
            raise _LineError("missing '#' between ID and data")
        if len(id_tok) not in (3, 8):
            raise _LineError(f"CAN ID {id_tok!r} must have 3 (11-bit) or 8 (29-bit) hex digits")
        ext = len(id_tok) == 8
        can_id = _parse_hex_id(id_tok)
        _check_id(can_id, ext)
        if rest.startswith("#"):  # CAN FD: '##<flags nibble><data>'
            body = rest[1:]
            if not body or body[0] not in _HEX:
                raise _LineError("CAN FD frame needs a flags hex digit after '##'")
            hexdata = body[1:]
            data = self._hex_bytes(hexdata)
            if len(data) not in FD_DLC_TO_LEN:
                raise _LineError(f"CAN FD payload of {len(data)} bytes is not a valid FD length")
            return (ts, can_id, ext, False, True, FD_DLC_TO_LEN.index(len(data)), data, None)
        if rest.upper().startswith("R"):
            dlc_s = rest[1:]
            if dlc_s and (len(dlc_s) != 1 or dlc_s not in "012345678"):
                raise _LineError(f"bad remote-frame DLC {dlc_s!r}")
            return (ts, can_id, ext, True, False, int(dlc_s) if dlc_s else 0, b"", None)
        hexdata, _, dlc_s = rest.partition("_")
        data = self._hex_bytes(hexdata)
        if len(data) > CLASSIC_MAX:
            raise _LineError(f"{len(data)} data bytes exceed 8 for a classic CAN frame")
        dlc = len(data)
        if dlc_s:  # '_X': classic frame with DLC 9..F (payload still 8 bytes)
            if len(data) != 8 or len(dlc_s) != 1 or dlc_s not in "9ABCDEFabcdef":
                raise _LineError(f"bad '_' DLC suffix {dlc_s!r}")
            dlc = int(dlc_s, 16)
        return (ts, can_id, ext, False, False, dlc, data, None)

    @staticmethod
    def _hex_bytes(h: str) -> bytes:
        if len(h) % 2 or any(c not in _HEX for c in h):
            raise _LineError(f"bad hex data {h!r}")
        return bytes.fromhex(h)

    def _slow_console(self, line: str) -> _Row:
        ts = np.nan
        m = _CONSOLE_TS.match(line)
        rest = line
        if m:
            stamp = m.group(1).strip()
            try:
                if "-" in stamp and ":" in stamp:  # -tA: "2015-07-10 08:17:32.249713"
                    ts = float(np.datetime64(stamp.replace(" ", "T")).astype("datetime64[us]").astype(np.int64)) / 1e6
                else:
                    ts = float(stamp)
            except ValueError:
                raise _LineError(f"bad timestamp {stamp!r}") from None
            rest = line[m.end():]
        p = rest.split()
        if len(p) >= 3 and p[1] in ("RX", "TX"):  # '-x': "can0  RX - -  123 ..."
            p = [p[0], *p[4:]]
        if len(p) < 3:
            raise _LineError("expected 'interface ID [len] data' (truncated line?)")
        id_tok, len_tok = p[1], p[2]
        if len(id_tok) not in (3, 8):
            raise _LineError(f"CAN ID {id_tok!r} must have 3 (11-bit) or 8 (29-bit) hex digits")
        ext = len(id_tok) == 8
        can_id = _parse_hex_id(id_tok)
        _check_id(can_id, ext)
        if not (len_tok.startswith("[") and len_tok.endswith("]") and len_tok[1:-1].isdigit()):
            raise _LineError(f"bad length field {len_tok!r}, expected e.g. [8]")
        n = int(len_tok[1:-1])
        is_fd = len(len_tok) == 4 or n > 8  # candump prints FD lengths as two digits, "[08]"
        toks = p[3:]
        if toks[:2] == ["remote", "request"]:
            return (ts, can_id, ext, True, False, n, b"", None)
        if len(toks) != n:
            raise _LineError(f"length [{n}] disagrees with the {len(toks)} data bytes present")
        for t in toks:
            if len(t) != 2 or any(c not in _HEX for c in t):
                raise _LineError(f"bad hex data byte {t!r}")
        if n > FD_MAX or (n > 8 and n not in FD_DLC_TO_LEN):
            raise _LineError(f"invalid data length {n}")
        dlc = FD_DLC_TO_LEN.index(n) if n > 8 else n
        return (ts, can_id, ext, False, is_fd, dlc, bytes(int(t, 16) for t in toks), None)


# ======================================================================== python-can
class PythonCanReader(CaptureReader):
    """Any format ``can.LogReader`` opens (ASC, BLF, TRC, python-can CSV, MF4, SQLite).

    python-can reports no line numbers; a parse failure raises DataError naming the file and
    the frame index reached. Error frames are skipped and counted. A non-empty file giving
    zero frames raises DataError. Limitation: python-can itself stops quietly at a truncated
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
        rows: list[_Row] = []
        k = 0
        offset = 0

        def flush() -> FrameBatch:
            nonlocal offset
            b = _rows_to_batch(rows)
            if side is not None:
                if offset + len(b) > len(side[0]):
                    raise DataError(f"{self.labels_path}: fewer labels than frames in {self.path}")
                b.label, b.label_names = side[0][offset: offset + len(b)].copy(), list(side[1])
            offset += len(b)
            rows.clear()
            return b

        try:
            reader = can.LogReader(str(self.path))
            with reader:
                for msg in reader:
                    k += 1
                    if msg.is_error_frame:
                        self.stats.skip(f"frame {k}: error frame")
                        continue
                    rows.append((
                        float(msg.timestamp), int(msg.arbitration_id), bool(msg.is_extended_id),
                        bool(msg.is_remote_frame), bool(msg.is_fd), int(msg.dlc), bytes(msg.data), None,
                    ))
                    if len(rows) >= self.chunk_size:
                        yield flush()
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - python-can raises many kinds on corrupt input
            raise DataError(
                f"{self.path}: python-can could not parse the capture after {k} frames: {type(e).__name__}: {e}; "
                "check the file is a complete capture of the format its extension says"
            ) from e
        if rows:
            yield flush()
        if k == 0 and self.path.stat().st_size > 0:
            # python-can returns nothing (no error) for some garbage files; never report that as "empty".
            raise DataError(
                f"{self.path}: python-can found no frames in a non-empty file ({self.path.stat().st_size} bytes); "
                "the file is corrupt, not of the format its extension says, or holds only a header"
            )
        if side is not None and offset != len(side[0]):
            raise DataError(f"{self.labels_path}: has {len(side[0])} labels but {self.path} has {offset} frames")


# ===================================================================== auto-detect
_PYTHONCAN_EXT = {".asc", ".blf", ".trc", ".mf4", ".db", ".sqlite"}
_CH_LINE = re.compile(r"^\d+(\.\d+)?,[0-9a-fA-F]{1,8},\d+,")


def detect_format(path: str | Path) -> str:
    """``cic``, ``carhacking``, ``candump`` or ``pythoncan`` from extension and first line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"capture {path} not found; check the path")
    ext = path.suffix.lower()
    if ext in _PYTHONCAN_EXT:
        return "pythoncan"
    if zipfile.is_zipfile(path):
        return "cic"
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"LOGG"):
        return "pythoncan"  # BLF with another extension
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if not first:
        if ext == ".csv":
            return "cic" if "cic" in path.name.lower() or "decimal" in path.name.lower() else "carhacking"
        return "candump"
    if first.startswith("ID,DATA_0"):
        return "cic"
    if first.lower().startswith("timestamp,arbitration_id"):
        return "pythoncan"
    if _CH_LINE.match(first):
        return "carhacking"
    if first.startswith("(") or re.match(r"^\s*\w+\s+[0-9A-Fa-f]{3,8}\s+\[\d+\]", first):
        return "candump"
    if ext in (".log", ".txt", ".candump"):
        return "candump"
    raise DataError(
        f"{path}:1: cannot tell the capture format from {first[:80]!r}; "
        "pass format='cic'|'carhacking'|'candump'|'pythoncan'"
    )


def open_capture(path: str | Path, format: str = "auto", **kw: Any) -> CaptureReader:
    """A reader for ``path``. ``format`` is ``auto`` or one of ``cic``, ``carhacking``, ``candump``, ``pythoncan``.

    Extra keywords go to the reader (``chunk_size``, ``skip_malformed``, ``labels``, ``attack`` ...).
    """
    fmt = detect_format(path) if format == "auto" else format
    classes = {"cic": CicIov2024Reader, "carhacking": CarHackingReader, "candump": CandumpReader,
               "pythoncan": PythonCanReader}
    if fmt not in classes:
        raise DataError(f"unknown capture format {format!r}; use one of auto, {', '.join(classes)}")
    return classes[fmt](path, **kw)


def read_capture(path: str | Path, format: str = "auto", **kw: Any) -> FrameBatch:
    """Whole capture as one FrameBatch (convenience for small files)."""
    return open_capture(path, format, **kw).read_all()


__all__ = [
    "CaptureReader", "CicIov2024Reader", "CarHackingReader", "CandumpReader", "PythonCanReader",
    "open_capture", "read_capture", "detect_format", "load_label_file", "cic_label", "carhacking_attack_name",
]
