"""Streaming pcap / pcapng reader for automotive Ethernet, decoding into numpy columns.

dpkt does the file-format work (pcap and pcapng records); this module only slices each
captured frame to its first ``HEAD`` bytes and then decodes every header field for a whole
chunk of packets at once with numpy, because per-packet Python decoding would cap
throughput far below the 100k packets/s the detector needs.

Decoded per packet (one row of :class:`PacketChunk`):

* Ethernet: timestamp, src/dst MAC (as 48-bit ints), 802.1Q VLAN id + PCP (QinQ: the inner
  tag, with the outer VLAN id in ``outer_vlan``), EtherType after the tags, captured length.
* IEEE 1722 AVTP (0x22F0): subtype, stream ID, sequence number, AVTP timestamp, stream-data
  length, payload prefix. Stream subtypes (AAF, CVF, 61883, RVF, TSCF, ...) use the common
  24-byte stream header; NTSCF its 12-byte header; CRF its 20-byte header.
* gPTP (0x88F7): message type, sequence id, correction field (raw, ns * 2**16), domain,
  source clock identity, origin timestamp (bytes 34..43, when present).
* IPv4 / IPv6 (no extension headers) + UDP: addresses (IPv6: low 32 bits), ports.
* SOME/IP over UDP: service, method, client, session, protocol / interface version,
  message type, return code, length. Detected by port (``someip_ports``) or, with
  ``someip_heuristic``, by header sanity (protocol version 1, length matching the datagram,
  known message type).
* CAN carried in IEEE 1722 ACF (ACF CAN and ACF CAN Brief messages inside NTSCF or TSCF)
  and in CAN-in-UDP. For CAN-in-UDP there is no standard, so fastmaml defines one
  (:data:`CAN_UDP_PORT`): the UDP payload is a sequence of records
  ``[4-byte big-endian word: bit31 = extended id, bit30 = RTR, bit29 = CAN FD, bits 0..28 = id]
  [1-byte data length 0..64] [data]``. The first CAN frame of a packet is in the columns
  (``can_id``, ``can_len``, ``can_data``), ``can_count`` says how many the packet carries;
  :func:`iter_can_frames` yields all of them.

Malformed packets never raise: they are counted per reason in :class:`ReadStats` and
(by default) skipped; ``index`` keeps each row's position in the file so side-CSV labels
keyed by packet index still line up. A file cut mid-record is reported by a
:class:`TruncatedCaptureWarning` (or a :class:`~fastmaml.errors.DataError` with
``on_truncated="raise"``) after all complete packets were yielded, and ``stats.truncated_file``
is set. A link type other than Ethernet, or a file that is neither pcap nor pcapng, raises
``DataError``.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

import dpkt
import dpkt.pcapng
import numpy as np

from fastmaml.errors import DataError

# ----------------------------------------------------------------------------- constants
ETH_AVTP = 0x22F0
ETH_GPTP = 0x88F7
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)

AVTP_61883 = 0x00
AVTP_AAF = 0x02
AVTP_CVF = 0x03
AVTP_CRF = 0x04
AVTP_TSCF = 0x05
AVTP_RVF = 0x07
AVTP_NTSCF = 0x82
ACF_CAN = 0x01
ACF_CAN_BRIEF = 0x02

PTP_SYNC = 0x0
PTP_PDELAY_REQ = 0x2
PTP_PDELAY_RESP = 0x3
PTP_FOLLOW_UP = 0x8
PTP_PDELAY_RESP_FUP = 0xA
PTP_ANNOUNCE = 0xB

SOMEIP_SD_PORT = 30490
#: Default SOME/IP ports: SD plus a configurable block of service ports.
SOMEIP_PORTS: tuple[int, ...] = (SOMEIP_SD_PORT, *range(30501, 30511))
#: UDP port of fastmaml's CAN-in-UDP encapsulation (see module docstring).
CAN_UDP_PORT = 30600
SOMEIP_MSG_TYPES = (0x00, 0x01, 0x02, 0x80, 0x81, 0x20, 0x21, 0x22, 0xA0, 0xA1)

#: Protocol codes of the ``proto`` column.
PROTO_OTHER, PROTO_AVTP, PROTO_GPTP, PROTO_SOMEIP, PROTO_CAN_UDP, PROTO_UDP, PROTO_IP, PROTO_ARP = range(8)
PROTO_NAMES = ("other", "avtp", "gptp", "someip", "can_udp", "udp", "ip", "arp")

#: Malformed-packet reasons (index = code in the ``malformed`` column; 0 = well formed).
MALFORMED_REASONS = (
    "",
    "short_ethernet",
    "short_vlan",
    "short_avtp",
    "avtp_length_exceeds_frame",
    "short_gptp",
    "bad_ipv4_header",
    "short_ip",
    "short_udp",
    "bad_someip",
    "bad_acf",
    "bad_can_udp",
)
_R = {name: i for i, name in enumerate(MALFORMED_REASONS)}

DLT_EN10MB = 1
_LINKTYPE_NAMES = {
    0: "NULL/loopback", 101: "RAW IP", 105: "IEEE 802.11", 113: "Linux cooked (SLL)",
    127: "802.11 radiotap", 195: "IEEE 802.15.4", 227: "SocketCAN", 228: "IPv4", 229: "IPv6",
    276: "Linux cooked v2 (SLL2)",
}

# Frames are decoded from their first HEAD bytes: 2 VLAN tags + max IPv4 header + UDP +
# SOME/IP header + payload prefix all fit, so no field we decode lies beyond it.
_MAX_PREFIX = 32
HEAD = 14 + 8 + 60 + 8 + 16 + _MAX_PREFIX
# A record larger than this is corruption, not a frame; refusing it avoids reading a
# multi-GB capture into memory on one bad length field.
_MAX_RECORD = 64 * 1024 * 1024


# ----------------------------------------------------------------------------- data types
@dataclass
class PacketChunk:
    """Decoded packets as numpy columns (one row per packet).

    Absent fields are ``-1`` (integers), ``0`` (ids, addresses, bytes) or NaN (floats).
    ``ptp_correction`` is the raw correction field (nanoseconds * 65536).
    """

    index: np.ndarray          # int64, position of the packet in the file (0-based)
    ts: np.ndarray             # float64 capture timestamp, seconds
    length: np.ndarray         # int32 captured frame length, bytes
    dst_mac: np.ndarray        # uint64 (48-bit)
    src_mac: np.ndarray        # uint64 (48-bit)
    vlan: np.ndarray           # int16 VLAN id (inner tag), -1 untagged
    pcp: np.ndarray            # int8 priority code point, -1 untagged
    outer_vlan: np.ndarray     # int16 outer (QinQ) VLAN id, -1 if fewer than 2 tags
    ethertype: np.ndarray      # int32 EtherType after VLAN tags
    proto: np.ndarray          # int8 PROTO_* code
    malformed: np.ndarray      # int8 index into MALFORMED_REASONS (0 = ok)
    avtp_subtype: np.ndarray   # int16
    avtp_stream_id: np.ndarray  # uint64
    avtp_seq: np.ndarray       # int16 (0..255)
    avtp_ts: np.ndarray        # int64 AVTP presentation timestamp (ns, 32-bit wrap), -1 absent
    avtp_data_len: np.ndarray  # int32 stream-data length field
    ptp_type: np.ndarray       # int8
    ptp_seq: np.ndarray        # int32
    ptp_correction: np.ndarray  # int64 raw (ns * 2**16)
    ptp_domain: np.ndarray     # int16
    ptp_clock_id: np.ndarray   # uint64 source clock identity
    ptp_origin_ts: np.ndarray  # float64 seconds from the message's origin timestamp, NaN absent
    ip_src: np.ndarray         # uint32
    ip_dst: np.ndarray         # uint32
    sport: np.ndarray          # int32 UDP source port, -1
    dport: np.ndarray          # int32 UDP destination port, -1
    someip_service: np.ndarray  # int32
    someip_method: np.ndarray  # int32
    someip_client: np.ndarray  # int32
    someip_session: np.ndarray  # int32
    someip_proto_ver: np.ndarray  # int16
    someip_iface_ver: np.ndarray  # int16
    someip_msg_type: np.ndarray  # int16
    someip_return_code: np.ndarray  # int16
    someip_length: np.ndarray  # int64
    can_id: np.ndarray         # int64 first CAN frame's identifier, -1 none
    can_len: np.ndarray        # int16 its data length in bytes
    can_flags: np.ndarray      # int16 bit0 extended id, bit1 RTR, bit2 FD
    can_count: np.ndarray      # int16 number of CAN frames in the packet
    can_data: np.ndarray       # uint8 [n, 8] first data bytes of the first CAN frame
    payload: np.ndarray        # uint8 [n, P] first payload bytes (after the innermost decoded header)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def select(self, rows: np.ndarray) -> "PacketChunk":
        """Rows at the given indices or boolean mask."""
        return PacketChunk(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def concat(chunks: Sequence["PacketChunk"]) -> "PacketChunk":
        """All rows of several chunks (at least one) in order."""
        if not chunks:
            raise DataError("PacketChunk.concat: no chunks given; read at least one packet first")
        return PacketChunk(**{f.name: np.concatenate([getattr(c, f.name) for c in chunks]) for f in fields(PacketChunk)})

    def row(self, i: int) -> dict[str, Any]:
        """One packet as a dict of Python values (for inspection and tests)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)[i]
            out[f.name] = bytes(v) if isinstance(v, np.ndarray) else v.item()
        return out


