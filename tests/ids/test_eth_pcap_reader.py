"""pcap / pcapng reader against captures written by scapy (not dpkt), with hand-built bytes."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from scapy.all import IP, UDP, Dot1AD, Dot1Q, Ether, Raw, wrpcap
from scapy.utils import PcapNgWriter

from fastmaml.apps.ids.ethernet.pcap_reader import PROTO_AVTP, PROTO_CAN_UDP, PROTO_GPTP, PROTO_SOMEIP, PcapReader, TruncatedCaptureWarning, iter_can_frames, read_pcap
from fastmaml.apps.ids.ethernet.labels import read_labels
from fastmaml.errors import DataError

CAM = "02:00:00:00:00:10"
MCAST = "91:e0:f0:00:00:01"
SID = 0x0200000000100001
T = 1_700_000_000.25


# Bytes are packed here by hand (struct), independently of the simulator's builders.
def avtp_cvf(seq: int, data: bytes, avtp_ts: int = 123456789) -> bytes:
    return struct.pack(">BBBBQIBBHHBB", 0x03, 0x81, seq, 0, SID, avtp_ts, 2, 2, 0, len(data), 0x10, 0) + data


def gptp_follow_up(seq: int, corr_raw: int, sec: int, ns: int) -> bytes:
    hdr = struct.pack(">BBHBBHqIQHHBb", 0x18, 0x02, 44, 3, 0, 0x0008, corr_raw, 0, 0x0200000000FFFE02, 1, seq, 2, -3)
    return hdr + struct.pack(">HII", sec >> 32, sec & 0xFFFFFFFF, ns)


def someip_hdr(service: int, method: int, client: int, session: int, mtype: int, rc: int, payload: bytes) -> bytes:
    return struct.pack(">HHIHHBBBB", service, method, 8 + len(payload), client, session, 1, 3, mtype, rc) + payload


def ntscf_can_brief(seq: int, frames: list[tuple[int, bytes]]) -> bytes:
    msgs = b""
    for cid, data in frames:
        pad = (-len(data)) % 4
        quads = (8 + len(data) + pad) // 4
        msgs += struct.pack(">BBBBI", (0x02 << 1) | (quads >> 8), quads & 0xFF, pad << 6, 1, cid) + data + bytes(pad)
    return struct.pack(">BBBBQ", 0x82, 0x80 | (len(msgs) >> 8), len(msgs) & 0xFF, seq, 0x0200000000200002) + msgs


def tscf_can(seq: int, cid: int, data: bytes) -> bytes:
    pad = (-len(data)) % 4
    quads = (16 + len(data) + pad) // 4
    msg = struct.pack(">BBBBQI", (0x01 << 1), quads, (pad << 6) | (1 << 5) | (1 << 3), 2, 777, cid) + data + bytes(pad)
    return struct.pack(">BBBBQIIHH", 0x05, 0x80, seq, 0, 0x0200000000200003, 0, 0, len(msg), 0) + msg


def packets() -> list:
    p = []
    # 0: VLAN-tagged AVTP CVF
    p.append(Ether(dst=MCAST, src=CAM) / Dot1Q(vlan=10, prio=3, type=0x22F0) / Raw(avtp_cvf(42, bytes(range(100, 140)))))
    # 1: QinQ (802.1ad outer 100, inner 20 prio 5) AVTP CVF
    p.append(Ether(dst=MCAST, src=CAM, type=0x88A8) / Dot1AD(vlan=100, type=0x8100) / Dot1Q(vlan=20, prio=5, type=0x22F0)
             / Raw(avtp_cvf(43, bytes(40))))
    # 2: untagged gPTP Follow_Up, correction 300.5 ns, origin 1700000000.5
    p.append(Ether(dst="01:80:c2:00:00:0e", src="02:00:00:00:00:02", type=0x88F7)
             / Raw(gptp_follow_up(777, int(300.5 * 65536), 1_700_000_000, 500_000_000)))
    # 3: SOME/IP response over VLAN 30 / IPv4 / UDP 30502
    p.append(Ether(src="02:00:00:00:00:12", dst="02:00:00:00:00:03") / Dot1Q(vlan=30, prio=2)
             / IP(src="10.0.0.12", dst="10.0.0.3") / UDP(sport=30502, dport=40001)
             / Raw(someip_hdr(0x1002, 0x0001, 0x0033, 9, 0x80, 0x00, b"\x15\x01")))
    # 4: SOME/IP on an unlisted port (found by header sanity), error message with return code 2
    p.append(Ether(src="02:00:00:00:00:12", dst="02:00:00:00:00:03") / IP(src="10.0.0.12", dst="10.0.0.3")
             / UDP(sport=41000, dport=41001) / Raw(someip_hdr(0x4321, 0x8005, 7, 65535, 0x81, 0x02, b"abcd")))
    # 5: ACF CAN Brief x2 in NTSCF
    p.append(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:20") / Dot1Q(vlan=20, prio=5, type=0x22F0)
             / Raw(ntscf_can_brief(5, [(0x123, bytes([1, 2, 3, 4, 5])), (0x7FF, bytes(8))])))
    # 6: ACF CAN (extended id, with message timestamp) in TSCF
    p.append(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:20", type=0x22F0)
             / Raw(tscf_can(9, 0x18FEF100, bytes([9, 8, 7, 6, 5, 4, 3, 2]))))
    # 7: CAN-in-UDP: two records
    rec = struct.pack(">IB", 0x80000000 | 0x18DAF110, 3) + b"\xaa\xbb\xcc" + struct.pack(">IB", 0x244, 2) + b"\x01\x02"
    p.append(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:21") / IP(src="10.0.0.21", dst="10.0.0.2")
             / UDP(sport=30600, dport=30600) / Raw(rec))
    for i, pk in enumerate(p):
        pk.time = T + i * 0.001
    return p


def check_fields(c) -> None:
    assert len(c) == 8
    np.testing.assert_allclose(c.ts, T + np.arange(8) * 0.001, atol=2e-6)
    r = c.row(0)
    assert r["dst_mac"] == 0x91E0F0000001 and r["src_mac"] == 0x020000000010
    assert (r["vlan"], r["pcp"], r["outer_vlan"], r["ethertype"], r["proto"]) == (10, 3, -1, 0x22F0, PROTO_AVTP)
    assert (r["avtp_subtype"], r["avtp_stream_id"], r["avtp_seq"], r["avtp_ts"], r["avtp_data_len"]) == (
        3, SID, 42, 123456789, 40)
    assert r["payload"] == bytes(range(100, 116))
    assert r["length"] == 14 + 4 + 24 + 40
    r = c.row(1)
    assert (r["vlan"], r["pcp"], r["outer_vlan"], r["avtp_seq"]) == (20, 5, 100, 43)
    r = c.row(2)
    assert (r["proto"], r["vlan"], r["ptp_type"], r["ptp_seq"], r["ptp_domain"]) == (PROTO_GPTP, -1, 8, 777, 3)
    assert r["ptp_correction"] == int(300.5 * 65536) and r["ptp_clock_id"] == 0x0200000000FFFE02
    assert r["ptp_origin_ts"] == pytest.approx(1_700_000_000.5, abs=1e-9)
    r = c.row(3)
    assert r["proto"] == PROTO_SOMEIP and (r["vlan"], r["sport"], r["dport"]) == (30, 30502, 40001)
    assert (r["ip_src"], r["ip_dst"]) == (0x0A00000C, 0x0A000003)
    assert (r["someip_service"], r["someip_method"], r["someip_client"], r["someip_session"]) == (0x1002, 1, 0x33, 9)
    assert (r["someip_proto_ver"], r["someip_iface_ver"], r["someip_msg_type"], r["someip_return_code"]) == (1, 3, 0x80, 0)
    assert r["someip_length"] == 10 and r["payload"][:2] == b"\x15\x01"
    r = c.row(4)
    assert r["proto"] == PROTO_SOMEIP and (r["someip_service"], r["someip_method"]) == (0x4321, 0x8005)
    assert (r["someip_session"], r["someip_msg_type"], r["someip_return_code"]) == (65535, 0x81, 2)
    r = c.row(5)
    assert (r["avtp_subtype"], r["avtp_seq"], r["can_count"], r["can_id"], r["can_len"]) == (0x82, 5, 2, 0x123, 5)
    assert r["can_data"][:5] == bytes([1, 2, 3, 4, 5]) and r["can_flags"] == 0
    r = c.row(6)
    assert (r["avtp_subtype"], r["can_count"], r["can_id"], r["can_len"], r["can_flags"] & 1) == (5, 1, 0x18FEF100, 8, 1)
    assert r["can_data"] == bytes([9, 8, 7, 6, 5, 4, 3, 2])
    r = c.row(7)
    assert (r["proto"], r["can_count"], r["can_id"], r["can_len"], r["can_flags"]) == (PROTO_CAN_UDP, 2, 0x18DAF110, 3, 1)
    assert r["can_data"][:3] == b"\xaa\xbb\xcc"


def test_scapy_pcap_every_field(tmp_path: Path) -> None:
    wrpcap(str(tmp_path / "a.pcap"), packets())
    c, st = read_pcap(tmp_path / "a.pcap")
    assert st.packets == 8 and not st.malformed and not st.truncated_file
    check_fields(c)


def test_scapy_pcapng_every_field(tmp_path: Path) -> None:
    w = PcapNgWriter(str(tmp_path / "a.pcapng"))
    for p in packets():
        w.write(p)
    w.close()
    c, st = read_pcap(tmp_path / "a.pcapng")
    check_fields(c)


def test_streaming_chunks_equal_one_shot(tmp_path: Path) -> None:
    wrpcap(str(tmp_path / "a.pcap"), packets())
    chunks = list(PcapReader(tmp_path / "a.pcap", chunk_size=3).chunks())
    assert [len(c) for c in chunks] == [3, 3, 2]
    one, _ = read_pcap(tmp_path / "a.pcap")
    from fastmaml.apps.ids.ethernet.pcap_reader import PacketChunk
    both = PacketChunk.concat(chunks)
    for name in ("index", "avtp_seq", "can_id", "someip_service", "payload", "ptp_correction"):
        np.testing.assert_array_equal(getattr(both, name), getattr(one, name))


def test_iter_can_frames_yields_all_frames(tmp_path: Path) -> None:
    wrpcap(str(tmp_path / "a.pcap"), packets())
    frames = [(i, cid, data) for i, _, cid, _, data in iter_can_frames(tmp_path / "a.pcap")]
    assert frames == [(5, 0x123, bytes([1, 2, 3, 4, 5])), (5, 0x7FF, bytes(8)), (6, 0x18FEF100, bytes(range(9, 1, -1))),
                      (7, 0x18DAF110, b"\xaa\xbb\xcc"), (7, 0x244, b"\x01\x02")]


def test_malformed_packets_counted_and_skipped(tmp_path: Path) -> None:
    good = packets()
    bad = [
        Raw(bytes(good[0])[:10]),                                        # short Ethernet
        Ether(dst=MCAST, src=CAM, type=0x22F0) / Raw(avtp_cvf(1, b"")[:15]),  # AVTP header cut
        Ether(dst=MCAST, src=CAM, type=0x22F0) / Raw(avtp_cvf(1, bytes(40))[:40]),  # data length > frame
        Ether(dst="01:80:c2:00:00:0e", src=CAM, type=0x88F7) / Raw(b"\x18\x02" + bytes(10)),  # gPTP cut
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=30501, dport=30501) / Raw(b"\x00" * 9),  # SOME/IP short
        # NTSCF whose ACF message claims 9 quadlets (36 B) in 8 bytes of data
        Ether(type=0x22F0) / Raw(struct.pack(">BBBBQ", 0x82, 0x80, 8, 0, 1) + struct.pack(">BBBBI", 0x04, 0x09, 0, 0, 1)),
        Ether() / IP() / UDP(sport=30600, dport=30600) / Raw(struct.pack(">IB", 5, 9) + b"\x01"),  # CAN-in-UDP cut
    ]
    allp = [good[0], *bad, good[3]]
    for i, p in enumerate(allp):
        p.time = T + i
    wrpcap(str(tmp_path / "m.pcap"), allp)
    c, st = read_pcap(tmp_path / "m.pcap")
    assert st.packets == 9
    assert dict(st.malformed) == {"short_ethernet": 1, "short_avtp": 1, "avtp_length_exceeds_frame": 1, "short_gptp": 1,
                                  "bad_someip": 1, "bad_acf": 1, "bad_can_udp": 1}
    assert c.index.tolist() == [0, 8]  # the good packets keep their file positions
    kept, st2 = read_pcap(tmp_path / "m.pcap", keep_malformed=True)
    assert len(kept) == 9 and (kept.malformed != 0).sum() == 7


def _write_sample(tmp_path: Path, ng: bool = False) -> Path:
    path = tmp_path / ("s.pcapng" if ng else "s.pcap")
    if ng:
        w = PcapNgWriter(str(path))
        for p in packets():
            w.write(p)
        w.close()
    else:
        wrpcap(str(path), packets())
    return path


@pytest.mark.parametrize("ng", [False, True])
@pytest.mark.parametrize("cut", [5, 30])  # bytes removed from the end: both land inside the last record
def test_truncated_file_warns_with_count(tmp_path: Path, ng: bool, cut: int) -> None:
    path = _write_sample(tmp_path, ng)
    data = path.read_bytes()
    last_len = len(bytes(packets()[-1]))
    path.write_bytes(data[: len(data) - cut])
    with pytest.warns(TruncatedCaptureWarning, match="after 7 complete packets"):
        c, st = read_pcap(path)
    assert st.truncated_file and len(c) == 7 and c.index.tolist() == list(range(7))
    assert last_len > cut
    with pytest.raises(DataError, match="truncated mid-record after 7"):
        read_pcap(path, on_truncated="raise")


@pytest.mark.parametrize("chunk_size", [1, 7, 8])
def test_truncated_file_at_chunk_boundaries(tmp_path: Path, chunk_size: int) -> None:
    path = _write_sample(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    rd = PcapReader(path, chunk_size=chunk_size)
    with pytest.warns(TruncatedCaptureWarning):
        idx = [i for c in rd.chunks() for i in c.index.tolist()]
    assert idx == list(range(7)) and rd.stats.packets == 7


def test_truncated_inside_record_header(tmp_path: Path) -> None:
    path = _write_sample(tmp_path)
    data = path.read_bytes()
    # keep packets 0..6 complete and 7 bytes of packet 7's 16-byte record header
    full = len(data) - (16 + len(bytes(packets()[-1])))
    path.write_bytes(data[: full + 7])
    with pytest.warns(TruncatedCaptureWarning):
        c, st = read_pcap(path)
    assert len(c) == 7 and st.truncated_file


def test_complete_file_does_not_warn(tmp_path: Path) -> None:
    path = _write_sample(tmp_path, ng=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c, st = read_pcap(path)
    assert len(c) == 8 and not st.truncated_file


def test_wrong_link_type(tmp_path: Path) -> None:
    wrpcap(str(tmp_path / "raw.pcap"), [IP(dst="10.0.0.1") / UDP()], linktype=101)
    with pytest.raises(DataError, match=r"link type 101 .*not Ethernet"):
        read_pcap(tmp_path / "raw.pcap")


@pytest.mark.parametrize("content", [b"this is not a capture file at all....", b"", b"\xd4\xc3"])
def test_garbage_is_data_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "g.pcap").write_bytes(content)
    with pytest.raises(DataError, match="not a readable pcap"):
        read_pcap(tmp_path / "g.pcap")


def test_corrupt_record_length_is_data_error(tmp_path: Path) -> None:
    path = _write_sample(tmp_path, ng=True)
    data = bytearray(path.read_bytes())
    # the 3rd block is the first EPB (after SHB and IDB): make its length absurd
    shb = struct.unpack_from("<I", data, 4)[0]
    idb = struct.unpack_from("<I", data, shb + 4)[0]
    struct.pack_into("<I", data, shb + idb + 4, 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt record at packet index 0"):
        read_pcap(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        PcapReader(tmp_path / "nope.pcap")


def test_labels_by_index_and_timestamp(tmp_path: Path) -> None:
    (tmp_path / "i.csv").write_text("index,timestamp,label,attack\n0,1.0,0,benign\n2,3.0,1,replay\n5,6.0,1,dos\n")
    labels, names = read_labels(tmp_path / "i.csv", index=np.array([0, 1, 2, 5, 7]))
    assert names == ["benign", "dos", "replay"]
    assert labels.tolist() == [0, 0, 2, 1, 0]
    (tmp_path / "t.csv").write_text("timestamp,label\n10.000001,1\n10.5,0\n")
    labels, names = read_labels(tmp_path / "t.csv", ts=np.array([10.0000012, 10.5, 11.0]))
    assert names == ["benign", "attack_1"] and labels.tolist() == [1, 0, 0]


def test_bad_label_csv(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("index,attack\n0,benign\nx,dos\n")
    with pytest.raises(DataError, match="line 3"):
        read_labels(tmp_path / "b.csv", index=np.arange(3))
    (tmp_path / "c.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(DataError, match="'index' or 'timestamp'"):
        read_labels(tmp_path / "c.csv", index=np.arange(3))


def test_capture_without_packets(tmp_path: Path) -> None:
    wrpcap(str(tmp_path / "e.pcap"), [])
    c, st = read_pcap(tmp_path / "e.pcap")
    assert len(c) == 0 and st.packets == 0 and c.payload.shape == (0, 16)
