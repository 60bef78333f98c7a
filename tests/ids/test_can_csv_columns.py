import zipfile

import numpy as np
import pytest

from fastmaml.apps.ids.can.csv_columns import ColumnCsvReader, ColumnMap, auto_columns, header_auto_maps
from fastmaml.apps.ids.can.readers import detect_format, open_capture, read_capture
from fastmaml.errors import ConfigError, DataError

GERMAN = (
    "Zeit;Kennung;B1;B2;B3;B4;B5;B6;B7;B8;Klasse\n"
    "0,001;1A0;1;2;3;4;5;6;7;255;Normal\n"
    "0,002;2B0;0;0;0;0;0;0;0;0;DoS\n"
    "0,003;1A0;10;20;30;40;50;60;70;80;Fuzzy\n"
    "0,004;1A0;10;20;30;40;50;60;70;80;normal\n"
)
GERMAN_MAP = {"time": "Zeit", "id": "Kennung", "id_base": "hex", "bytes": [f"B{i}" for i in range(1, 9)],
              "byte_base": "dec", "label": "Klasse"}


def _w(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unseen_layout_with_explicit_map(tmp_path):
    p = _w(tmp_path, "de.csv", GERMAN)
    r = open_capture(p, format="csv", columns=GERMAN_MAP)
    assert isinstance(r, ColumnCsvReader)
    b = r.read_all()
    assert b.can_id.tolist() == [0x1A0, 0x2B0, 0x1A0, 0x1A0]
    assert np.allclose(b.timestamp, [0.001, 0.002, 0.003, 0.004])  # decimal comma in a ;-separated file
    assert not read_capture(p, format="csv", columns={**GERMAN_MAP, "time": ""}).has_timestamps
    with pytest.raises(DataError, match=r"de2\.csv:3: column 'Zeit': bad time '0\.0x2'"):
        read_capture(_w(tmp_path, "de2.csv", GERMAN.replace("0,002", "0,0x2")), format="csv", columns=GERMAN_MAP)
    assert bytes(b.data[0]) == bytes([1, 2, 3, 4, 5, 6, 7, 255]) and (b.length == 8).all()
    assert b.labels() == ["benign", "dos", "fuzzy", "benign"]
    # the same from key=value flags, and a ColumnMap instance
    flags = ["id=Kennung", "id_base=hex", "bytes=B1,B2,B3,B4,B5,B6,B7,B8", "byte_base=dec", "label=Klasse", "time="]
    b2 = read_capture(p, format="csv", columns=flags)
    assert np.array_equal(b2.data, b.data) and b2.labels() == b.labels()
    b3 = read_capture(p, format="csv", columns=ColumnMap(id="Kennung", time="", label="Klasse", attack="Attack"))
    assert b3.labels() == ["benign", "attack", "attack", "benign"]
    assert b3.can_id.tolist() == b.can_id.tolist()  # auto: "1A0" has a letter -> hex


def test_unmappable_header_says_which_key(tmp_path):
    p = _w(tmp_path, "de.csv", GERMAN)
    with pytest.raises(DataError, match=r"de\.csv:1: cannot find the CAN identifier.*Kennung.*columns: \{id: <column name>\}.*--column id="):
        read_capture(p, format="csv")
    with pytest.raises(DataError, match=r"column 'Ident' \(columns\.id\) is not in the header"):
        read_capture(p, format="csv", columns={"id": "Ident"})
    q = _w(tmp_path, "q.csv", "Zeit,Kennung,Nutzdaten\n1,2,3\n")
    with pytest.raises(DataError, match=r"cannot find the payload.*'payload'.*'bytes'"):
        read_capture(q, format="csv", columns={"id": "Kennung"})
    with pytest.raises(DataError, match="cannot tell"):
        detect_format(_w(tmp_path, "z.dat", "Zeit,Kennung,Nutzdaten\n1,2,3\n"))


@pytest.mark.parametrize(
    "text",
    [
        "Time,Id,Byte1,Byte2,Byte3,Byte4,Byte5,Byte6,Byte7,Byte8,Label\n"
        "10.5,316,5,33,104,9,33,33,0,111,Normal\n10.6,2047,1,2,0,0,0,0,0,0,DoS\n",
        "timestamp,arbitration_id,dlc,data,label\n10.5,0316,8,05 21 68 09 21 21 00 6F,0\n10.6,7FF,2,0102,1\n",
        "Timestamp\tID\tDLC\tD0\tD1\tD2\tD3\tD4\tD5\tD6\tD7\tFlag\n"
        "10.5\t0316\t8\t05\t21\t68\t09\t21\t21\t00\t6f\tR\n10.6\t07ff\t2\t01\t02\t\t\t\t\t\t\tT\n",
        # can-train-and-test and CAN-MIRGU / CANini: data_field (hex, its length the DLC), dlc_value, attack 0/1
        "timestamp,arbitration_id,data_field,attack\n10.5,0316,052168092121006F,0\n10.6,7FF,0102,1\n",
        "timestamp,arbitration_id,data_field,dlc_value,attack\n10.5,0316,052168092121006F,8,0\n10.6,7FF,0102,2,1\n",
    ],
)
def test_auto_detected_layouts(tmp_path, text):
    p = _w(tmp_path, "export.csv", text)
    assert detect_format(p) == "csv"
    b = read_capture(p)
    assert b.can_id.tolist() == [0x316 if "0316" in text else 316, 0x7FF]
    assert np.allclose(b.timestamp, [10.5, 10.6]) and b.labels()[0] == "benign"
    assert b.labels()[1] in ("dos", "attack") and b.is_attack().tolist() == [False, True]
    if "0316" in text:  # the hex layouts: payload 05 21 68 09 21 21 00 6F, then 2 bytes
        assert bytes(b.data[0]) == bytes.fromhex("052168092121006f")
        assert b.length.tolist() == [8, 2] and bytes(b.data[1]) == b"\x01\x02" + bytes(6)


def test_id_bases(tmp_path):
    text = "time,id,data,label\n1,100,00,0\n2,200,00,0\n"
    p = _w(tmp_path, "d.csv", text)
    assert read_capture(p).can_id.tolist() == [100, 200]  # plain digits: decimal
    assert read_capture(p, columns={"id_base": "hex"}).can_id.tolist() == [0x100, 0x200]
    p = _w(tmp_path, "h.csv", text.replace("1,100", "1,0100"))  # a leading zero says hex
    assert read_capture(p).can_id.tolist() == [0x100, 0x200]
    p = _w(tmp_path, "x.csv", text.replace("id,", "id_hex,"))  # the header says hex
    assert read_capture(p).can_id.tolist() == [0x100, 0x200]
    p = _w(tmp_path, "0x.csv", text.replace("1,100", "1,0x100"))
    assert read_capture(p).can_id.tolist() == [0x100, 0x200]
    with pytest.raises(DataError, match=r"d\.csv:2: column 'id': bad decimal CAN ID.*id_base"):
        read_capture(_w(tmp_path, "d.csv", text.replace("1,100", "1,1A0")), columns={"id_base": "dec"})
    assert auto_columns(["TS_ms", "CAN ID", "Payload", "Class"]) == {
        "time": "TS_ms", "time_unit": "ms", "id": "CAN ID", "payload": "Payload", "label": "Class"}


def test_payload_forms_units_and_labels(tmp_path):
    text = ("time_ms;can_id;payload;dlc;class\n"
            "1500;18FEDF00;01 02 0a ff;4;benign\n"
            "1501;123;0x0102;2;Spoofing-RPM\n"
            "1502;123;1 2 a;3;dos\n"
            "1503;123;;0;DoS\n")
    p = _w(tmp_path, "p.csv", text)
    b = read_capture(p)
    assert np.allclose(b.timestamp, [1.5, 1.501, 1.502, 1.503])
    assert b.can_id.tolist() == [0x18FEDF00, 0x123, 0x123, 0x123] and b.is_extended.tolist() == [True, False, False, False]
    assert b.length.tolist() == [4, 2, 3, 0] and bytes(b.data[0][:4]) == b"\x01\x02\x0a\xff"
    assert bytes(b.data[2][:3]) == b"\x01\x02\x0a"
    assert b.labels() == ["benign", "spoofing-rpm", "dos", "dos"]
    b = read_capture(p, columns={"benign_values": ["DoS"], "time_unit": "us", "time": "time_ms"})
    assert b.labels() == ["benign", "spoofing-rpm", "benign", "benign"] and np.isclose(b.timestamp[0], 0.0015)
    quoted = _w(tmp_path, "q.csv", '"Time","ID","Data","Label"\n"1.0","0x123","01 02, 03","Normal"\n'
                                   '2.0,0x124, 0A0B ,DoS\n')
    b = read_capture(quoted)
    assert b.can_id.tolist() == [0x123, 0x124] and b.frame(0).data == b"\x01\x02\x03" and b.frame(1).data == b"\n\x0b"
    assert b.labels() == ["benign", "dos"]
    iso = _w(tmp_path, "iso.csv", "time,id,data\n2024-01-02 03:04:05.5,1,00\n2024-01-02T03:04:06,2,00\n")
    b = read_capture(iso)
    assert np.isclose(b.timestamp[1] - b.timestamp[0], 0.5) and b.labels() == [None, None]


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("3,1G0,1,2,3,4,5,6,7,8,Normal", r"column 'Id': bad hex CAN ID '1G0'"),
        ("3,1A0,1,2,3,256,5,6,7,8,Normal", r"column 'Byte4': byte value 256 outside 0\.\.255"),
        ("3,1A0,1,2,3,x4,5,6,7,8,Normal", r"column 'Byte4': bad decimal byte"),
        ("3,1A0,1,2,3,4,5,6,7,8", r"expected 11 ','-separated fields"),
        ("3,1A0,1,2,3,4,5,6,7,8,", r"column 'Label': empty label"),
        ("3,1A0,1,2,,4,5,6,7,8,Normal", r"byte columns \['Byte1'.*empty byte before a filled one"),
        ("abc,1A0,1,2,3,4,5,6,7,8,Normal", r"column 'Time': bad time"),
        ("3,1FFFFFFFF,1,2,3,4,5,6,7,8,Normal", r"column 'Id': CAN ID 8589934591 .*does not fit in 32 bits"),
    ],
)
def test_errors_name_line_and_column(tmp_path, bad, msg):
    head = "Time,Id,Byte1,Byte2,Byte3,Byte4,Byte5,Byte6,Byte7,Byte8,Label\n"
    good = "1,1A0,1,2,3,4,5,6,7,8,Normal\n"
    p = _w(tmp_path, "e.csv", head + good * 2 + bad + "\n" + good)
    with pytest.raises(DataError, match=rf"e\.csv:4: {msg}"):
        read_capture(p, columns={"byte_base": "dec"})
    r = open_capture(p, columns={"byte_base": "dec"}, skip_malformed=True)
    assert len(r.read_all()) == 3 and r.stats.lines_skipped == 1 and "line 4" in r.stats.skip_reasons[0]


