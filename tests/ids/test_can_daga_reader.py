import zipfile
from pathlib import Path

import numpy as np
import pytest

from fastmaml.apps.ids.can.daga import DAGA_HEADER, DagaReader, daga_attack_name
from fastmaml.apps.ids.can.readers import detect_format, open_capture, read_capture
from fastmaml.errors import DataError

# The real DAGA files live beside the repository (../shared/data/ids/daga), read-only.
DAGA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ids" / "daga"
HEAD = ",".join(DAGA_HEADER) + "\n"
BITS = "0" * 64


@pytest.fixture(scope="module")
def daga() -> Path:
    if not DAGA_DIR.is_dir():
        pytest.skip(f"DAGA data not found at {DAGA_DIR} (only present next to the project's checkout)")
    return DAGA_DIR


def _row(ts="0.5", cid="1D0", hx="0011223344556677", lab="FALSE", dlc="64"):
    return f"{ts},{cid},{dlc},{hx},{BITS},{lab}\n"


def _daga(tmp_path, rows, name="x.can.txt", zipped=False, folder="SingleIDReplay"):
    d = tmp_path / folder
    d.mkdir(exist_ok=True)
    text = HEAD + "".join(rows)
    if not zipped:
        p = d / name
        p.write_text(text)
        return p
    p = d / (name + ".zip")
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, text)
    return p


# ------------------------------------------------------------------ real data
def test_clean_trace(daga):
    r = open_capture(daga / "clean" / "V40_03.can.zip")
    assert isinstance(r, DagaReader)
    calls = []
    slow = r._slow
    r._slow = lambda line: calls.append(line) or slow(line)  # the clean file must never need the slow path
    b = r.read_all()
    assert len(b) == 245_144 == r.stats.frames_read and r.stats.lines_skipped == 0 and not calls
    assert int(b.is_attack().sum()) == 0 and set(b.labels()) == {"benign"}
    assert len(np.unique(b.can_id)) == 50 and b.can_id.max() <= 0x7FF and not b.is_extended.any()
    assert b.has_timestamps and (np.diff(b.timestamp) >= 0).all() and abs(b.timestamp[-1] - 153.2) < 0.1
    assert (b.length == 8).all() and (b.dlc == 8).all()
    # first rows of the README: 0.0,10,...,000000002FB031F8 / 9e-06,1D0,...,0000000000000061
    assert b.can_id[:3].tolist() == [0x10, 0x1D0, 0x291] and b.timestamp[1] == 9e-06
    assert bytes(b.data[0]) == bytes.fromhex("000000002FB031F8") and bytes(b.data[1]) == bytes.fromhex("0000000000000061")


def test_single_id_replay_adds_to_the_clean_trace(daga):
    clean = read_capture(daga / "clean" / "V40_03.can.zip")
    b = read_capture(daga / "infected" / "SingleIDReplay" / "ID_8_V40_03.can.zip")
    att = b.is_attack()
    assert len(b) == 245_297 and int(att.sum()) == 153 and set(b.can_id[att].tolist()) == {0x8}
    assert b.label_names == ["benign", "single_id_replay"]
    ben = b.select(~att)  # README: the False rows are exactly the clean trace
    assert np.array_equal(ben.can_id, clean.can_id) and np.array_equal(ben.data, clean.data)
    # same times, but the text differs in float noise on some rows (0.0008960000000000002 vs 0.000896)
    assert np.allclose(ben.timestamp, clean.timestamp, rtol=0, atol=1e-9)


def test_ordered_sequence_replay_float_ids(daga):
    b = DagaReader(daga / "infected" / "OrderedSequenceReplay" / "n_2_V40_03.can.zip").read_all()
    att = b.is_attack()
    assert len(b) == 245_452 and int(att.sum()) == 308 and b.labels()[int(np.argmax(att))] == "ordered_sequence_replay"
    ids, counts = np.unique(b.can_id[att], return_counts=True)
    assert ids.tolist() == [0x1, 0x290] and counts.tolist() == [154, 154]  # written as "1.0" and "290.0"


def test_short_zero_payload(daga):
    b = read_capture(daga / "infected" / "SingleIDReplay" / "ID_1_V40_03.can.zip", attack="replay")
    att = b.is_attack()
    assert int(att.sum()) == 612 and set(b.labels()) == {"benign", "replay"}
    one = att & (b.can_id == 1)  # these rows carry PAYLOAD_HEX "0"
    assert int(one.sum()) == 153 and (b.length[one] == 8).all() and not b.data[one].any()


# ------------------------------------------------------------ synthetic files
def test_attack_names():
    assert daga_attack_name("infected/SingleIDReplay/ID_8_V40_03.can.zip") == "single_id_replay"
    assert daga_attack_name("infected/OrderedSequenceReplay/n_5_V40_03.can.zip") == "ordered_sequence_replay"
    assert daga_attack_name("d/infected/DenialOfService/lowestID_V40_03.can.zip") == "dos"
    assert daga_attack_name("MessageIDFuzzing/V40_03.can.zip") == "message_id_fuzzing"
    assert daga_attack_name("PayloadFuzzing/ID_1_V40_03.can.zip") == "payload_fuzzing"
    assert daga_attack_name("ArbitrarySequenceReplay/n_2_V40_03.can.zip") == "arbitrary_sequence_replay"
    assert daga_attack_name("x/BrakeLightSpoofing/a.can.zip") == "brake_light_spoofing"
    assert daga_attack_name("flat/PayloadFuzzing_ID_8.can.txt") == "payload_fuzzing"
    assert daga_attack_name("clean/V40_03.can.zip") == "attack"


