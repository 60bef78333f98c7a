"""Damaged captures: every CAN reader returns frames, raises a DataError naming the file, or skips and counts.

A deterministic fuzz (seeded numpy RNG) mutates small valid captures of every format ``open_capture``
reads (byte flips, junk, lone CR / CRLF / NUL, invalid UTF-8, truncation, repeated and deleted lines,
a repeated header, an overlong line, 'nan'/'inf' text) and damages zipped ones (cut, flipped, grown).
No raw Python exception (csv.Error, zipfile.BadZipFile, zlib.error, ValueError, ...) may escape.
Controlled cases check that with ``skip_malformed=True`` the untouched lines are read exactly.
Every capture is built here in tmp_path; no shared data is needed.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.readers import open_capture
from fastmaml.errors import DataError

N_LINES = 40
N_MUTANTS = 110
CHUNKS = (7, 64, 65536)  # small chunks put damage at and across chunk borders


# --------------------------------------------------------------------------- valid captures
def _bytes(rng: np.random.Generator, n: int) -> list[int]:
    return rng.integers(0, 256, n).tolist()


def _csv(rng: np.random.Generator) -> list[str]:
    lines = ["Timestamp,ID,DLC,D0,D1,D2,D3,D4,D5,D6,D7,Label"]
    for i in range(N_LINES):
        lines.append(f"{0.01 * i:.6f},0x{int(rng.integers(0, 0x7FF)):03X},8,"
                     + ",".join(f"{x:02X}" for x in _bytes(rng, 8)) + (",dos" if i % 5 == 0 else ",benign"))
    return lines


def _daga(rng: np.random.Generator) -> list[str]:
    lines = ["timestamp,CAN_ID,DLC,PAYLOAD_HEX,PAYLOAD_BIN,ANOMALY"]
    for i in range(N_LINES):
        v = int.from_bytes(bytes(_bytes(rng, 8)), "big")
        lines.append(f"{0.001 * i + 1e-6:.6f},{int(rng.integers(0, 0x7FF)):X},64,{v:016X},{v:064b},"
                     + ("True" if i % 6 == 0 else "False"))
    return lines


def _cic(rng: np.random.Generator) -> list[str]:
    lines = ["ID,DATA_0,DATA_1,DATA_2,DATA_3,DATA_4,DATA_5,DATA_6,DATA_7,label,category,specific_class"]
    for i in range(N_LINES):
        tail = ",ATTACK,DoS,DoS" if i % 4 == 0 else ",BENIGN,BENIGN,BENIGN"
        lines.append(f"{int(rng.integers(0, 0x7FF))}," + ",".join(map(str, _bytes(rng, 8))) + tail)
    return lines


def _carhacking(rng: np.random.Generator) -> list[str]:
    lines = []
    for i in range(N_LINES):
        d = int(rng.integers(0, 9))
        lines.append(f"{1478198376 + 0.0002 * i:.6f},{int(rng.integers(0, 0x7FF)):04x},{d},"
                     + "".join(f"{x:02x}," for x in _bytes(rng, d)) + ("T" if i % 7 == 0 else "R"))
    return lines


def _candump_log(rng: np.random.Generator) -> list[str]:
    return [f"({1436509052 + 0.001 * i:.6f}) can0 {int(rng.integers(0, 0x7FF)):03X}#"
            + "".join(f"{x:02X}" for x in _bytes(rng, int(rng.integers(0, 9)))) for i in range(N_LINES)]


def _candump_console(rng: np.random.Generator) -> list[str]:
    lines = []
    for i in range(N_LINES):
        data = _bytes(rng, int(rng.integers(1, 9)))
        lines.append(f" ({0.001 * i:010.6f})  can0  {int(rng.integers(0, 0x7FF)):03X}   [{len(data)}]  "
                     + " ".join(f"{x:02X}" for x in data))
    return lines


# name: (format, file name, lines builder, header line count, name of the member when zipped)
TEXT: dict[str, tuple[str, str, Callable[[np.random.Generator], list[str]], int, str | None]] = {
    "csv": ("csv", "export.csv", _csv, 1, None),
    "csv_zip": ("csv", "export.zip", _csv, 1, "export.csv"),
    "daga": ("daga", "V40_03.can.txt", _daga, 1, None),
    "daga_zip": ("daga", "V40_03.can.zip", _daga, 1, "V40_03.can.txt"),
    "cic": ("cic", "decimal_x.csv", _cic, 1, None),
    "cic_zip": ("cic", "decimal_x.csv.zip", _cic, 1, "decimal_x.csv"),
    "carhacking": ("carhacking", "DoS_dataset.csv", _carhacking, 0, None),
    "candump_log": ("candump", "bus.log", _candump_log, 0, None),
    "candump_console": ("candump", "bus.txt", _candump_console, 0, None),
}


def _text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _zip(data: bytes, member: str) -> bytes:
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, data)
    return bio.getvalue()


# --------------------------------------------------------------------------------- mutations
_NUMBERISH = [b"nan", b"inf", b"-inf", b"1e999", b"NaN", b"0x", b"\xc2\xb2", b"-1", b"99999999999999999999"]


def _line_starts(b: bytes) -> list[int]:
    return [0] + [m.end() for m in re.finditer(rb"\n", b)]


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random damages of the kinds real captures show."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 11))
        at = int(rng.integers(0, len(b) + 1))
        starts = _line_starts(bytes(b))
        if kind == 0 and b:  # bit flips
            for _ in range(int(rng.integers(1, 4))):
                p = int(rng.integers(0, len(b)))
                b[p] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # random junk bytes
            b[at:at] = rng.integers(0, 256, int(rng.integers(1, 24))).astype(np.uint8).tobytes()
        elif kind == 2:  # line-break damage
            b[at:at] = [b"\r", b"\r\n", b"\x00", b"\n", b"\r\r"][int(rng.integers(0, 5))]
        elif kind == 3:  # truncation, mid-line or not
            del b[at:]
        elif kind == 4:  # a run of lines repeated elsewhere
            i = int(rng.integers(0, len(starts)))
            j = min(len(starts) - 1, i + int(rng.integers(1, 6)))
            run = bytes(b[starts[i]:starts[j]])
            k = starts[int(rng.integers(0, len(starts)))]
            b[k:k] = run
        elif kind == 5:  # an overlong line, over the csv module's field limit
            b[at:at] = b"7" * 140_000
        elif kind == 6:  # number-like text where numbers are expected
            b[at:at] = _NUMBERISH[int(rng.integers(0, len(_NUMBERISH)))]
        elif kind == 7:  # the first line (a header) again, at a line start
            first = bytes(b[: starts[1]]) if len(starts) > 1 else bytes(b)
            k = starts[int(rng.integers(0, len(starts)))]
            b[k:k] = first
        elif kind == 8 and len(starts) > 2:  # a line deleted
            i = int(rng.integers(0, len(starts) - 1))
            del b[starts[i]:starts[i + 1]]
        elif kind == 9:  # bytes that are not UTF-8
            b[at:at] = [b"\xff", b"\xfe\xff", b"\xc3", b"\xe2\x82"][int(rng.integers(0, 4))]
        elif kind == 10 and b:  # a byte overwritten by a control character
            b[min(at, len(b) - 1)] = int(rng.choice([0, 1, 8, 11, 12, 26, 27, 127]))
    return bytes(b)


def _mutate_zip(zb: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(zb)
    kind = int(rng.integers(0, 3))
    if kind == 0:  # cut short: mid-member or mid-directory
        del b[int(rng.integers(1, len(b))):]
    elif kind == 1:
        for _ in range(int(rng.integers(1, 4))):
            p = int(rng.integers(0, len(b)))
            b[p] ^= 1 << int(rng.integers(0, 8))
    else:
        p = int(rng.integers(0, len(b)))
        b[p:p] = rng.integers(0, 256, int(rng.integers(1, 16))).astype(np.uint8).tobytes()
    return bytes(b)


# --------------------------------------------------------------------------------- helpers
def _read(path: Path, fmt: str, *, what: str, **kw) -> tuple[FrameBatch, object] | None:
    """(batch, reader), or None for a DataError naming ``path``; anything else fails the test."""
    try:
        r = open_capture(path, format=fmt, **kw)
        b = r.read_all()
    except DataError as e:
        assert str(path) in str(e), f"{what}: DataError does not name the file: {e}"
        return None
    except Exception as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{what}: {type(e).__name__} escaped the reader: {e!s:.300}")
    assert isinstance(b, FrameBatch) and r.stats.frames_read == len(b)
    ts = b.timestamp
    # 'nan'/'inf' text, or a line that lost its timestamp, must not reach the frames as a time
    assert np.isfinite(ts).all() or np.isnan(ts).all(), f"{what}: non-finite timestamps mixed in"
    return b, r


def _same_frames(a: FrameBatch, b: FrameBatch) -> None:
    assert len(a) == len(b)
    assert np.array_equal(a.can_id, b.can_id) and np.array_equal(a.length, b.length)
    assert np.array_equal(a.data, b.data) and a.labels() == b.labels()
    assert np.array_equal(a.timestamp, b.timestamp, equal_nan=True)


# -------------------------------------------------------------------------------- the fuzz
@pytest.mark.parametrize("name", list(TEXT))
def test_fuzzed_text_captures_never_crash(tmp_path, name):
    fmt, fname, build, _, member = TEXT[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    text = _text(build(np.random.default_rng(0)))
    read_ok = {False: 0, True: 0}
    for i in range(N_MUTANTS):
        data = _mutate(text, rng)
        if member is not None:
            data = _zip(data, member)
            if i % 2:
                data = _mutate_zip(data, rng)
        p = tmp_path / f"{i}_{fname}"
        p.write_bytes(data)
        chunk = int(rng.choice(CHUNKS))
        for skip in (False, True):
            got = _read(p, fmt, what=f"{name} mutant {i} skip_malformed={skip}", skip_malformed=skip, chunk_size=chunk)
            read_ok[skip] += got is not None
    # the fuzz is not all header or zip damage: skip_malformed reads most mutants
    assert read_ok[True] > N_MUTANTS // 3 and read_ok[True] >= read_ok[False]


def _pythoncan_capture(tmp_path: Path, ext: str) -> bytes:
    can = pytest.importorskip("can")
    rng = np.random.default_rng(1)
    p = tmp_path / f"base.{ext}"
    with can.Logger(str(p)) as w:
        for i in range(N_LINES):
            w.on_message_received(can.Message(
                timestamp=1000 + 0.001 * i, arbitration_id=int(rng.integers(0, 0x7FF)), is_extended_id=False,
                data=bytes(_bytes(rng, int(rng.integers(0, 9)))), channel=0))
    return p.read_bytes()


@pytest.mark.parametrize("ext", ["asc", "trc", "csv"])
def test_fuzzed_pythoncan_captures_never_crash(tmp_path, ext):
    base = _pythoncan_capture(tmp_path, ext)
    rng = np.random.default_rng(len(ext) * 7 + ord(ext[0]))
    for i in range(N_MUTANTS):
        p = tmp_path / f"m{i}.{ext}"
        p.write_bytes(_mutate(base, rng))
        for skip in (False, True):
            _read(p, "pythoncan", what=f"python-can {ext} mutant {i} skip_malformed={skip}", skip_malformed=skip)


# ---------------------------------------------------------------- controlled damage, exact frames
def _damage(kind: str, lines: list[str], j: int, header: str | None) -> tuple[list[bytes], bool]:
    """Lines (bytes) with line ``j`` (0-based) damaged, and whether that line's frame is gone."""
    out = [ln.encode() for ln in lines]
    mid = len(lines[j]) // 2
    if kind in ("lone_cr", "nul", "bad_utf8", "control"):
        ins = {"lone_cr": b"\r", "nul": b"\x00", "bad_utf8": b"\xff", "control": b"\x1b"}[kind]
        out[j] = out[j][:mid] + ins + out[j][mid:]
        return out, True
    if kind == "junk_line":
        out.insert(j, b"#!@ garbage 0x?? ,,, [9]")
        return out, False
    if kind == "header_again":
        out.insert(j, (header or "").encode())
        return out, False
    if kind == "nan_time":
        out[j] = re.sub(rb"\d+\.\d+", b"nan", out[j], count=1)
        return out, True
    if kind == "overlong":  # digits after the first character: an infinite time, a huge ID, or a lost field
        out[j] = out[j][:1] + b"7" * 140_000 + out[j][1:]
        return out, True
    raise AssertionError(kind)


