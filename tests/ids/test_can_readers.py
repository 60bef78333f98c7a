import zipfile
from pathlib import Path

import numpy as np
import pytest

from fastmaml.apps.ids.can.readers import (
    CandumpReader,
    CarHackingReader,
    CicIov2024Reader,
    detect_format,
    load_label_file,
    open_capture,
    read_capture,
)
from fastmaml.errors import DataError

FIX = Path(__file__).parent / "fixtures"
CIC_LINE = "65,96,0,0,0,0,0,0,0,BENIGN,BENIGN,BENIGN\n"
CIC_HEAD = "ID,DATA_0,DATA_1,DATA_2,DATA_3,DATA_4,DATA_5,DATA_6,DATA_7,label,category,specific_class\n"


def test_cic_fixture_and_zip(tmp_path):
    b = read_capture(FIX / "cic_sample.csv")
    assert len(b) == 32 and not b.has_timestamps
    labs = b.labels()
    assert labs[:12] == ["benign"] * 12
    assert set(labs) == {"benign", "dos", "gas", "rpm", "speed", "steering_wheel"}
    assert b.can_id[0] == 65 and bytes(b.data[2]) == bytes([127, 255] * 4)
    # same file inside a zip with a __MACOSX entry, small chunks to cross chunk borders
    z = tmp_path / "x.csv.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(FIX / "cic_sample.csv", "x.csv")
        zf.writestr("__MACOSX/._x.csv", b"\x00\x05\x16\x07junk")
    r = open_capture(z, chunk_size=5)
    b2 = r.read_all()
    assert r.stats.frames_read == 32 and np.array_equal(b2.data, b.data) and b2.labels() == labs


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("65,96,0,0,0,0\n", "12 comma-separated"),
        ("65,96,0,0,0,x0,0,0,0,BENIGN,BENIGN,BENIGN\n", "decimal integers"),
        ("65,96,0,0,0,300,0,0,0,BENIGN,BENIGN,BENIGN\n", "outside 0..255"),
        ("\x00\x01garbage\xff,\n", "binary|12 comma"),
    ],
)
def test_cic_malformed(tmp_path, bad, msg):
    p = _write(tmp_path, "c.csv", CIC_HEAD + CIC_LINE * 3 + bad + CIC_LINE)
    with pytest.raises(DataError, match=rf"c\.csv:5: .*({msg})"):
        read_capture(p, format="cic")
    r = open_capture(p, format="cic", skip_malformed=True)
    b = r.read_all()
    assert len(b) == 4 and r.stats.lines_skipped == 1 and "line 5" in r.stats.skip_reasons[0]


def test_cic_empty_and_wrong_header(tmp_path):
    r = CicIov2024Reader(_write(tmp_path, "e.csv", ""))
    assert len(r.read_all()) == 0 and r.stats.frames_read == 0
    r = CicIov2024Reader(_write(tmp_path, "h.csv", CIC_HEAD))
    assert len(r.read_all()) == 0
    with pytest.raises(DataError, match="not a CICIoV2024"):
        CicIov2024Reader(_write(tmp_path, "w.csv", "a,b,c\n1,2,3\n")).read_all()
    with pytest.raises(DataError, match="not a CICIoV2024"):
        CicIov2024Reader(_write(tmp_path, "g.csv", bytes(range(256)) * 4)).read_all()


def test_cic_shared_files(shared_data):
    d = shared_data / "ids" / "ciciov2024" / "decimal"
    r = open_capture(d / "decimal_spoofing-GAS.csv")
    b = r.read_all()
    assert r.stats.frames_read == 9991 == len(b) and r.stats.lines_skipped == 0
    assert set(b.labels()) == {"gas"}
    # the zip: read only the first chunk (full file is benchmarked, not tested)
    r = open_capture(d / "decimal_benign.csv.zip", chunk_size=20000)
    first = next(iter(r))
    assert len(first) == 20000 and set(first.labels()) == {"benign"} and first.can_id[0] == 65


