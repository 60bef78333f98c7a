"""can-utils candump logs (log and console forms) with optional side label files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fastmaml.apps.ids.can.capture import (HEX_DIGITS, CaptureReader, LineError, Row, fast_times, is_digits,
                                           parse_hex_id, parse_time, shorten)
from fastmaml.apps.ids.can.frames import BENIGN, CLASSIC_MAX, FD_DLC_TO_LEN, FD_MAX, FrameBatch
from fastmaml.apps.ids.can.carhacking import CarHackingReader, carhacking_attack_name
from fastmaml.errors import DataError

# ======================================================================== candump
_CONSOLE_TS = re.compile(r"^\s*\(([^)]*)\)\s*")
# Inline label columns after the frame (CrySyS CAN logs: is_malicious, is_shifted_in_time):
# 1/True = attack, 0/False = benign. can-utils' own extra column is a direction flag R/T, never one of these.
_INLINE_LABELS = {"1": 1, "true": 1, "0": 0, "false": 0}


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
                if len(parts) != 2 or not is_digits(parts[0]) or not parts[1]:
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
    """can-utils candump text (log or console form). Labels from an optional side file or inline columns.

    Args:
        labels: path of an ``index,label`` CSV or a Car-Hacking CSV aligned frame by frame.
            Without it (and without inline labels) labels are unknown (-1). A count mismatch
            raises DataError at the end. A side file wins over inline labels.
        label_column: log-form lines may carry label columns after ``ID#DATA`` (the CrySyS CAN
            logs: ``(12.091016) can0 410#000ecd50c251be00 1<TAB>False``, is_malicious then
            is_shifted_in_time). Which extra column is the label, 1 = the first (default). They are
            detected on the first chunk (most lines hold ``1``/``0``/``True``/``False`` there); an
            attack frame is labelled ``attack``, else a name made from the file name as for
            Car-Hacking files. A bad label value is a malformed line (DataError naming file and line).
        attack: the attack name of inline-labelled attack frames.
        delta_timestamps: console ``-td`` stamps are per-frame deltas and get accumulated.
            None (default) guesses from the first chunk: console stamps that decrease at more than a
            tenth of the steps are deltas (a few decreases are damage, such as repeated lines).

    Every line has a ``(timestamp)`` or none has (most lines of the first chunk decide); a line
    that differs is malformed, so a damaged line start cannot mix NaN into the timestamps.
    """

    format_name = "candump"

    def __init__(self, path: str | Path, labels: str | Path | None = None,
                 delta_timestamps: bool | None = None, label_column: int = 1, attack: str | None = None,
                 **kw: Any) -> None:
        super().__init__(path, **kw)
        if label_column < 1:
            raise DataError(f"label_column must be >= 1 (1 = the first column after ID#DATA), got {label_column}")
        self.labels_path = labels
        self.delta_timestamps = delta_timestamps
        self.label_column = label_column
        self.attack = (attack or carhacking_attack_name(self.path)).lower()
        self._stamped: bool | None = None  # lines carry "(timestamp)"; decided on the first chunk
        self._inline: bool | None = None  # lines carry label columns; decided on the first chunk

    def _has_inline_labels(self, body: list[str]) -> bool:
        """Most log-form lines hold a label value in the label column."""
        col = 2 + self.label_column
        hits = 0
        for ln in body:
            p = ln.split()
            hits += len(p) > col and p[0].startswith("(") and p[col].lower() in _INLINE_LABELS
        return 2 * hits > len(body)

    def _chunks(self) -> Iterator[FrameBatch]:
        side = load_label_file(self.labels_path) if self.labels_path is not None else None
        offset = 0
        t_acc = 0.0
        delta = self.delta_timestamps
        self._stamped = None
        self._inline = None
        with self._open_text() as fh:
            for start, lines in self._line_chunks(fh):
                if self._stamped is None:
                    body = [ln for ln in lines if ln.strip()]
                    if body:
                        self._stamped = 2 * sum(ln.lstrip().startswith("(") for ln in body) >= len(body)
                        self._inline = self._has_inline_labels(body)
                batch = self._parse_chunk(start, lines)
                if self._inline and len(batch):
                    # The precise path names labels in first-seen order; every chunk says benign, attack.
                    batch.label = batch.label_codes([BENIGN, self.attack]).astype(np.int16)
                    batch.label_names = [BENIGN, self.attack]
                if len(batch) and not np.isnan(batch.timestamp).all():
                    if delta is None:
                        console = not lines[0].lstrip().startswith("(") or "[" in lines[0]
                        steps = np.diff(batch.timestamp)
                        delta = console and bool((steps < 0).sum() > 0.1 * steps.size)
                    if delta:
                        cs = np.cumsum(batch.timestamp) + t_acc
                        t_acc = float(cs[-1])
                        batch.timestamp = cs
                # Frames dropped for their ID still own a label: drop it with them, never shift.
                slots = len(batch) + len(self._dropped)
                if side is not None:
                    codes, names = side
                    if offset + slots > len(codes):
                        raise DataError(
                            f"{self.labels_path}: has {len(codes)} labels but {self.path} has more frames; "
                            "regenerate the label file for this capture"
                        )
                    batch.label = np.delete(codes[offset: offset + slots], self._dropped)
                    batch.label_names = list(names)
                offset += slots
                yield batch
        if side is not None and offset != len(side[0]):
            raise DataError(
                f"{self.labels_path}: has {len(side[0])} labels but {self.path} has {offset} frames; "
                "regenerate the label file for this capture"
            )

    # Log form: "(ts) iface ID#DATA [flag]", or "(ts) iface ID#DATA label [label ...]" (inline labels)
    def _fast(self, lines: list[str]) -> FrameBatch:
        parts = [ln.split() for ln in lines]
        col = 2 + self.label_column
        if self._inline:
            if not parts or any(len(p) <= col or p[0][0] != "(" for p in parts):
                raise ValueError("not labelled log form")
            label = np.array([_INLINE_LABELS[p[col].lower()] for p in parts], np.int16)  # KeyError: precise path
        elif not parts or any(len(p) not in (3, 4) or p[0][0] != "(" for p in parts):
            raise ValueError("not simple log form")
        frames = [p[2] for p in parts]
        if any("#" not in f or "##" in f or "#R" in f or "_" in f for f in frames):
            raise ValueError("special frames")
        n = len(parts)
        ts = fast_times([p[0][1:-1] for p in parts])
        split = [f.split("#") for f in frames]
        id_tok = [s[0] for s in split]
        id_len = np.fromiter((len(t) for t in id_tok), np.int64, n)
        if ((id_len != 3) & (id_len != 8)).any():
            raise ValueError("id width")
        ids = np.array([int(t, 16) for t in id_tok], np.int64)
        ext = id_len == 8
        self._fast_ids(ids, ext)
        hexes = [s[1] for s in split]
        lens = np.fromiter((len(h) for h in hexes), np.int64, n)
        if (lens % 2).any() or lens.max() > 16:
            raise ValueError("data")
        data = np.frombuffer(b"".join(bytes.fromhex(h).ljust(8, b"\0") for h in hexes), np.uint8).reshape(n, 8)
        ln = (lens // 2).astype(np.uint8)
        if self._inline:
            return FrameBatch(ts, ids.astype(np.uint32), ext, np.zeros(n, bool), np.zeros(n, bool), ln, ln, data,
                              label, [BENIGN, self.attack])
        return FrameBatch(
            ts, ids.astype(np.uint32), ext, np.zeros(n, bool), np.zeros(n, bool), ln, ln, data,
            np.full(n, -1, np.int16), [],
        )

    def _slow(self, line: str) -> Row | None:
        s = line.strip()
        row = self._slow_log(s) if s.startswith("(") and "#" in s else self._slow_console(line)
        if self._stamped is not None and bool(np.isnan(row[0])) == self._stamped:
            raise LineError("no '(timestamp)', unlike the other lines (a damaged line start?)" if self._stamped
                            else "a '(timestamp)', unlike the other lines")
        return row

    def _slow_log(self, s: str) -> Row:
        p = s.split()
        label = None
        if self._inline:
            col = 2 + self.label_column
            if len(p) <= col:
                raise LineError(f"expected '(timestamp) interface ID#DATA' and label column {self.label_column} "
                                "after it, like the other lines")
            value = _INLINE_LABELS.get(p[col].lower())
            if value is None:
                raise LineError(f"bad label {shorten(p[col], 40)!r} in label column {self.label_column}: "
                                "expected 1 or True (attack), 0 or False (benign)")
            label = self.attack if value else BENIGN
            p = p[:3]
        if len(p) not in (3, 4):
            raise LineError("expected '(timestamp) interface ID#DATA'")
        if not (p[0].startswith("(") and p[0].endswith(")")):
            raise LineError(f"bad timestamp {p[0]!r}")
        ts = parse_time(p[0][1:-1])
        id_tok, sep, rest = p[2].partition("#")
        if not sep:
            raise LineError("missing '#' between ID and data")
        if len(id_tok) not in (3, 8):
            raise LineError(f"CAN ID {id_tok!r} must have 3 (11-bit) or 8 (29-bit) hex digits")
        ext = len(id_tok) == 8
        can_id = parse_hex_id(id_tok)
        if rest.startswith("#"):  # CAN FD: '##<flags nibble><data>'
            body = rest[1:]
            if not body or body[0] not in HEX_DIGITS:
                raise LineError("CAN FD frame needs a flags hex digit after '##'")
            hexdata = body[1:]
            data = self._hex_bytes(hexdata)
            if len(data) not in FD_DLC_TO_LEN:
                raise LineError(f"CAN FD payload of {len(data)} bytes is not a valid FD length")
            return (ts, can_id, ext, False, True, FD_DLC_TO_LEN.index(len(data)), data, label)
        if rest.upper().startswith("R"):
            dlc_s = rest[1:]
            if dlc_s and (len(dlc_s) != 1 or dlc_s not in "012345678"):
                raise LineError(f"bad remote-frame DLC {dlc_s!r}")
            return (ts, can_id, ext, True, False, int(dlc_s) if dlc_s else 0, b"", label)
        hexdata, _, dlc_s = rest.partition("_")
        data = self._hex_bytes(hexdata)
        if len(data) > CLASSIC_MAX:
            raise LineError(f"{len(data)} data bytes exceed 8 for a classic CAN frame")
        dlc = len(data)
        if dlc_s:  # '_X': classic frame with DLC 9..F (payload still 8 bytes)
            if len(data) != 8 or len(dlc_s) != 1 or dlc_s not in "9ABCDEFabcdef":
                raise LineError(f"bad '_' DLC suffix {dlc_s!r}")
            dlc = int(dlc_s, 16)
        return (ts, can_id, ext, False, False, dlc, data, label)

    @staticmethod
    def _hex_bytes(h: str) -> bytes:
        if len(h) % 2 or any(c not in HEX_DIGITS for c in h):
            raise LineError(f"bad hex data {h!r}")
        return bytes.fromhex(h)

    def _slow_console(self, line: str) -> Row:
        ts = np.nan
        m = _CONSOLE_TS.match(line)
        rest = line
        if m:
            stamp = m.group(1).strip()
            if "-" in stamp and ":" in stamp:  # -tA: "2015-07-10 08:17:32.249713"
                try:
                    dt = np.datetime64(stamp.replace(" ", "T")).astype("datetime64[us]")
                except (ValueError, OverflowError):
                    raise LineError(f"bad timestamp {stamp!r}") from None
                if np.isnat(dt):
                    raise LineError(f"bad timestamp {stamp!r}")
                ts = float(dt.astype(np.int64)) / 1e6
            else:
                ts = parse_time(stamp)
            rest = line[m.end():]
        p = rest.split()
        if len(p) >= 3 and p[1] in ("RX", "TX"):  # '-x': "can0  RX - -  123 ..."
            p = [p[0], *p[4:]]
        if len(p) < 3:
            raise LineError("expected 'interface ID [len] data' (truncated line?)")
        id_tok, len_tok = p[1], p[2]
        if len(id_tok) not in (3, 8):
            raise LineError(f"CAN ID {id_tok!r} must have 3 (11-bit) or 8 (29-bit) hex digits")
        ext = len(id_tok) == 8
        can_id = parse_hex_id(id_tok)
        if not (len_tok.startswith("[") and len_tok.endswith("]") and is_digits(len_tok[1:-1])):
            raise LineError(f"bad length field {len_tok!r}, expected e.g. [8]")
        n = int(len_tok[1:-1])
        is_fd = len(len_tok) == 4 or n > 8  # candump prints FD lengths as two digits, "[08]"
        toks = p[3:]
        if toks[:2] == ["remote", "request"]:
            return (ts, can_id, ext, True, False, n, b"", None)
        if len(toks) != n:
            raise LineError(f"length [{n}] disagrees with the {len(toks)} data bytes present")
        for t in toks:
            if len(t) != 2 or any(c not in HEX_DIGITS for c in t):
                raise LineError(f"bad hex data byte {t!r}")
        if n > FD_MAX or (n > 8 and n not in FD_DLC_TO_LEN):
            raise LineError(f"invalid data length {n}")
        dlc = FD_DLC_TO_LEN.index(n) if n > 8 else n
        return (ts, can_id, ext, False, is_fd, dlc, bytes(int(t, 16) for t in toks), None)