def test_dlc_with_byte_columns_and_fd(tmp_path):
    p = _w(tmp_path, "dlc.csv", "ts,id,dlc,b0,b1,b2,label\n1,10,2,aa,bb,cc,0\n2,10,0,,,,0\n3,10,4,aa,bb,cc,0\n")
    with pytest.raises(DataError, match=r"dlc\.csv:4: DLC 4 but only 3 byte columns"):
        read_capture(p)
    b = read_capture(p, skip_malformed=True)
    assert b.length.tolist() == [2, 0] and bytes(b.data[0][:3]) == b"\xaa\xbb\x00"
    fd = _w(tmp_path, "fd.csv", "ts,id,data,label\n1,10," + "ab" * 12 + ",0\n2,10,0102,0\n3,10," + "ab" * 13 + ",0\n")
    with pytest.raises(DataError, match=r"fd\.csv:4: .*13 bytes is not a CAN"):
        read_capture(fd)
    b = read_capture(fd, skip_malformed=True)
    assert b.is_fd.tolist() == [True, False] and b.length.tolist() == [12, 2] and b.dlc[0] == 9 and b.data.shape[1] == 64


def test_bad_id_with_11_bit_ids(tmp_path):
    p = _w(tmp_path, "i.csv", "time,id,data,label\n1,100,00,0\n2,FFF,00,1\n3,200,00,0\n")
    assert read_capture(p).is_extended.tolist() == [False, True, False]  # auto: above 0x7FF means 29-bit
    with pytest.raises(DataError, match=r"i\.csv:3: CAN ID 0xFFF out of range for a 11-bit.*bad_id"):
        read_capture(p, columns={"id_bits": 11})
    r = open_capture(p, columns={"id_bits": 11}, bad_id="skip")
    b = r.read_all()
    assert b.can_id.tolist() == [0x100, 0x200] and r.stats.lines_skipped == 1 and b.labels() == ["benign"] * 2
    b = read_capture(p, columns={"id_bits": "11"}, bad_id="keep")
    assert b.can_id.tolist() == [0x100, 0xFFF, 0x200] and b.labels()[1] == "attack" and not b.is_extended.any()