def test_carhacking_fixture():
    r = open_capture(FIX / "carhacking_sample.csv")
    assert isinstance(r, CarHackingReader) and r.attack == "carhacking_sample"
    b = CarHackingReader(FIX / "carhacking_sample.csv", attack="DoS").read_all()
    assert len(b) == 10 and b.has_timestamps
    assert b.labels().count("dos") == 2 and b.labels()[0] == "benign"
    assert b.can_id[0] == 0x316 and bytes(b.data[0]) == bytes.fromhex("05216809212100 6f".replace(" ", ""))
    assert b.dlc[7] == 2 and b.length[7] == 2 and bytes(b.data[7]) == b"\x01\x00" + bytes(6)
    assert abs(b.timestamp[0] - 1478198376.389427) < 1e-6


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("1478198376.3,0316,8,05,21,68,09\n", "disagrees|DLC"),
        ("1478198376.3,0316,8,05,21,68,09,21,21,00,6f\n", "disagrees|flag"),
        ("1478198376.3,03G6,2,05,21,R\n", "bad hex CAN ID"),
        ("1478198376.3,0316,2,05,2z,R\n", "bad hex data"),
        ("1478198376.3,0316,3,05,21,R\n", "DLC 3 disagrees"),
        ("1478198376.3,0316,2,05,21,X\n", "flag must be"),
        ("\x89PNG\r\x00\x00binary\xff\xfe\n", "binary"),
    ],
)
def test_carhacking_malformed(tmp_path, bad, msg):
    good = "1478198376.389427,0316,8,05,21,68,09,21,21,00,6f,R\n"
    p = _write(tmp_path, "DoS_dataset.csv", good * 2 + bad + good)
    with pytest.raises(DataError, match=rf"DoS_dataset\.csv:3: .*({msg})"):
        read_capture(p, format="carhacking")
    r = open_capture(p, format="carhacking", skip_malformed=True)
    assert len(r.read_all()) == 3 and r.stats.lines_skipped == 1 and r.attack == "dos"


def test_candump_log_fixture():
    b = read_capture(FIX / "candump_log_sample.log")
    assert len(b) == 6 and b.has_timestamps
    assert b.can_id.tolist() == [0x0C1, 0x123, 0x18FEDF00, 0x7DF, 0x123, 0x456]
    assert b.is_extended.tolist() == [False, False, True, False, False, False]
    assert b.is_remote.tolist() == [False, True, False, False, False, False]
    assert b.is_fd.tolist() == [False, False, False, False, True, False]
    assert b.length.tolist() == [8, 0, 8, 2, 12, 0] and b.dlc[4] == 9
    assert b.frame(4).data == bytes.fromhex("112233445566778899AABBCC")
    assert b.frame(0).data == bytes.fromhex("0011223344556677")


def test_candump_fd_payload_exact(tmp_path):
    p = _write(tmp_path, "fd.log", "(1.0) can0 123##1" + "AB" * 12 + "\n(2.0) can0 123##0" + "01" * 64 + "\n")
    b = read_capture(p)
    assert b.frame(0).data == b"\xab" * 12 and b.frame(1).data == b"\x01" * 64 and b.data.shape[1] == 64


