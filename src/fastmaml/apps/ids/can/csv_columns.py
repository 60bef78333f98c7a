"""Reader for labelled CAN CSV exports in any column layout (format ``csv``).

A ``ColumnMap`` names the columns; keys left unset are auto-detected from the header (case and
punctuation ignored, common synonyms): ``Time,Id,Byte1..Byte8,Label``, ``timestamp,arbitration_id,
dlc,data,label``, ``timestamp,arbitration_id,data_field[,dlc_value],attack`` (can-train-and-test, CAN-MIRGU) or
``Timestamp,ID,DLC,D0..D7,Flag`` need no map; ``Zeit;Kennung;B1..B8;Klasse`` needs ``id=Kennung`` and
``label=Klasse``. A key set to ``""`` means "no such column".

Bases (``id_base``, ``byte_base``: ``hex``, ``dec``, ``auto``): ``auto`` is decided once per file
from the header name (``id_hex``) and the first chunk's values: hex when some value has a ``0x``
prefix, a letter a-f or a leading zero (``0316``, ``05``), else decimal. So all-digit IDs without
leading zeros read as decimal (``100`` = 100, not 0x100): set the base when in doubt. A ``payload``
column is always hex (``0102AB``, ``01 02 AB``, ``0x0102AB``).

Labels: a value in ``benign_values`` (case-insensitive; also the literal ``benign``) is benign; any
other becomes ``attack`` when set, else ``attack`` for 1/true/t/attack/yes, else the value
lower-cased (multi-class exports keep their classes). No label column: labels unknown (-1).
One record per line (quoted fields allowed, embedded newlines not).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fastmaml.apps.ids.can.frames import BENIGN, FD_DLC_TO_LEN, FrameBatch, len_to_dlc
from fastmaml.apps.ids.can.capture import CaptureReader, LineError, Row, check_text, shorten
from fastmaml.errors import ConfigError, DataError

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_BINARY_ATTACK = {"1", "true", "t", "attack", "yes"}
_TIME = {"time", "timestamp", "ts", "t", "times", "zeit", "abstime", "reltime", "timestamps"}
_ID = {"id", "canid", "arbitrationid", "arbid", "msgid", "messageid", "identifier", "canidentifier", "frameid"}
_PAYLOAD = {"data", "payload", "payloadhex", "datahex", "hexdata", "databytes", "bytes", "candata", "msgdata",
            "datafield"}  # datafield: the can-train-and-test data set's column
_DLC = {"dlc", "len", "length", "datalength", "datalen", "dl", "dlcvalue"}
_LABEL = ["label", "class", "flag", "attack", "anomaly", "specificclass", "attacktype", "category", "type",
          "target", "y", "tag"]
_COLUMN_KEYS = ("time", "id", "payload", "bytes", "dlc", "label")
_HEXSET = frozenset("0123456789abcdefABCDEF")
_BYTE_COL = re.compile(r"^(byte|b|d|data|db|databyte|payload)(\d{1,2})$")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _names(v: Any) -> list[str]:
    parts = v.split(",") if isinstance(v, str) else [str(s) for s in v]
    return [s.strip() for s in parts if s.strip()]


@dataclass
class ColumnMap:
    """Which CSV column holds what. None = auto-detect from the header; ``""`` = no such column."""

    time: str | None = None  # seconds (or time_unit), or ISO date-time; none -> NaN timestamps
    time_unit: str = "s"  # s, ms, us, ns
    id: str | None = None
    id_base: str = "auto"  # hex, dec, auto
    id_bits: str = "auto"  # auto (> 0x7FF means 29-bit), 11 (all standard), 29 (all extended)
    payload: str | None = None  # one column of hex bytes, spaces allowed
    bytes: list[str] | None = None  # or: the byte columns in order
    byte_base: str = "auto"  # hex, dec, auto (for ``bytes`` columns)
    dlc: str | None = None
    label: str | None = None
    benign_values: list[str] = field(default_factory=lambda: ["0", "benign", "normal", "R", "false", "BENIGN"])
    attack: str | None = None  # name for every non-benign row; default: the label value
    delimiter: str | None = None  # default: sniffed from the header (, ; tab)

    def __post_init__(self) -> None:
        if self.bytes is not None and not isinstance(self.bytes, list):
            self.bytes = _names(self.bytes)
        if not isinstance(self.benign_values, list):
            self.benign_values = _names(self.benign_values)
        self.id_bits = str(self.id_bits)
        if self.delimiter in ("tab", "\\t"):
            self.delimiter = "\t"
        for key, ok in (("time_unit", _UNITS), ("id_base", ("hex", "dec", "auto")),
                        ("byte_base", ("hex", "dec", "auto")), ("id_bits", ("auto", "11", "29"))):
            if getattr(self, key) not in ok:
                raise ConfigError(f"columns.{key}={getattr(self, key)!r} unknown; use one of {', '.join(ok)}")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ConfigError(f"columns.delimiter must be one character (or 'tab'), got {self.delimiter!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ColumnMap:
        """From a config mapping; unknown keys raise ConfigError listing the valid ones."""
        valid = [f.name for f in fields(cls)]
        bad = [k for k in d if k not in valid]
        if bad:
            raise ConfigError(f"unknown column map key(s) {bad}; valid keys: {', '.join(valid)}")
        lists = ("bytes", "benign_values")
        return cls(**{k: (None if v is None else v if k in lists else str(v)) for k, v in d.items()})

    @classmethod
    def from_flags(cls, items: Sequence[str]) -> ColumnMap:
        """From ``key=value`` strings (lists comma-separated: ``bytes=B1,B2,B3``)."""
        bad = [it for it in items if "=" not in it]
        if bad:
            raise ConfigError(f"column map item(s) {bad} must be key=value, e.g. id=CAN_ID")
        return cls.from_dict({k.strip(): v.strip() for k, _, v in (it.partition("=") for it in items)})

    @classmethod
    def coerce(cls, x: ColumnMap | Mapping[str, Any] | Sequence[str] | str | None) -> ColumnMap:
        """A ColumnMap from itself, a mapping, ``key=value`` strings, or None (all auto)."""
        if x is None or isinstance(x, ColumnMap):
            return x or cls()
        return cls.from_dict(x) if isinstance(x, Mapping) else cls.from_flags([x] if isinstance(x, str) else list(x))


# Resolved column indices (None: no such column).
_Cols = NamedTuple("_Cols", [("header", list[str]), ("time", "int | None"), ("id", int), ("payload", "int | None"),
                             ("bytes", list[int]), ("dlc", "int | None"), ("label", "int | None")])


def sniff_delimiter(line: str) -> str:
    """The most frequent of ``,`` ``;`` tab in a header line (``,`` when none)."""
    counts = {d: line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def auto_columns(header: Sequence[str]) -> dict[str, Any]:
    """Column-map keys recognised in a header by name (see module docs); missing keys are absent."""
    norm = [_norm(h) for h in header]
    found: dict[str, Any] = {}
    for i, h in enumerate(norm):
        unit = next((u for u in ("ms", "us", "ns") if h.endswith(u) and h[:-2] in _TIME), None)
        if "time" not in found and (h in _TIME or unit):
            found["time"], found["time_unit"] = header[i], unit or "s"
        key = h.removesuffix("hex").removesuffix("dec")
        if "id" not in found and (h in _ID or (key in _ID and key != h)):
            found["id"] = header[i]
            if key != h:
                found["id_base"] = h[len(key):]
        if "payload" not in found and h in _PAYLOAD:
            found["payload"] = header[i]
        if "dlc" not in found and h in _DLC:
            found["dlc"] = header[i]
    lab = next((norm.index(n) for n in _LABEL if n in norm), None)
    if lab is not None:
        found["label"] = header[lab]
    groups: dict[str, dict[int, str]] = {}
    for i, h in enumerate(norm):
        m = _BYTE_COL.match(h)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = header[i]
    for g in sorted(groups.values(), key=len, reverse=True):
        lo = min(g)
        if lo in (0, 1) and sorted(g) == list(range(lo, lo + len(g))) and len(g) <= 64:
            found["bytes"] = [g[k] for k in sorted(g)]
            break
    return found


def _resolve(header: list[str], cmap: ColumnMap, where: str) -> tuple[_Cols, ColumnMap]:
    """Column indices for ``cmap`` (auto-detected where unset); DataError names the key to set."""
    auto = auto_columns(header)
    low = [h.lower() for h in header]
    upd = {k: auto[k] for k in _COLUMN_KEYS if getattr(cmap, k) is None and k in auto}
    if "time" in upd and cmap.time_unit == "s":
        upd["time_unit"] = auto["time_unit"]  # "timestamp_ms" says its unit
    if "id" in upd and cmap.id_base == "auto" and "id_base" in auto:
        upd["id_base"] = auto["id_base"]  # "id_hex" says its base
    m = replace(cmap, **upd)
    if cmap.payload and cmap.bytes:
        raise ConfigError(f"{where}: set only one of columns.payload and columns.bytes")
    if m.payload and m.bytes:  # one set by the user, or both found: the user's wins, else the payload
        m.payload, m.bytes = (None, m.bytes) if cmap.bytes else (m.payload, None)

    def idx(key: str, name: str | None) -> int | None:
        if not name:
            return None
        if name in header or name.lower() in low:
            return header.index(name) if name in header else low.index(name.lower())
        raise DataError(f"{where}:1: column {name!r} (columns.{key}) is not in the header {header}; "
                        f"set the column map key {key!r} to one of them (capture config: columns: {{{key}: ...}}; adapt/detect: --column {key}=...)")

    cid, pay, byt = idx("id", m.id), idx("payload", m.payload), [idx("bytes", b) for b in m.bytes or []]
    if cid is None:
        raise DataError(f"{where}:1: cannot find the CAN identifier column in the header {header}; set the column "
                        "map key 'id' (capture config: columns: {id: <column name>}; adapt/detect: --column id=<column name>)")
    if pay is None and not byt:
        raise DataError(f"{where}:1: cannot find the payload in the header {header}; set the column map key "
                        "'payload' (one hex column) or 'bytes' (the byte columns in order), "
                        "e.g. columns: {bytes: [B1, ..., B8]} in the capture config, or --column bytes=B1,...,B8")
    return _Cols(header, idx("time", m.time), cid, pay, [b for b in byt if b is not None],
                 idx("dlc", m.dlc), idx("label", m.label)), m


def split_fields(line: str, delimiter: str) -> list[str]:
    """One CSV line's fields; LineError for what the csv module refuses (a stray CR, a field over its size limit)."""
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error as e:
        raise LineError(f"not a readable CSV line ({e})") from None