_KINDS = ["lone_cr", "nul", "bad_utf8", "control", "junk_line", "header_again", "nan_time", "overlong"]
_CONTROLLED = [
    (name, kind) for name, v in TEXT.items() for kind in _KINDS
    if v[4] is None  # plain files: the zip layer is tested on its own
    and not (kind == "header_again" and not v[3])
    and not (kind == "nan_time" and name == "cic")  # CICIoV2024 has no timestamps
]


@pytest.mark.parametrize("name, kind", _CONTROLLED)
def test_damaged_line_is_reported_or_skipped_and_the_rest_read_exactly(tmp_path, name, kind):
    fmt, fname, build, n_head, _ = TEXT[name]
    lines = build(np.random.default_rng(0))
    (tmp_path / "clean").mkdir()
    clean = tmp_path / "clean" / fname  # same name: Car-Hacking takes the attack name from it
    clean.write_bytes(_text(lines))
    want = open_capture(clean, format=fmt).read_all()
    assert len(want) == N_LINES
    j = n_head + 17  # a data line in the middle (line number j + 1), inside the third chunk of 7
    damaged, lost = _damage(kind, lines, j, lines[0] if n_head else None)
    p = tmp_path / fname
    p.write_bytes(b"\n".join(damaged) + b"\n")
    with pytest.raises(DataError, match=rf"{re.escape(fname)}:{j + 1}: .*skip_malformed=True"):
        open_capture(p, format=fmt).read_all()
    for chunk in (7, 65536):
        got = _read(p, fmt, what=f"{name} {kind}", skip_malformed=True, chunk_size=chunk)
        assert got is not None
        b, r = got
        assert r.stats.lines_skipped == 1 and r.stats.skip_reasons[0].startswith(f"line {j + 1}: ")
        keep = np.arange(N_LINES) != j - n_head if lost else np.ones(N_LINES, bool)
        _same_frames(b, want.select(keep))