@pytest.mark.parametrize("zipped", [False, True])
def test_quirks_plain_and_zip(tmp_path, zipped):
    rows = [_row("0.0", "10"), _row("9e-06", "1D0", lab="False"), _row("0.7200019999999999", "290.0", lab="True"),
            _row("0.8", "1.0", hx="0", lab="TRUE"), _row("0.9", "7ff", hx="00000000000000ff", lab="false"),
            _row("1.0", "8", lab="true")]
    p = _daga(tmp_path, rows, zipped=zipped)
    assert detect_format(p) == "daga"
    r = open_capture(p, chunk_size=4)
    b = r.read_all()
    assert r.attack == "single_id_replay" and r.stats.frames_read == 6
    assert b.can_id.tolist() == [0x10, 0x1D0, 0x290, 0x1, 0x7FF, 0x8]
    assert b.labels() == ["benign", "benign", "single_id_replay", "single_id_replay", "benign", "single_id_replay"]
    assert b.timestamp[2] == 0.7200019999999999 and b.timestamp[1] == 9e-06
    assert bytes(b.data[3]) == bytes(8) and b.length[3] == 8
    assert bytes(b.data[4]) == bytes(7) + b"\xff" and bytes(b.data[0]) == bytes.fromhex("0011223344556677")
    assert DagaReader(p, attack="Replay").read_all().label_names == ["benign", "replay"]


def test_fast_and_precise_paths_agree(tmp_path, read_fast_and_precise):
    rows = [_row(f"{i * 0.001}", f"{(i * 37) % 0x7FF:X}" + (".0" if i % 5 == 0 else ""),
                 f"{i * 7919:016X}" if i % 9 else "0", "True" if i % 4 == 0 else "FALSE") for i in range(300)]
    p = _daga(tmp_path, rows)
    fast, slow = read_fast_and_precise(DagaReader, p, chunk_size=64)
    for col in ("timestamp", "can_id", "is_extended", "dlc", "length", "data"):
        assert np.array_equal(getattr(fast, col), getattr(slow, col)), col
    assert fast.labels() == slow.labels() and len(fast) == 300


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("0.3,1D0,64,0011223344556677,0\n", "expected 6 comma-separated"),
        ("0.3,1G0,64,0011223344556677,0,False\n", "bad hex CAN_ID"),
        ("0.3,1D0,64,00112233445566778,0,False\n", "bad PAYLOAD_HEX"),
        ("0.3,1D0,64,00112233X4556677,0,False\n", "bad PAYLOAD_HEX"),
        ("0.3,1D0,63,0011223344556677,0,False\n", "DLC '63'"),
        ("0.3,1D0,64,0011223344556677,0,maybe\n", "ANOMALY must be"),
        ("x0.3,1D0,64,0011223344556677,0,False\n", "bad timestamp"),
        ("\x00\x01\xff\xfe,,,,,\n", "binary"),
    ],
)
@pytest.mark.parametrize("zipped", [False, True])
def test_malformed_lines(tmp_path, bad, msg, zipped):
    p = _daga(tmp_path, [_row()] * 2 + [bad] + [_row()] * 2, zipped=zipped)
    with pytest.raises(DataError, match=rf"{p.name}:4: .*({msg})"):
        read_capture(p, format="daga")
    r = open_capture(p, format="daga", skip_malformed=True)
    assert len(r.read_all()) == 4 and r.stats.lines_skipped == 1 and "line 4" in r.stats.skip_reasons[0]


def test_bad_id_policies(tmp_path):
    p = _daga(tmp_path, [_row(cid="100"), _row(cid="FFF", lab="True"), _row(cid="200")])
    with pytest.raises(DataError, match=r"x\.can\.txt:3: CAN ID 0xFFF out of range for a 11-bit .*bad_id='skip'"):
        read_capture(p)
    r = open_capture(p, bad_id="skip")
    b = r.read_all()
    assert b.can_id.tolist() == [0x100, 0x200] and r.stats.lines_skipped == 1 and r.bad_ids == 1
    assert "bad_id='skip'" in r.stats.skip_reasons[0]
    r = open_capture(p, bad_id="keep")
    b = r.read_all()
    assert b.can_id.tolist() == [0x100, 0xFFF, 0x200] and r.bad_ids == 1 and not b.is_extended.any()
    assert b.labels()[1] == "single_id_replay"
    with pytest.raises(DataError, match="bad_id must be"):
        DagaReader(p, bad_id="drop")


def test_header_empty_and_zip_members(tmp_path):
    p = tmp_path / "e.can.txt"
    p.write_text("")
    assert len(DagaReader(p).read_all()) == 0
    p.write_text(HEAD)
    assert len(DagaReader(p).read_all()) == 0
    p.write_text("timestamp,CAN_ID,DLC,PAYLOAD_HEX,ANOMALY\n0.0,10,64,00,False\n")
    with pytest.raises(DataError, match=r"e\.can\.txt:1: not a DAGA CSV header"):
        DagaReader(p).read_all()
    z = tmp_path / "two.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.can.txt", HEAD + _row())
        zf.writestr("b.can.txt", HEAD + _row())
    with pytest.raises(DataError, match="exactly one"):
        DagaReader(z).read_all()
    with pytest.raises(DataError, match="attack name"):
        DagaReader(_daga(tmp_path, [_row()]), attack="benign")