def test_candump_console_forms(tmp_path):
    b = read_capture(FIX / "candump_console_sample.txt")
    assert b.can_id.tolist() == [0x18FEDF00, 0x0C1, 0x123, 0x7DF]
    assert b.is_remote.tolist() == [False, False, True, False] and b.length.tolist() == [8, 4, 0, 0]
    assert np.allclose(b.timestamp, [0.0, 0.005001, 0.010002, 0.015003])
    # -td: deltas get accumulated
    p = _write(tmp_path, "d.txt", " (000.010000)  can0  0C1   [1]  01\n (000.002000)  can0  0C1   [1]  02\n"
               " (000.003000)  can0  0C1   [1]  03\n")
    assert np.allclose(read_capture(p).timestamp, [0.010, 0.012, 0.015])
    # no timestamps and -x columns
    p = _write(tmp_path, "n.txt", "  can0  RX - -  0C1   [2]  01 02\n  can0  0C1   [08]  01 02 03 04 05 06 07 08\n")
    b = read_capture(p)
    assert not b.has_timestamps and b.length.tolist() == [2, 8] and b.is_fd.tolist() == [False, True]


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("(1436509052.3) can0 0C1#00112233445566", "(?!)|"),  # 7 bytes is a legal frame, see below
        ("(1436509052.3) can0 0C1#0011223", "bad hex data"),
        ("(1436509052.3) can0 0C1#00GG", "bad hex data"),
        ("(1436509052.3) can0 0C1", "missing '#'|expected|length field"),
        ("(1436509052.3) can0 0C12#00", "3 \\(11-bit\\) or 8"),
        ("(1436509052.3) can0 0C1#001122334455667788", "exceed 8"),
        ("(14365x9052.3) can0 0C1#00", "bad timestamp"),
        ("\x00\x00\xff\xfe\x01garbage", "binary"),
        (" (000.1)  can0  0C1   [4]  11 22 33", "disagrees"),
    ],
)
def test_candump_malformed(tmp_path, bad, msg):
    good = "(1436509052.249713) can0 0C1#0011223344556677\n"
    p = _write(tmp_path, "x.log", good + bad + "\n" + good)
    if msg == "(?!)|":  # a 7-byte classic frame is valid
        assert read_capture(p).length.tolist() == [8, 7, 8]
        return
    with pytest.raises(DataError, match=rf"x\.log:2: .*({msg})"):
        read_capture(p, format="candump")
    r = open_capture(p, format="candump", skip_malformed=True)
    assert len(r.read_all()) == 2 and r.stats.lines_skipped == 1


def test_candump_labels_side_file(tmp_path):
    lab = _write(tmp_path, "l.csv", "index,label\n" + "".join(f"{i},{'dos' if i % 2 else 'benign'}\n" for i in range(6)))
    b = CandumpReader(FIX / "candump_log_sample.log", labels=lab, chunk_size=4).read_all()
    assert b.labels() == ["benign", "dos"] * 3
    short = _write(tmp_path, "s.csv", "index,label\n0,benign\n1,dos\n")
    with pytest.raises(DataError, match="labels but"):
        CandumpReader(FIX / "candump_log_sample.log", labels=short).read_all()
    codes, names = load_label_file(FIX / "carhacking_sample.csv")
    assert len(codes) == 10 and names[0] == "benign"


def test_empty_candump_and_detect(tmp_path):
    r = open_capture(_write(tmp_path, "e.log", ""))
    assert len(r.read_all()) == 0 and r.stats.frames_read == 0
    assert detect_format(FIX / "cic_sample.csv") == "cic"
    assert detect_format(FIX / "carhacking_sample.csv") == "carhacking"
    assert detect_format(FIX / "candump_console_sample.txt") == "candump"
    with pytest.raises(DataError, match="cannot tell"):
        detect_format(_write(tmp_path, "q.dat", "hello world\n"))
    with pytest.raises(DataError, match="not found"):
        open_capture(tmp_path / "missing.log")


def test_chunking_invariance(tmp_path):
    lines = "".join(f"({1000 + i * 0.01:.6f}) can0 {i % 7:03X}#{i % 256:02X}{(i * 7) % 256:02X}\n" for i in range(500))
    p = _write(tmp_path, "big.log", lines)
    a = read_capture(p, chunk_size=7)
    b = read_capture(p)
    assert len(a) == 500 and np.array_equal(a.data, b.data) and np.array_equal(a.timestamp, b.timestamp)


@pytest.mark.parametrize("ext", [".asc", ".blf", ".trc", ".csv", ".log"])
def test_python_can_roundtrip(tmp_path, ext):
    can = pytest.importorskip("can")
    msgs = [
        can.Message(timestamp=100.0 + i * 0.01, arbitration_id=0x100 + i, is_extended_id=False,
                    data=bytes([i, 2 * i, 255 - i]), channel=0)
        for i in range(20)
    ]
    msgs.append(can.Message(timestamp=100.5, arbitration_id=0x18FEDF00, is_extended_id=True, data=b"\x01" * 8, channel=0))
    if ext != ".trc":  # python-can's TRC writer drops remote frames
        msgs.append(can.Message(timestamp=100.6, arbitration_id=0x123, is_remote_frame=True, dlc=2, channel=0))
    p = tmp_path / f"cap{ext}"
    with can.Logger(str(p)) as log:
        for m in msgs:
            log.on_message_received(m)
    r = open_capture(p, chunk_size=8)
    b = r.read_all()
    assert r.stats.frames_read == len(msgs) == len(b)
    assert b.can_id.tolist() == [m.arbitration_id for m in msgs]
    assert b.frame(3).data == bytes([3, 6, 252]) and b.is_extended[20] and b.is_remote[-1] == (ext != ".trc")
    assert np.allclose(b.timestamp[1] - b.timestamp[0], 0.01, atol=1e-4)