def test_lone_cr_in_a_labelled_csv(tmp_path):
    """The reported case: a lone CR inside a line raised the csv module's raw _csv.Error."""
    p = tmp_path / "labelled.csv"
    p.write_bytes(b"Time,Id,Byte1,Byte2,Byte3,Byte4,Byte5,Byte6,Byte7,Byte8,Label\n"
                  b"0.1,0x1A0,1,2,3,4,5,6,7,8,0\n"
                  b"0.2,0x1A0,1,2\r3,4,5,6,7,8,0\n"
                  b"0.3,0x2B0,8,7,6,5,4,3,2,1,1\n")
    with pytest.raises(DataError, match=r"labelled\.csv:3: .*carriage return.*skip_malformed=True"):
        open_capture(p, format="csv").read_all()
    r = open_capture(p, format="csv", skip_malformed=True)
    b = r.read_all()
    assert r.stats.lines_skipped == 1 and "line 3" in r.stats.skip_reasons[0]
    assert b.can_id.tolist() == [0x1A0, 0x2B0] and b.labels() == ["benign", "attack"]
    assert bytes(b.data[1]) == bytes([8, 7, 6, 5, 4, 3, 2, 1]) and np.allclose(b.timestamp, [0.1, 0.3])
    # the same damage in the header names line 1 and the fix, with or without skip_malformed
    h = tmp_path / "head.csv"
    h.write_bytes(b"Time,Id,Byte1,By\rte2,Label\n0.1,1A0,1,2,0\n")
    for skip in (False, True):
        with pytest.raises(DataError, match=r"head\.csv:1: the header line is damaged: .*carriage return"):
            open_capture(h, format="csv", skip_malformed=skip).read_all()