@dataclass
class ReadStats:
    """What a read saw: packet counts, malformed packets per reason, file truncation."""

    path: str = ""
    packets: int = 0               # records read from the file (well formed or not)
    yielded: int = 0               # rows handed out
    malformed: Counter = field(default_factory=Counter)  # reason -> count
    truncated_file: bool = False
    linktype: int = -1

    def summary(self) -> str:
        """One line for logs."""
        bad = ", ".join(f"{k}={v}" for k, v in sorted(self.malformed.items())) or "none"
        trunc = " (file truncated mid-record)" if self.truncated_file else ""
        return f"{self.path}: {self.packets} packets, {self.yielded} kept, malformed: {bad}{trunc}"


class TruncatedCaptureWarning(UserWarning):
    """The capture ends in the middle of a record; packets before the cut were read."""


class _CorruptRecord(Exception):
    pass


class _TrackedFile:
    """File wrapper that notices short reads, so truncation is detected for both formats.

    dpkt's readers stop silently (pcapng) or yield a short last packet (pcap) when a file
    is cut; a clean end of file shows as exactly one empty read at a record boundary, so
    any short non-empty read, or a second empty read, means the file was cut.
    """

    def __init__(self, f: BinaryIO, name: str) -> None:
        self._f = f
        self.name = name
        self.short = False
        self._empty = 0
        # was each of the last two reads short? (tells whether the last yielded packet was cut)
        self.hist: deque[bool] = deque([False, False], maxlen=2)

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > _MAX_RECORD:
            raise _CorruptRecord(f"record length {n} bytes is impossible")
        b = self._f.read(n)
        cut = False
        if len(b) < n:
            if b:
                cut = True
            else:
                self._empty += 1
                cut = self._empty > 1
        self.short |= cut
        self.hist.append(cut)
        return b

    def fileno(self) -> int:
        return self._f.fileno()