def test_python_can_corrupt(tmp_path):
    pytest.importorskip("can")
    p = _write(tmp_path, "bad.blf", b"LOGG" + bytes(range(200)))
    with pytest.raises(DataError, match=r"bad\.blf"):
        read_capture(p)


@pytest.mark.parametrize(
    "path, cls",
    [("cic_sample.csv", CicIov2024Reader), ("carhacking_sample.csv", CarHackingReader),
     ("candump_log_sample.log", CandumpReader)],
)
def test_fast_and_precise_paths_agree(path, cls, monkeypatch):
    fast = cls(FIX / path).read_all()

    def no_fast(self, lines):
        raise ValueError("forced")

    monkeypatch.setattr(cls, "_fast", no_fast)
    slow = cls(FIX / path).read_all()
    for col in ("timestamp", "can_id", "is_extended", "is_remote", "is_fd", "dlc", "length", "data"):
        assert np.array_equal(getattr(fast, col), getattr(slow, col), equal_nan=col == "timestamp"), col
    assert fast.labels() == slow.labels()


# ------------------------------------------------------- out-of-range identifiers
def _bad_id_log(tmp_path):
    """Eight frames with distinct IDs; frame 4 has the 11-bit ID 0xFFF. Labels name each frame's class."""
    ids = [0x100, 0x101, 0x102, 0x103, 0xFFF, 0x105, 0x106, 0x107]
    labs = ["benign", "dos", "benign", "dos", "fuzzy", "benign", "gear", "dos"]
    log = _write(tmp_path, "b.log", "".join(f"({1000 + i * 0.01:.6f}) can0 {c:03X}#{i:02X}\n" for i, c in enumerate(ids)))
    lab = _write(tmp_path, "b.csv", "index,label\n" + "".join(f"{i},{x}\n" for i, x in enumerate(labs)))
    return log, lab, ids, labs


@pytest.mark.parametrize("chunk", [3, 4, 5, 100])
def test_bad_id_skip_keeps_side_labels_aligned(tmp_path, chunk):
    log, lab, ids, labs = _bad_id_log(tmp_path)
    with pytest.raises(DataError, match=r"b\.log:5: CAN ID 0xFFF out of range for a 11-bit identifier.*bad_id='skip'"):
        CandumpReader(log, labels=lab, chunk_size=chunk).read_all()
    r = CandumpReader(log, labels=lab, chunk_size=chunk, bad_id="skip")
    b = r.read_all()
    assert b.can_id.tolist() == ids[:4] + ids[5:]
    assert b.labels() == labs[:4] + labs[5:]  # frame 5 is still "benign", frame 6 "gear": nothing shifted
    assert [bytes(b.data[i][:1])[0] for i in range(7)] == [0, 1, 2, 3, 5, 6, 7]
    assert r.stats.lines_skipped == 1 and r.bad_ids == 1 and "line 5" in r.stats.skip_reasons[0]
    # skip_malformed with the default bad_id drops it the same way, label included
    b = CandumpReader(log, labels=lab, chunk_size=chunk, skip_malformed=True).read_all()
    assert b.labels() == labs[:4] + labs[5:]
    r = CandumpReader(log, labels=lab, chunk_size=chunk, bad_id="keep")
    b = r.read_all()
    assert b.can_id.tolist() == ids and b.labels() == labs and r.bad_ids == 1 and not b.is_extended.any()