def header_auto_maps(first_line: str) -> bool:
    """True when a CSV header line can be mapped without a column map (used by ``detect_format``)."""
    line = first_line.lstrip("\ufeff").strip()
    try:
        _resolve([h.strip() for h in split_fields(line, sniff_delimiter(line))], ColumnMap(), "?")
    except (DataError, LineError):
        return False
    return True


def _looks_hex(vals: list[str]) -> bool:
    return any(v[:2] in ("0x", "0X") or re.search(r"[a-fA-F]", v) or (len(v) > 1 and v[0] == "0") for v in vals)


def _conv(vals: list[str], fn: Callable[[str], Any], col: str, what: str, hint: str = "") -> list[Any]:
    """``fn`` over the values; the first failure becomes a LineError naming column and value."""
    try:
        return [fn(v) for v in vals]
    except (ValueError, TypeError, OverflowError):
        for v in vals:
            try:
                fn(v)
            except (ValueError, TypeError, OverflowError):
                raise LineError(f"column {col!r}: {what} {shorten(v, 40)!r}{hint}") from None
        raise


def _hex_payload(v: str) -> bytes:
    try:
        return bytes.fromhex(v)  # "0102AB", "01 02 AB": the common case
    except ValueError:
        pass
    v = v[2:] if v[:2] in ("0x", "0X") else v
    toks = [t for t in re.split(r"[\s:,\-]+", v) if t]
    if not set("".join(toks)) <= _HEXSET:
        raise ValueError(v)
    if len(toks) > 1 and all(len(t) <= 2 for t in toks):
        return bytes(int(t, 16) for t in toks)  # "1 2 AB", "01:02", "01, 02": one token a byte
    return bytes.fromhex("".join(toks))  # odd digit count raises