def test_fast_and_precise_paths_agree(tmp_path, read_fast_and_precise):
    rows = "".join(f"{i * 0.01:.2f},{(i * 37) % 0x800:03X},{' '.join(f'{(i + k) % 256:02X}' for k in range(i % 9))},"
                   f"{['Normal', 'DoS', 'Fuzzy'][i % 3]}\n" for i in range(200))
    p = _w(tmp_path, "f.csv", "Time,ID,Data,Class\n" + rows)
    fast, slow = read_fast_and_precise(ColumnCsvReader, p, chunk_size=50)
    for col in ("timestamp", "can_id", "is_extended", "dlc", "length", "data"):
        assert np.array_equal(getattr(fast, col), getattr(slow, col)), col
    assert fast.labels() == slow.labels() and set(fast.labels()) == {"benign", "dos", "fuzzy"} and len(fast) == 200


def test_zip_detection_and_map_validation(tmp_path):
    z = tmp_path / "export.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("export.csv", "Time,Id,Data,Label\n1.0,123,0102,Normal\n")
        zf.writestr("__MACOSX/._export.csv", b"\x00junk")
    assert detect_format(z) == "csv"
    assert read_capture(z).can_id.tolist() == [123]
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("a.csv", "Zeit,Kennung\n1,2\n")
    with pytest.raises(DataError, match="inside the zip"):
        detect_format(bad)
    assert header_auto_maps("Time;Id;Data") and not header_auto_maps("hello world")
    for text in ("", "Time,Id,Data,Label\n", "Time,Id,Data,Label\n\n\n"):
        r = ColumnCsvReader(_w(tmp_path, "h.csv", text))
        assert len(r.read_all()) == 0 and r.stats.frames_read == 0 and r.stats.lines_skipped == 0
    assert ColumnMap.coerce("id=Kennung").id == "Kennung" and ColumnMap.coerce(None) == ColumnMap()
    with pytest.raises(ConfigError, match="unknown column map key"):
        ColumnMap.from_dict({"identifier": "x"})
    with pytest.raises(ConfigError, match="id_base"):
        ColumnMap(id_base="octal")
    with pytest.raises(ConfigError, match="key=value"):
        ColumnMap.from_flags(["id"])
    with pytest.raises(ConfigError, match="only one of"):
        read_capture(z, columns={"payload": "Data", "bytes": "Data"})