def test_bad_id_keep_counts_once_when_the_chunk_falls_back(tmp_path):
    text = "(1.0) can0 FFF#00\n(1.1) can0 123#01\n(1.2) can0 123#0G\n(1.3) can0 FFF#02\n"
    r = CandumpReader(_write(tmp_path, "k.log", text), bad_id="keep", skip_malformed=True)
    b = r.read_all()
    assert b.can_id.tolist() == [0xFFF, 0x123, 0xFFF] and r.bad_ids == 2 and r.stats.lines_skipped == 1
    r = CandumpReader(_write(tmp_path, "k2.log", "(1.0) can0 FFF#00\n(1.1) can0 123#01\n"), bad_id="keep")
    assert len(r.read_all()) == 2 and r.bad_ids == 1  # fast path


def test_bad_id_carhacking_and_console(tmp_path):
    good = "1478198376.389427,0316,2,05,21,R\n"
    p = _write(tmp_path, "DoS_dataset.csv", good + "1478198376.4,3FFFFFFF,2,05,21,T\n" + good)
    with pytest.raises(DataError, match=r"DoS_dataset\.csv:2: CAN ID 0x3FFFFFFF out of range for a 29-bit"):
        read_capture(p, format="carhacking")
    r = open_capture(p, format="carhacking", bad_id="skip")
    assert len(r.read_all()) == 2 and r.stats.lines_skipped == 1
    b = read_capture(p, format="carhacking", bad_id="keep")
    assert b.can_id[1] == 0x3FFFFFFF and b.labels() == ["benign", "dos", "benign"]
    c = _write(tmp_path, "c.txt", " (0.1)  can0  FFF   [1]  01\n (0.2)  can0  123   [1]  02\n")
    with pytest.raises(DataError, match=r"c\.txt:1: CAN ID 0xFFF"):
        read_capture(c)
    assert read_capture(c, bad_id="skip").can_id.tolist() == [0x123]
    with pytest.raises(DataError, match="bad_id must be"):
        CandumpReader(c, bad_id="ignore")


def test_detect_daga_and_csv(tmp_path):
    daga = "timestamp,CAN_ID,DLC,PAYLOAD_HEX,PAYLOAD_BIN,ANOMALY\n0.0,10,64,0011223344556677,0,FALSE\n"
    p = _write(tmp_path, "V40.can.txt", daga)
    assert detect_format(p) == "daga"
    z = tmp_path / "V40.can.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("V40.can.txt", daga)
    assert detect_format(z) == "daga" and len(read_capture(z)) == 1
    assert detect_format(_write(tmp_path, "e.csv", "Time,ID,DLC,Data,Label\n1.0,123,2,0102,Normal\n")) == "csv"
    # a CSV header inside a .txt is a CSV, not a candump log
    assert detect_format(_write(tmp_path, "e.txt", "timestamp;can_id;data;class\n1.0;123;0102;0\n")) == "csv"
    with pytest.raises(DataError, match="unknown capture format"):
        open_capture(p, format="asc")
    with pytest.raises(DataError, match="the daga reader does not take that option"):
        open_capture(p, columns={"id": "CAN_ID"})


def test_bad_id_python_can(tmp_path):
    can = pytest.importorskip("can")
    p = tmp_path / "x.asc"
    with can.Logger(str(p)) as log:
        for i, aid in enumerate([0x100, 0xFFF, 0x200]):
            log.on_message_received(can.Message(timestamp=1 + i, arbitration_id=aid, is_extended_id=False,
                                                data=bytes([i]), channel=0))
    lab = _write(tmp_path, "l.csv", "index,label\n0,benign\n1,dos\n2,gear\n")
    with pytest.raises(DataError, match=r"x\.asc: frame 2: CAN ID 0xFFF out of range"):
        read_capture(p)
    r = open_capture(p, bad_id="skip", labels=lab, chunk_size=1)
    b = r.read_all()
    assert b.can_id.tolist() == [0x100, 0x200] and b.labels() == ["benign", "gear"] and r.stats.lines_skipped == 1
    assert read_capture(p, bad_id="keep", labels=lab).labels() == ["benign", "dos", "gear"]