def _quick_bytes(vals: list[str], base: int) -> np.ndarray | None:
    """A byte column in one C call when it is clean (two hex digits each, or plain decimals); else None."""
    try:
        if base == 16:
            if set(map(len, vals)) == {2}:
                out = np.frombuffer(bytes.fromhex("".join(vals)), np.uint8)
                return out if out.size == len(vals) else None  # fromhex skips spaces: a short result
            return None
        return np.array(vals, np.int64)
    except (ValueError, OverflowError):
        return None


def _shown_int(v: int, text: str) -> str:
    """``v`` for a message; its text, shortened, when huge (str() of an int over 4300 digits raises)."""
    return str(v) if v.bit_length() <= 256 else shorten(text, 40)


def _datetime_s(v: str) -> float:
    if not v or v.lower() == "nat":
        raise ValueError(v)
    return float(np.datetime64(v, "ns").astype(np.int64)) / 1e9


class ColumnCsvReader(CaptureReader):
    """A labelled CSV export, columns named by ``columns`` (a ColumnMap, dict or key=value list) or auto-detected.

    Args:
        columns: the column map; None auto-detects every key.
        attack: shortcut for ``columns.attack`` (one name for all non-benign rows).
    """

    format_name = "column-mapped CSV"
    zip_members = (".csv", ".txt", ".tsv")

    def __init__(self, path: str | Path, columns: ColumnMap | Mapping[str, Any] | Sequence[str] | None = None,
                 attack: str | None = None, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.columns = ColumnMap.coerce(columns)
        if attack:
            self.columns = replace(self.columns, attack=attack)

    def _chunks(self) -> Iterator[FrameBatch]:
        with self._open_text() as fh:
            raw = fh.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n")
            self._delim = self.columns.delimiter or sniff_delimiter(line)
            try:
                check_text(line)
                header = [h.strip() for h in split_fields(line, self._delim)]
            except LineError as e:
                raise DataError(f"{self.path}:1: the header line is damaged: {e}: {shorten(line)!r}; "
                                "fix the first line (the column names)") from None
            self._cols, self._map = _resolve(header, self.columns, str(self.path))
            self._header = line.strip()
            self._benign = {b.strip().lower() for b in self._map.benign_values}
            for k, (start, lines) in enumerate(self._line_chunks(fh, 2)):
                if k == 0:
                    self._decide_bases(lines)
                yield self._parse_chunk(start, lines)

    def _decide_bases(self, lines: list[str]) -> None:
        rows = []
        for line in lines[:5000]:
            try:
                r = split_fields(line, self._delim)
            except LineError:
                continue  # reported when the chunk is parsed
            if len(r) == len(self._cols.header):
                rows.append(r)
        c, m = self._cols, self._map
        self._id_hex = m.id_base == "hex" or (m.id_base == "auto" and _looks_hex([r[c.id].strip() for r in rows]))
        self._byte_hex = m.byte_base == "hex" or (
            m.byte_base == "auto" and _looks_hex([r[j].strip() for r in rows for j in c.bytes]))

    def _fast(self, lines: list[str]) -> FrameBatch:
        lines = lines if all(lines) else [ln for ln in lines if ln]
        if not lines:
            return FrameBatch.empty()
        d, ncol = self._delim, len(self._cols.header)
        if any('"' in ln for ln in lines):  # quoted fields need the csv module
            rows = list(csv.reader(lines, delimiter=d))
            if any(len(r) != ncol for r in rows):
                raise ValueError("field count")
            cols: list[Sequence[str]] = list(zip(*rows))
        else:  # one join + split is several times faster; column i of row k is flat[k * ncol + i]
            if any(ln.count(d) != ncol - 1 for ln in lines):
                raise ValueError("field count")
            flat = d.join(lines).split(d)
            cols = [flat[i::ncol] for i in range(ncol)]
        ts, ids, ext, length, data, labels = self._convert(cols, strip=any(" " in ln or "\t" in ln for ln in lines))
        self._fast_ids(ids, ext)
        names = list(dict.fromkeys(labels or []))
        code = {x: i for i, x in enumerate(names)}
        dlc = [len_to_dlc(x) if x > 8 else x for x in length.tolist()]
        return FrameBatch(
            ts, ids.astype(np.uint32), ext, np.zeros(len(ids), bool), length > 8, np.array(dlc, np.uint8),
            length.astype(np.uint8), data,
            np.array([code[x] for x in labels] if labels is not None else [-1] * len(ids), np.int16), names,
        )

    def _slow(self, line: str) -> Row | None:
        row = split_fields(line, self._delim)
        if len(row) != len(self._cols.header):
            raise LineError(f"expected {len(self._cols.header)} {self._delim!r}-separated fields like the header, "
                             f"got {len(row)}")
        ts, ids, ext, length, data, labels = self._convert([[v] for v in row])
        n = int(length[0])
        return (float(ts[0]), int(ids[0]), bool(ext[0]), False, n > 8, len_to_dlc(n) if n > 8 else n,
                bytes(data[0, :n]), labels[0] if labels is not None else None)

    def _convert(self, cols: list[Sequence[str]], strip: bool = True) -> tuple[
            np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
        """Frames from the text columns: time, id, extended, length, data [N, 8|64], labels (or None).

        Raises LineError naming the column and value at the first bad one.
        """
        c, m, n, name = self._cols, self._map, len(cols[0]), self._cols.header

        def col(i: int) -> list[str]:
            return [v.strip() for v in cols[i]] if strip else list(cols[i])

        if c.time is None:
            ts = np.full(n, np.nan)
        else:
            tv = col(c.time)
            if self._delim != ",":  # decimal comma ("0,001") in ;- or tab-separated exports
                tv = [v.replace(",", ".") for v in tv]
            try:
                ts = np.array(tv, np.float64) * _UNITS[m.time_unit]
            except ValueError:
                ts = np.array(_conv(tv, _datetime_s, name[c.time],
                                    "bad time", f" (a number in {m.time_unit} or an ISO date-time)"), np.float64)
            if not np.isfinite(ts).all():
                raise LineError(f"column {name[c.time]!r}: time is not a finite number")
        base = 16 if self._id_hex else 10
        id_text = col(c.id)
        idl = _conv(id_text, lambda v: int(v, base), name[c.id],
                    f"bad {'hex' if base == 16 else 'decimal'} CAN ID", " (set columns.id_base if the base is wrong)")
        for k in (k for k, v in enumerate(idl) if not 0 <= v <= 0xFFFFFFFF):
            raise LineError(f"column {name[c.id]!r}: CAN ID {_shown_int(idl[k], id_text[k])} is negative or "
                            "does not fit in 32 bits")
        ids = np.array(idl, np.int64)
        ext = ids > 0x7FF if m.id_bits == "auto" else np.full(n, m.id_bits == "29")
        dlc = None if c.dlc is None else np.array(_conv(col(c.dlc), int, name[c.dlc], "bad DLC"), np.int64)
        if dlc is not None and ((dlc < 0) | (dlc > 64)).any():
            raise LineError(f"column {name[c.dlc]!r}: DLC {int(dlc[(dlc < 0) | (dlc > 64)][0])} outside 0..64")
        if c.payload is not None:
            pl = _conv(col(c.payload), _hex_payload, name[c.payload], "bad hex payload")
            length = np.fromiter(map(len, pl), np.int64, n)
            if n and length.max() > 8 and not set(length.tolist()) <= set(FD_DLC_TO_LEN):
                raise LineError(f"column {name[c.payload]!r}: a payload of {int(length.max())} bytes "
                                 "is not a CAN (FD) length")
            fd_code = np.array([len_to_dlc(x) if x > 8 else x for x in length.tolist()], np.int64)
            if dlc is not None and ((dlc != length) & (dlc != fd_code)).any():
                raise LineError(f"column {name[c.dlc]!r}: DLC disagrees with the payload's byte count")
            width = 8 if not n or length.max() <= 8 else 64
            data = np.frombuffer(b"".join(p.ljust(width, b"\0") for p in pl), np.uint8).reshape(n, width).copy()
        else:
            data, length = self._byte_columns([col(j) for j in c.bytes], dlc, n)
        lv = col(c.label) if c.label is not None else None
        if lv is not None and not all(lv):
            raise LineError(f"column {name[c.label]!r}: empty label")
        mapped = {v: self._label(v) for v in set(lv or [])}
        return ts, ids, ext, length, data, None if lv is None else [mapped[v] for v in lv]

    def _byte_columns(self, bcols: list[list[str]], dlc: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        c, nb = self._cols, len(bcols)
        if dlc is None:  # bytes present = leading non-empty columns; a gap is an error
            full = np.stack([np.fromiter(map(bool, vals), bool, n) for vals in bcols], axis=1)
            length = np.cumprod(full, axis=1).sum(axis=1)
            if (full.sum(axis=1) != length).any():
                raise LineError(f"byte columns {[c.header[j] for j in c.bytes]}: an empty byte before a filled one")
        elif (dlc > nb).any():
            raise LineError(f"DLC {int(dlc.max())} but only {nb} byte columns are mapped")
        else:
            length = dlc
        base, kind = (16, "hex") if self._byte_hex else (10, "decimal")
        data = np.zeros((n, 8 if nb <= 8 else 64), np.uint8)
        for j, vals in enumerate(bcols):
            if not (length > j).all():
                vals = [v if k else "00" for v, k in zip(vals, (length > j).tolist())]  # unused: any value
            arr = _quick_bytes(vals, base)
            vv = arr if arr is not None else _conv(vals, lambda v: int(v, base), c.header[c.bytes[j]],
                                                   f"bad {kind} byte", " (set columns.byte_base if the base is wrong)")
            bad = ([k for k, v in enumerate(vv) if not 0 <= v <= 255] if arr is None
                   else np.flatnonzero((arr < 0) | (arr > 255)).tolist())
            if bad:
                raise LineError(f"column {c.header[c.bytes[j]]!r}: byte value "
                                f"{_shown_int(int(vv[bad[0]]), vals[bad[0]])} outside 0..255")
            data[:, j] = vv
        if (length > 8).any() and not set(length.tolist()) <= set(FD_DLC_TO_LEN):
            raise LineError(f"{int(length.max())} data bytes is not a CAN (FD) length")
        return data, length

    def _label(self, v: str) -> str:
        low = v.lower()
        if low in self._benign:
            return BENIGN
        return self._map.attack.strip().lower() if self._map.attack else "attack" if low in _BINARY_ATTACK else low


__all__ = ["ColumnMap", "ColumnCsvReader", "auto_columns", "header_auto_maps", "sniff_delimiter"]