# -------------------------------------------------------------------------------- zips
@pytest.mark.parametrize("name", ["csv_zip", "daga_zip", "cic_zip"])
def test_damaged_zip_names_the_file(tmp_path, name):
    fmt, fname, build, _, member = TEXT[name]
    zb = _zip(_text(build(np.random.default_rng(0))), member)
    assert len(open_capture(_put(tmp_path, "ok_" + fname, zb), format=fmt).read_all()) == N_LINES
    flipped = bytearray(zb)
    flipped[len(zb) // 3] ^= 0x55  # inside the deflate data: zlib error or bad CRC
    cases = {"cut": zb[: len(zb) // 2], "cut_directory": zb[:-10], "flipped": bytes(flipped)}
    for what, data in cases.items():
        p = _put(tmp_path, f"{what}_{fname}", data)
        for skip in (False, True):
            with pytest.raises(DataError, match=rf"{re.escape(str(p))}: .*zip"):
                open_capture(p, format=fmt, skip_malformed=skip).read_all()


def test_zip_given_to_a_format_that_is_never_zipped(tmp_path):
    p = _put(tmp_path, "DoS_dataset.zip", _zip(_text(_carhacking(np.random.default_rng(0))), "DoS_dataset.csv"))
    with pytest.raises(DataError, match=r"DoS_dataset\.zip: this is a zip archive.*extract"):
        open_capture(p, format="carhacking").read_all()


def _put(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ----------------------------------------------------------------------- odd values, one by one
@pytest.mark.parametrize(
    "fmt, text, msg",  # the last line is the odd one
    [
        # an ID of 4000 hex digits parses, but str() of it raised ValueError while building the message
        ("csv", "Time,Id,Byte1,Label\n0.1,1A0,01,0\n0.2," + "F" * 4000 + ",01,0\n", r"CAN ID F+\.\.\. is negative"),
        ("csv", "Time,Id,Byte1,Label\n0.1,100,1,0\n0.2,100," + "9" * 5000 + ",0\n", "bad decimal byte"),
        ("csv", "Time,Id,Byte1,Label\n0.1,1A0,01,0\ninf,1A0,01,0\n", "not a finite number"),
        ("daga", "timestamp,CAN_ID,DLC,PAYLOAD_HEX,PAYLOAD_BIN,ANOMALY\n0.1,1D0,64,00,0,False\n"
                 "0.2,1D0,6\u00b2,00,0,False\n", "DLC"),
        ("candump", " (0.1)  can0  123   [1]  01\n (0.2)  can0  123   [\u00b2]  01\n", "length field"),
        ("candump", "(0.1) can0 123#01\ncan0 123   [1]  01\n", r"no '\(timestamp\)'"),
        ("carhacking", "1.0,0316,1,05,R\n-inf,0316,1,05,R\n", "not a finite number"),
    ],
)
def test_odd_values_are_line_errors(tmp_path, fmt, text, msg):
    p = _put(tmp_path, "odd.txt", text.encode())
    with pytest.raises(DataError, match=rf"odd\.txt:{text.count(chr(10))}: .*{msg}"):
        open_capture(p, format=fmt).read_all()
    r = open_capture(p, format=fmt, skip_malformed=True)
    assert len(r.read_all()) == 1 and r.stats.lines_skipped == 1
    assert len(str(r.stats.skip_reasons[0])) < 400  # huge values are shortened in messages


def test_repeated_lines_do_not_turn_absolute_console_stamps_into_deltas(tmp_path):
    lines = _candump_console(np.random.default_rng(0))
    p = _put(tmp_path, "bus.txt", _text(lines[:20] + lines[10:12] + lines[20:]))
    b = open_capture(p, format="candump").read_all()
    assert len(b) == N_LINES + 2 and b.timestamp.max() < 0.05  # deltas would have summed to ~0.8 s


def test_pythoncan_frame_with_an_impossible_payload(tmp_path):
    """A damaged TRC line gave python-can a 71-byte classic frame; FrameBatch raised without the file name."""
    lines = _pythoncan_capture(tmp_path, "trc").decode().splitlines()
    frames = [k for k, ln in enumerate(lines) if re.match(r"\s+\d+\s+\S+\s+DT", ln)]
    nth = next(n for n, k in enumerate(frames) if n > 3 and re.search(r" [0-9A-F]{2}\s*$", lines[k]))
    lines[frames[nth]] = lines[frames[nth]].rstrip() + " AB" * 70
    p = _put(tmp_path, "bus.trc", ("\n".join(lines) + "\n").encode())
    with pytest.raises(DataError, match=rf"bus\.trc: frame {nth + 1}: \d+ data bytes exceed 64.*skip_malformed=True"):
        open_capture(p).read_all()
    r = open_capture(p, skip_malformed=True)
    b = r.read_all()
    assert len(b) == N_LINES - 1 and r.stats.lines_skipped == 1
    assert re.fullmatch(rf"frame {nth + 1}: 7\d data bytes exceed 64", r.stats.skip_reasons[0])