# ----------------------------------------------------------------------------- reader
class PcapReader:
    """Stream a pcap or pcapng capture of Ethernet frames as :class:`PacketChunk` objects.

    Args:
        path: capture file (``.pcap`` or ``.pcapng``; the format is detected from the magic).
        chunk_size: packets per chunk (memory stays O(chunk_size * HEAD) whatever the file size).
        someip_ports: UDP ports whose datagrams are decoded as SOME/IP.
        someip_heuristic: also decode UDP datagrams on other ports whose header is sane.
        can_udp_port: UDP port of the CAN-in-UDP encapsulation.
        payload_prefix: number of payload bytes kept per packet (<= 32).
        keep_malformed: keep malformed packets as rows (with a non-zero ``malformed`` code)
            instead of skipping them.
        on_truncated: ``"warn"`` (TruncatedCaptureWarning) or ``"raise"`` (DataError after
            the complete packets were yielded) when the file is cut mid-record.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        chunk_size: int = 65536,
        someip_ports: Iterable[int] = SOMEIP_PORTS,
        someip_heuristic: bool = True,
        can_udp_port: int = CAN_UDP_PORT,
        payload_prefix: int = 16,
        keep_malformed: bool = False,
        on_truncated: str = "warn",
    ) -> None:
        if on_truncated not in ("warn", "raise"):
            raise DataError(f"PcapReader: on_truncated must be 'warn' or 'raise', got {on_truncated!r}")
        if not 0 <= payload_prefix <= _MAX_PREFIX:
            raise DataError(f"PcapReader: payload_prefix must be in [0, {_MAX_PREFIX}], got {payload_prefix}")
        if chunk_size < 1:
            raise DataError(f"PcapReader: chunk_size must be >= 1, got {chunk_size}")
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: capture file not found; check the path")
        self.chunk_size = int(chunk_size)
        self.someip_ports = np.array(sorted(set(int(p) for p in someip_ports)), dtype=np.int64)
        self.someip_heuristic = bool(someip_heuristic)
        self.can_udp_port = int(can_udp_port)
        self.payload_prefix = int(payload_prefix)
        self.keep_malformed = bool(keep_malformed)
        self.on_truncated = on_truncated
        self.stats = ReadStats(path=str(self.path))

    # -- file level ---------------------------------------------------------
    def _open(self, f: _TrackedFile) -> Any:
        head = f._f.read(4)
        f._f.seek(0)
        try:
            if head == b"\x0a\x0d\x0d\x0a":
                rd = dpkt.pcapng.Reader(f)
                fmt = "pcapng"
            else:
                rd = dpkt.pcap.Reader(f)
                fmt = "pcap"
        except (ValueError, dpkt.dpkt.Error, struct.error, _CorruptRecord) as e:
            raise DataError(
                f"{self.path}: not a readable pcap or pcapng capture ({e}); "
                "give a libpcap (.pcap) or pcapng file written by tcpdump/Wireshark/dpkt"
            ) from None
        lt = int(rd.datalink())
        self.stats.linktype = lt
        if lt != DLT_EN10MB:
            name = _LINKTYPE_NAMES.get(lt, "unknown")
            raise DataError(
                f"{self.path}: {fmt} link type {lt} ({name}) is not Ethernet (1); this reader decodes "
                "Ethernet frames only: capture on the Ethernet interface or convert the file"
            )
        return rd

    def chunks(self) -> Iterator[PacketChunk]:
        """Yield decoded chunks of up to ``chunk_size`` packets, streaming through the file."""
        self.stats = ReadStats(path=str(self.path))
        with open(self.path, "rb") as raw:
            f = _TrackedFile(raw, str(self.path))
            rd = self._open(f)
            it = iter(rd)
            H = HEAD
            zero = bytes(H)
            idx0 = 0
            # One packet is held back between chunks: only after dpkt's next read do we know
            # whether the previous record was cut short by the end of the file.
            pend: list[tuple[float, int, bytes, bytes]] = []
            while True:
                recs = pend
                pend = []
                stop = False
                ended_normally = False
                try:
                    for ts, buf in it:
                        recs.append((float(ts), len(buf), buf, buf[:H] if len(buf) >= H else (buf + zero)[:H]))
                        if len(recs) > self.chunk_size:
                            pend = [recs.pop()]
                            break
                    else:
                        stop = ended_normally = True
                except (dpkt.dpkt.Error, struct.error) as e:
                    # dpkt failed on a record: either the file was cut (the tracker saw a
                    # short read) or the record is corrupt.
                    if not f.short:
                        raise DataError(
                            f"{self.path}: corrupt record at packet index {idx0 + len(recs)} ({e}); "
                            "the capture is damaged: re-export it or cut it before this packet"
                        ) from None
                    stop = True
                except _CorruptRecord as e:
                    raise DataError(
                        f"{self.path}: corrupt record at packet index {idx0 + len(recs)} ({e}); "
                        "the capture is damaged: re-export it or cut it before this packet"
                    ) from None
                if stop and ended_normally and f.short and f.hist[0] and recs:
                    recs.pop()  # dpkt yielded the cut record with fewer bytes than recorded
                if recs:
                    tss = np.fromiter((r[0] for r in recs), dtype=np.float64, count=len(recs))
                    lens = np.fromiter((r[1] for r in recs), dtype=np.int32, count=len(recs))
                    chunk = self._decode([r[3] for r in recs], [r[2] for r in recs], tss, lens, idx0)
                    idx0 += len(recs)
                    self.stats.packets = idx0
                    if len(chunk):
                        self.stats.yielded += len(chunk)
                        yield chunk
                if stop:
                    break
            if f.short:
                self.stats.truncated_file = True
                msg = (
                    f"{self.path}: capture is truncated mid-record after {idx0} complete packets "
                    "(read them; the cut record was dropped); re-copy the file if you need the rest"
                )
                if self.on_truncated == "raise":
                    raise DataError(msg)
                warnings.warn(msg, TruncatedCaptureWarning, stacklevel=2)

    def packets(self) -> Iterator[dict[str, Any]]:
        """Yield one dict per packet (slow; for inspection, not for detection)."""
        for chunk in self.chunks():
            for i in range(len(chunk)):
                yield chunk.row(i)

    def __iter__(self) -> Iterator[PacketChunk]:
        return self.chunks()

    # -- decoding -----------------------------------------------------------
    def _decode(
        self, heads: list[bytes], bufs: list[bytes], ts: np.ndarray, lens: np.ndarray, idx0: int
    ) -> PacketChunk:
        """Decode one chunk: Ethernet + VLAN tags, then each protocol on its rows, then the payload prefix.

        ``heads`` are the frames cut (or zero-padded) to ``HEAD`` bytes, ``bufs`` the whole
        frames (only the CAN walkers read past ``HEAD``).
        """
        h = _Heads(heads, lens)
        cols = _decode_ethernet(h)
        avtp, acf_off = _decode_avtp(h)
        cols |= avtp
        cols |= _decode_gptp(h)
        ip, udp_off = _decode_ip(h)
        cols |= ip
        udp = _decode_udp(h, udp_off)
        cols |= {"sport": udp.sport_col, "dport": udp.dport_col}
        is_can = (udp.sport == self.can_udp_port) | (udp.dport == self.can_udp_port)
        cols |= _decode_someip(h, udp, ~is_can, self.someip_ports, self.someip_heuristic)
        can_udp_rows = udp.rows[is_can]
        h.proto[can_udp_rows] = PROTO_CAN_UDP
        cols |= _decode_can(h, bufs, acf_off, can_udp_rows)
        cols["payload"] = _payload_prefix(h, self.payload_prefix)

        n = h.n
        chunk = PacketChunk(index=np.arange(idx0, idx0 + n, dtype=np.int64), ts=ts.astype(np.float64), length=lens,
                            proto=h.proto, malformed=h.reason, **cols)
        reason = h.reason
        bad = reason != 0
        if bad.any():
            codes, counts = np.unique(reason[bad], return_counts=True)
            for c, k in zip(codes.tolist(), counts.tolist()):
                self.stats.malformed[MALFORMED_REASONS[c]] += k
            if not self.keep_malformed:
                chunk = chunk.select(~bad)
        return chunk


# ----------------------------------------------------------------------------- protocol decoders
# Each decoder reads a chunk's heads through a _Heads, for all rows of its protocol at once, and
# returns its PacketChunk columns (absent values as PacketChunk says). What several protocols share
# (malformed reason, protocol code, where the payload prefix starts and ends) lives on the _Heads.
class _Heads:
    """A chunk's frames cut to ``HEAD`` bytes as an ``[n, HEAD]`` matrix, with big-endian field readers.

    Decoders fill in the per-packet state: ``reason`` (first malformed reason, 0 = well formed),
    ``proto`` (PROTO_* code), ``et`` / ``off`` (EtherType after the VLAN tags and where its header
    starts, set by :func:`_decode_ethernet`), ``pay_off`` / ``pay_end`` (the payload prefix's span).
    Offsets past ``HEAD`` read the last byte; every decoder bounds them by ``L`` (the captured length).
    """

    def __init__(self, heads: list[bytes], lens: np.ndarray) -> None:
        self.n = n = len(heads)
        self.M = np.frombuffer(b"".join(heads), dtype=np.uint8).reshape(n, HEAD)
        self.L = lens.astype(np.int64)
        self.ar = np.arange(n)
        self.reason = np.zeros(n, dtype=np.int8)
        self.proto = np.zeros(n, dtype=np.int8)
        self.et = np.zeros(n, dtype=np.int64)
        self.off = np.full(n, 14, dtype=np.int64)
        self.pay_off = self.off.copy()
        self.pay_end = self.L.copy()

    def u8(self, rows: np.ndarray, off: np.ndarray) -> np.ndarray:
        return self.M[rows, np.minimum(off, HEAD - 1)].astype(np.int64)

    def be16(self, rows: np.ndarray, off: np.ndarray) -> np.ndarray:
        return (self.u8(rows, off) << 8) | self.u8(rows, off + 1)

    def be32(self, rows: np.ndarray, off: np.ndarray) -> np.ndarray:
        return (self.be16(rows, off) << 16) | self.be16(rows, off + 2)

    def be64u(self, rows: np.ndarray, off: np.ndarray) -> np.ndarray:
        return (self.be32(rows, off).astype(np.uint64) << np.uint64(32)) | self.be32(rows, off + 4).astype(np.uint64)

    def flag(self, rows: np.ndarray, bad: np.ndarray, name: str) -> None:
        """Mark ``rows[bad]`` malformed for ``name``, unless an earlier reason was found."""
        r = rows[bad]
        self.reason[r[self.reason[r] == 0]] = _R[name]

    def rows_of(self, ethertype: int) -> np.ndarray:
        """Well-formed rows so far whose EtherType (after the VLAN tags) is ``ethertype``."""
        return self.ar[(self.reason == 0) & (self.et == ethertype)]


def _decode_ethernet(h: _Heads) -> dict[str, np.ndarray]:
    """MACs, 802.1Q / QinQ tags (the inner tag's VLAN + PCP, the outer VLAN) and the EtherType after them."""
    n, M, ar, L = h.n, h.M, h.ar, h.L
    h.flag(ar, L < 14, "short_ethernet")
    sh = np.uint64(8)
    dst = np.zeros(n, dtype=np.uint64)
    src = np.zeros(n, dtype=np.uint64)
    for k in range(6):
        dst = (dst << sh) | M[:, k].astype(np.uint64)
        src = (src << sh) | M[:, 6 + k].astype(np.uint64)
    et = h.be16(ar, np.full(n, 12))
    off = np.full(n, 14, dtype=np.int64)
    vlan = np.full(n, -1, dtype=np.int16)
    pcp = np.full(n, -1, dtype=np.int8)
    outer = np.full(n, -1, dtype=np.int16)
    t1 = np.isin(et, VLAN_TPIDS)
    if t1.any():
        r = ar[t1]
        tci1 = h.be16(r, np.full(len(r), 14))
        inner = h.be16(r, np.full(len(r), 16))
        t2 = np.isin(inner, VLAN_TPIDS)
        tci2 = h.be16(r, np.full(len(r), 18))
        et2 = h.be16(r, np.full(len(r), 20))
        tci = np.where(t2, tci2, tci1)
        vlan[r] = tci & 0xFFF
        pcp[r] = tci >> 13
        outer[r[t2]] = tci1[t2] & 0xFFF
        et[r] = np.where(t2, et2, inner)
        off[r] = np.where(t2, 22, 18)
        h.flag(r, L[r] < off[r], "short_vlan")
    h.et, h.off = et, off
    h.pay_off = off.copy()
    return {"dst_mac": dst, "src_mac": src, "vlan": vlan, "pcp": pcp, "outer_vlan": outer,
            "ethertype": et.astype(np.int32)}


def _decode_avtp(h: _Heads) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """IEEE 1722 AVTP: subtype, stream ID, sequence, AVTP timestamp, stream-data length.

    Also returns, per row, where ACF messages start (NTSCF / TSCF payloads; -1 elsewhere).
    """
    n, L = h.n, h.L
    avtp_subtype = np.full(n, -1, dtype=np.int16)
    avtp_sid = np.zeros(n, dtype=np.uint64)
    avtp_seq = np.full(n, -1, dtype=np.int16)
    avtp_ts = np.full(n, -1, dtype=np.int64)
    avtp_len = np.full(n, -1, dtype=np.int32)
    acf_off = np.full(n, -1, dtype=np.int64)
    r = h.rows_of(ETH_AVTP)
    if len(r):
        p = h.off[r]
        h.proto[r] = PROTO_AVTP
        st = h.u8(r, p)
        avtp_subtype[r] = st
        ntscf = st == AVTP_NTSCF
        crf = st == AVTP_CRF
        ctrl = (st >= 0x80) & ~ntscf
        hdr = np.select([ntscf, crf, ctrl], [12, 20, 12], 24)
        short = L[r] < p + hdr
        h.flag(r, short, "short_avtp")
        avtp_sid[r] = h.be64u(r, p + 4)
        seq = np.where(ntscf, h.u8(r, p + 3), h.u8(r, p + 2))
        avtp_seq[r] = np.where(ctrl, -1, seq)
        stream_hdr = ~(ntscf | crf | ctrl)
        avtp_ts[r[stream_hdr]] = h.be32(r[stream_hdr], p[stream_hdr] + 12)
        dlen = np.select(
            [ntscf, crf, ctrl],
            [((h.u8(r, p + 1) & 7) << 8) | h.u8(r, p + 2), h.be16(r, p + 16),
             (((h.u8(r, p + 2) & 7) << 8) | h.u8(r, p + 3))],
            h.be16(r, p + 20),
        )
        avtp_len[r] = dlen
        h.flag(r, ~short & (p + hdr + dlen > L[r]), "avtp_length_exceeds_frame")
        h.pay_off[r] = p + hdr
        h.pay_end[r] = np.minimum(L[r], p + hdr + dlen)
        acf = ntscf | (st == AVTP_TSCF)
        acf_off[r[acf]] = (p + hdr)[acf]
    return {"avtp_subtype": avtp_subtype, "avtp_stream_id": avtp_sid, "avtp_seq": avtp_seq, "avtp_ts": avtp_ts,
            "avtp_data_len": avtp_len}, acf_off


def _decode_gptp(h: _Heads) -> dict[str, np.ndarray]:
    """gPTP: message type, domain, correction field (raw), source clock identity, sequence id, origin timestamp."""
    n, L = h.n, h.L
    ptp_type = np.full(n, -1, dtype=np.int8)
    ptp_seq = np.full(n, -1, dtype=np.int32)
    ptp_corr = np.zeros(n, dtype=np.int64)
    ptp_dom = np.full(n, -1, dtype=np.int16)
    ptp_clk = np.zeros(n, dtype=np.uint64)
    ptp_origin = np.full(n, np.nan)
    r = h.rows_of(ETH_GPTP)
    if len(r):
        p = h.off[r]
        h.proto[r] = PROTO_GPTP
        h.flag(r, L[r] < p + 34, "short_gptp")
        ptp_type[r] = h.u8(r, p) & 0xF
        ptp_dom[r] = h.u8(r, p + 4)
        ptp_corr[r] = h.be64u(r, p + 8).view(np.int64)
        ptp_clk[r] = h.be64u(r, p + 20)
        ptp_seq[r] = h.be16(r, p + 30)
        has_ts = L[r] >= p + 44
        rr, pp = r[has_ts], p[has_ts]
        secs = (h.be16(rr, pp + 34) << 32) | h.be32(rr, pp + 36)
        ptp_origin[rr] = secs + h.be32(rr, pp + 40) * 1e-9
        h.pay_off[r] = p + 34
    return {"ptp_type": ptp_type, "ptp_seq": ptp_seq, "ptp_correction": ptp_corr, "ptp_domain": ptp_dom,
            "ptp_clock_id": ptp_clk, "ptp_origin_ts": ptp_origin}


def _decode_ip(h: _Heads) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """ARP (protocol code only), IPv4 and IPv6: addresses (IPv6: low 32 bits), and where UDP starts (-1: no UDP)."""
    n = h.n
    ip_src = np.zeros(n, dtype=np.uint32)
    ip_dst = np.zeros(n, dtype=np.uint32)
    udp_off = np.full(n, -1, dtype=np.int64)
    arp, r4, r6 = h.rows_of(ETH_ARP), h.rows_of(ETH_IPV4), h.rows_of(ETH_IPV6)
    h.proto[arp] = PROTO_ARP
    if len(r4):
        _decode_ipv4(h, r4, ip_src, ip_dst, udp_off)
    if len(r6):
        _decode_ipv6(h, r6, ip_src, ip_dst, udp_off)
    return {"ip_src": ip_src, "ip_dst": ip_dst}, udp_off


def _decode_ipv4(h: _Heads, r4: np.ndarray, ip_src: np.ndarray, ip_dst: np.ndarray, udp_off: np.ndarray) -> None:
    """IPv4 rows ``r4``: header check, addresses; UDP where the fragment offset is 0 (unfragmented or first fragment)."""
    L = h.L
    p = h.off[r4]
    h.proto[r4] = PROTO_IP
    vihl = h.u8(r4, p)
    ihl = (vihl & 0xF) * 4
    bad = ((vihl >> 4) != 4) | (ihl < 20)
    h.flag(r4, bad, "bad_ipv4_header")
    short = ~bad & (L[r4] < p + ihl)
    h.flag(r4, short, "short_ip")
    ip_src[r4] = h.be32(r4, p + 12)
    ip_dst[r4] = h.be32(r4, p + 16)
    frag_off = h.be16(r4, p + 6) & 0x1FFF
    udp = ~bad & ~short & (h.u8(r4, p + 9) == 17) & (frag_off == 0)
    udp_off[r4[udp]] = (p + ihl)[udp]
    h.pay_off[r4] = p + ihl


def _decode_ipv6(h: _Heads, r6: np.ndarray, ip_src: np.ndarray, ip_dst: np.ndarray, udp_off: np.ndarray) -> None:
    """IPv6 rows ``r6`` (no extension headers): low 32 bits of the addresses; UDP when the next header is 17."""
    L = h.L
    p = h.off[r6]
    h.proto[r6] = PROTO_IP
    short = L[r6] < p + 40
    h.flag(r6, short, "short_ip")
    ip_src[r6] = h.be32(r6, p + 20)
    ip_dst[r6] = h.be32(r6, p + 36)
    udp = ~short & (h.u8(r6, p + 6) == 17)
    udp_off[r6[udp]] = p[udp] + 40
    h.pay_off[r6] = p + 40


@dataclass
class _Udp:
    """The rows with a whole UDP header: where it starts, its ports, the datagram payload bytes captured."""

    rows: np.ndarray
    off: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    avail: np.ndarray
    sport_col: np.ndarray  # the PacketChunk columns (every row; -1 without UDP)
    dport_col: np.ndarray


def _decode_udp(h: _Heads, udp_off: np.ndarray) -> _Udp:
    """UDP headers at ``udp_off`` (-1: none): ports; the payload prefix becomes the datagram's payload."""
    n, L = h.n, h.L
    sport = np.full(n, -1, dtype=np.int32)
    dport = np.full(n, -1, dtype=np.int32)
    ru = h.ar[udp_off >= 0]
    if not len(ru):
        e = np.zeros(0, dtype=np.int64)
        return _Udp(ru, e, e, e, e, sport, dport)
    u = udp_off[ru]
    short = L[ru] < u + 8
    h.flag(ru, short, "short_udp")
    ru, u = ru[~short], u[~short]
    h.proto[ru] = PROTO_UDP
    sp, dp = h.be16(ru, u), h.be16(ru, u + 2)
    sport[ru], dport[ru] = sp, dp
    ulen = h.be16(ru, u + 4)
    avail = np.minimum(ulen, L[ru] - u) - 8
    h.pay_off[ru] = u + 8
    h.pay_end[ru] = u + 8 + np.maximum(avail, 0)
    return _Udp(ru, u, sp, dp, avail, sport, dport)


def _decode_someip(h: _Heads, udp: _Udp, candidate: np.ndarray, ports: np.ndarray,
                   heuristic: bool) -> dict[str, np.ndarray]:
    """SOME/IP in the UDP datagrams where ``candidate``: on ``ports``, or (``heuristic``) with a sane header.

    A datagram on a SOME/IP port whose header is not sane is malformed (``bad_someip``).
    """
    n = h.n
    cols = {f"someip_{k}": np.full(n, -1, dtype=np.int32) for k in ("service", "method", "client", "session")}
    for k in ("proto_ver", "iface_ver", "msg_type", "return_code"):
        cols[f"someip_{k}"] = np.full(n, -1, dtype=np.int16)
    cols["someip_length"] = np.full(n, -1, dtype=np.int64)
    ru, u, avail = udp.rows, udp.off, udp.avail
    if not len(ru):
        return cols
    by_port = np.isin(udp.sport, ports) | np.isin(udp.dport, ports)
    s_length = h.be32(ru, u + 12)
    s_type = h.u8(ru, u + 22)
    sane = (
        (avail >= 16) & (s_length >= 8) & (s_length <= avail - 8)
        & (h.u8(ru, u + 20) == 1) & np.isin(s_type, SOMEIP_MSG_TYPES)
    )
    if heuristic:
        someip = (by_port | (sane & (s_length == avail - 8))) & candidate
    else:
        someip = by_port & candidate
    h.flag(ru, someip & ~sane, "bad_someip")
    rs, us = ru[someip], u[someip]
    h.proto[rs] = PROTO_SOMEIP
    cols["someip_service"][rs] = h.be16(rs, us + 8)
    cols["someip_method"][rs] = h.be16(rs, us + 10)
    cols["someip_length"][rs] = s_length[someip]
    cols["someip_client"][rs] = h.be16(rs, us + 16)
    cols["someip_session"][rs] = h.be16(rs, us + 18)
    cols["someip_proto_ver"][rs] = h.u8(rs, us + 20)
    cols["someip_iface_ver"][rs] = h.u8(rs, us + 21)
    cols["someip_msg_type"][rs] = s_type[someip]
    cols["someip_return_code"][rs] = h.u8(rs, us + 23)
    h.pay_off[rs] = us + 24
    h.pay_end[rs] = np.minimum(h.pay_end[rs], us + 16 + s_length[someip])
    return cols


def _decode_can(h: _Heads, bufs: list[bytes], acf_off: np.ndarray, can_udp_rows: np.ndarray) -> dict[str, np.ndarray]:
    """CAN in IEEE 1722 ACF (messages from ``acf_off``) and in CAN-in-UDP (``can_udp_rows``).

    The first frame goes to the columns, vectorized; counting and validating every frame walks the
    whole frames in ``bufs`` (a malformed walk marks the row ``bad_acf`` / ``bad_can_udp``).
    """
    n, reason = h.n, h.reason
    can_id = np.full(n, -1, dtype=np.int64)
    can_len = np.full(n, -1, dtype=np.int16)
    can_flags = np.zeros(n, dtype=np.int16)
    can_count = np.zeros(n, dtype=np.int16)
    can_data = np.zeros((n, 8), dtype=np.uint8)
    acf_rows = h.ar[(acf_off >= 0) & (reason == 0)]
    udp_rows = can_udp_rows[reason[can_udp_rows] == 0]
    for rows, starts, walker, bad_name in ((acf_rows, acf_off, _walk_acf, "bad_acf"),
                                           (udp_rows, h.pay_off, _walk_can_udp, "bad_can_udp")):
        for i in rows.tolist():
            frames, bad = walker(bufs[i], int(starts[i]), int(h.pay_end[i]))
            if bad:
                reason[i] = _R[bad_name]
            can_count[i] = len(frames)
            if frames:
                cid, flags, data = frames[0]
                can_id[i], can_flags[i], can_len[i] = cid, flags, len(data)
                d = data[:8]
                can_data[i, : len(d)] = np.frombuffer(d, dtype=np.uint8)
    return {"can_id": can_id, "can_len": can_len, "can_flags": can_flags, "can_count": can_count,
            "can_data": can_data}


def _payload_prefix(h: _Heads, P: int) -> np.ndarray:
    """The first ``P`` bytes of each row's payload span (after its innermost decoded header), zero-padded."""
    if not P:
        return np.zeros((h.n, 0), dtype=np.uint8)
    k = np.arange(P)
    pos = h.pay_off[:, None] + k[None, :]
    return np.where(pos < h.pay_end[:, None], h.M[h.ar[:, None], np.minimum(pos, HEAD - 1)], 0).astype(np.uint8)


# ----------------------------------------------------------------------------- CAN walkers
CanFrame = tuple[int, int, bytes]  # (identifier, flags, data)


def _walk_acf(buf: bytes, start: int, end: int) -> tuple[list[CanFrame], str]:
    """All ACF CAN / CAN Brief frames in ``buf[start:end]``; second item non-empty if malformed."""
    frames: list[CanFrame] = []
    pos = start
    while pos < end:
        if pos + 2 > end:
            return frames, "bad_acf"
        b0, b1 = buf[pos], buf[pos + 1]
        mtype, mlen = b0 >> 1, (((b0 & 1) << 8) | b1) * 4
        if mlen == 0 or pos + mlen > end:
            return frames, "bad_acf"
        if mtype in (ACF_CAN, ACF_CAN_BRIEF):
            hdr = 16 if mtype == ACF_CAN else 8
            if mlen < hdr:
                return frames, "bad_acf"
            fl = buf[pos + 2]
            pad = fl >> 6
            cid = int.from_bytes(buf[pos + hdr - 4 : pos + hdr], "big") & 0x1FFFFFFF
            dlen = mlen - hdr - pad
            if dlen < 0 or dlen > 64:
                return frames, "bad_acf"
            flags = ((fl >> 3) & 1) | (((fl >> 4) & 1) << 1) | (((fl >> 1) & 1) << 2)
            frames.append((cid, flags, bytes(buf[pos + hdr : pos + hdr + dlen])))
        pos += mlen
    return frames, ""


def _walk_can_udp(buf: bytes, start: int, end: int) -> tuple[list[CanFrame], str]:
    """All records of fastmaml's CAN-in-UDP encapsulation in ``buf[start:end]``."""
    frames: list[CanFrame] = []
    pos = start
    if end - start < 5:
        return frames, "bad_can_udp"
    while pos < end:
        if pos + 5 > end:
            return frames, "bad_can_udp"
        word = int.from_bytes(buf[pos : pos + 4], "big")
        dlen = buf[pos + 4]
        if dlen > 64 or pos + 5 + dlen > end:
            return frames, "bad_can_udp"
        flags = (word >> 31) & 1 | (((word >> 30) & 1) << 1) | (((word >> 29) & 1) << 2)
        frames.append((word & 0x1FFFFFFF, flags, bytes(buf[pos + 5 : pos + 5 + dlen])))
        pos += 5 + dlen
    return frames, ""


def encode_can_udp(frames: Iterable[tuple[int, bytes]] | Iterable[tuple[int, bytes, int]]) -> bytes:
    """UDP payload carrying CAN frames in fastmaml's CAN-in-UDP format.

    Each item is ``(can_id, data)`` or ``(can_id, data, flags)`` with flags bit0 extended,
    bit1 RTR, bit2 FD; ``data`` is at most 64 bytes.
    """
    out = bytearray()
    for fr in frames:
        cid, data = fr[0], fr[1]
        flags = fr[2] if len(fr) > 2 else (1 if cid > 0x7FF else 0)  # type: ignore[misc]
        if len(data) > 64:
            raise DataError(f"encode_can_udp: CAN data of {len(data)} bytes > 64; split the frame")
        word = (cid & 0x1FFFFFFF) | ((flags & 1) << 31) | (((flags >> 1) & 1) << 30) | (((flags >> 2) & 1) << 29)
        out += struct.pack(">IB", word, len(data)) + bytes(data)
    return bytes(out)


def iter_can_frames(path: str | os.PathLike, **reader_kwargs: Any) -> Iterator[tuple[int, float, int, int, bytes]]:
    """Yield every CAN frame carried in a capture: ``(packet index, ts, can_id, flags, data)``.

    Packets are selected with the vectorized decoder, then only those carrying CAN are walked.
    """
    rd = PcapReader(path, **reader_kwargs)
    wanted: dict[int, float] = {}
    for ch in rd.chunks():
        m = ch.can_count > 0
        wanted.update(zip(ch.index[m].tolist(), ch.ts[m].tolist()))
    if not wanted:
        return
    with open(rd.path, "rb") as raw:
        f = _TrackedFile(raw, str(rd.path))
        it = rd._open(f)
        for i, (_, buf) in enumerate(it):
            if i not in wanted:
                continue
            frames = _frames_of(buf, rd.can_udp_port)
            for cid, flags, data in frames:
                yield i, wanted[i], cid, flags, data


def _frames_of(buf: bytes, can_udp_port: int) -> list[CanFrame]:
    """CAN frames of one raw Ethernet frame (slow path used by :func:`iter_can_frames`)."""
    off = 12
    et = int.from_bytes(buf[off : off + 2], "big")
    off += 2
    while et in VLAN_TPIDS and len(buf) >= off + 4:
        et = int.from_bytes(buf[off + 2 : off + 4], "big")
        off += 4
    if et == ETH_AVTP and len(buf) > off:
        st = buf[off]
        if st == AVTP_NTSCF and len(buf) >= off + 12:
            dlen = ((buf[off + 1] & 7) << 8) | buf[off + 2]
            return _walk_acf(buf, off + 12, min(len(buf), off + 12 + dlen))[0]
        if st == AVTP_TSCF and len(buf) >= off + 24:
            dlen = int.from_bytes(buf[off + 20 : off + 22], "big")
            return _walk_acf(buf, off + 24, min(len(buf), off + 24 + dlen))[0]
    if et == ETH_IPV4 and len(buf) >= off + 20 and buf[off + 9] == 17:
        u = off + (buf[off] & 0xF) * 4
        if len(buf) >= u + 8:
            sp, dp, ulen = struct.unpack(">HHH", buf[u : u + 6])
            if can_udp_port in (sp, dp):
                return _walk_can_udp(buf, u + 8, min(len(buf), u + ulen))[0]
    return []


# ----------------------------------------------------------------------------- helpers
def read_pcap(path: str | os.PathLike, **reader_kwargs: Any) -> tuple[PacketChunk, ReadStats]:
    """Read a whole capture into one chunk (small files; stream with :class:`PcapReader` otherwise)."""
    rd = PcapReader(path, **reader_kwargs)
    chunks = list(rd.chunks())
    if not chunks:
        empty = rd._decode([], [], np.zeros(0), np.zeros(0, dtype=np.int32), 0)
        return empty, rd.stats
    return (chunks[0] if len(chunks) == 1 else PacketChunk.concat(chunks)), rd.stats
