"""Simulated zonal in-vehicle Ethernet network with attacks, for the few-shot IDS.

No real automotive-Ethernet capture is available, so this module generates one. The
network (all MACs locally administered ``02:00:00:00:00:xx``, IPs ``10.0.0.x``):

==================  =====================================================  ==========  ===
source              traffic                                                VLAN        PCP
==================  =====================================================  ==========  ===
front camera        IEEE 1722 CVF H.264, 30 fps, ~2,000 pkt/s, <= 1,400 B  10          3
head unit           IEEE 1722 AAF, 48 kHz 2ch 16 bit, one packet / ms      10          3
central computer    gPTP grandmaster: Sync + Follow_Up / 125 ms, Announce  untagged    -
                    / s; Pdelay with the zonal switch / s
zonal front/rear,   SOME/IP: notifications (20 ms, 100 ms, 1 s), climate   30          2
telematics          request/response (100 ms), SD OfferService (1 s)
front CAN gateway   ACF CAN in NTSCF, frames of a 10 ms tick bundled        20          5
rear CAN gateway    CAN-in-UDP (port 30600), 5 ids at 20-100 ms             20          5
==================  =====================================================  ==========  ===

Attacks (all inserted between ``attack_window`` fractions of the capture; only the
attacker's packets are labelled):

* ``avtp_injection``: frames injected into the camera stream (same stream ID, spoofed MAC,
  attacker's own sequence counter, garbage payload).
* ``avtp_replay``: byte-exact copies of camera frames captured before the attack.
* ``gptp_sync_manipulation``: extra Sync/Follow_Up from the spoofed grandmaster with a huge
  correction field and shifted precise-origin timestamps, reusing its sequence ids.
* ``gptp_fake_grandmaster``: a new clock (new MAC / clock identity) announcing a better
  priority and sending its own Sync/Follow_Up at 32 Hz.
* ``mac_flooding``: small IPv4 frames with random source MACs and addresses (macof style).
* ``can_dos``: ACF CAN frames with identifier 0x000 at ~2,000 packets/s from the spoofed gateway.
* ``can_replay``: byte copies of earlier ACF CAN packets, replayed with their original spacing.
* ``someip_spoofing``: the telematics ECU (a known node) sends fake OfferService for the
  climate service and fake responses / speed notifications.
* ``someip_request_flood`` (held out, :data:`NEW_ATTACKS`): the head unit floods the climate
  service with requests (~3,000/s).
* ``avtp_stream_flood`` (held out): maximum-size AVTP frames at ~4,000/s on an unused stream ID.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give
byte-identical captures.
"""

from __future__ import annotations

import csv
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import dpkt
import dpkt.pcapng
import numpy as np

from fastmaml.apps.ids.ethernet.pcap_reader import CAN_UDP_PORT, encode_can_udp
from fastmaml.errors import DataError

KNOWN_ATTACKS: tuple[str, ...] = (
    "avtp_injection",
    "avtp_replay",
    "gptp_sync_manipulation",
    "gptp_fake_grandmaster",
    "mac_flooding",
    "can_dos",
    "can_replay",
    "someip_spoofing",
)
#: Flooding variants held back as the "new attack" for few-shot adaptation.
NEW_ATTACKS: tuple[str, ...] = ("someip_request_flood", "avtp_stream_flood")
ATTACKS: tuple[str, ...] = KNOWN_ATTACKS + NEW_ATTACKS
BENIGN = "benign"

T0 = 1_700_000_000.0  # capture start (epoch seconds)


def mac(last: int) -> bytes:
    """Locally administered unicast MAC ``02:00:00:00:00:<last>`` of a simulated node."""
    return bytes([2, 0, 0, 0, (last >> 8) & 0xFF, last & 0xFF])


def ip(last: int) -> int:
    """IPv4 address ``10.0.0.<last>`` as an int."""
    return (10 << 24) | last


# Nodes
CAMERA, HEAD_UNIT, CENTRAL, SWITCH = mac(0x10), mac(0x03), mac(0x02), mac(0x01)
ZONE_FRONT, ZONE_REAR, TELEMATICS = mac(0x11), mac(0x12), mac(0x05)
GW_FRONT, GW_REAR = mac(0x20), mac(0x21)
IP_OF = {CENTRAL: ip(2), HEAD_UNIT: ip(3), TELEMATICS: ip(5), ZONE_FRONT: ip(11), ZONE_REAR: ip(12), GW_REAR: ip(21)}
PTP_MCAST = bytes.fromhex("0180c200000e")
AVTP_MCAST_VIDEO = bytes.fromhex("91e0f0000001")
AVTP_MCAST_AUDIO = bytes.fromhex("91e0f0000002")
SD_MCAST_MAC = bytes.fromhex("01005e40fff5")
SD_MCAST_IP = (224 << 24) | (224 << 16) | (224 << 8) | 245
CAMERA_STREAM = int.from_bytes(CAMERA + b"\x00\x01", "big")
AUDIO_STREAM = int.from_bytes(HEAD_UNIT + b"\x00\x01", "big")
CAN_STREAM = int.from_bytes(GW_FRONT + b"\x00\x02", "big")
GM_CLOCK = int.from_bytes(CENTRAL[:3] + b"\xff\xfe" + CENTRAL[3:], "big")
SWITCH_CLOCK = int.from_bytes(SWITCH[:3] + b"\xff\xfe" + SWITCH[3:], "big")
VLAN_AV, VLAN_CAN, VLAN_SOMEIP = 10, 20, 30
SVC_SPEED, SVC_CLIMATE, SVC_LIGHT, SVC_TELEM = 0x1001, 0x1002, 0x1003, 0x1004
PORT_OF_SVC = {SVC_SPEED: 30501, SVC_CLIMATE: 30502, SVC_LIGHT: 30503, SVC_TELEM: 30504}


# ----------------------------------------------------------------------------- frame builders
def eth_frame(dst: bytes, src: bytes, ethertype: int, payload: bytes, vlan: int | None = None, pcp: int = 0) -> bytes:
    """Ethernet II frame (optionally 802.1Q-tagged), zero-padded to the 60-byte minimum."""
    tag = struct.pack(">HH", 0x8100, (pcp << 13) | vlan) if vlan is not None else b""
    f = dst + src + tag + struct.pack(">H", ethertype) + payload
    return f if len(f) >= 60 else f + bytes(60 - len(f))


def ipv4_udp(src_ip: int, dst_ip: int, sport: int, dport: int, payload: bytes, ident: int = 0, proto: int = 17) -> bytes:
    """IPv4 header (with checksum) + UDP header (checksum 0, allowed on IPv4) + payload."""
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload if proto == 17 else payload
    hdr = struct.pack(">BBHHHBBHII", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0x4000, 64, proto, 0, src_ip, dst_ip)
    s = sum(struct.unpack(">10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return hdr[:10] + struct.pack(">H", ~s & 0xFFFF) + hdr[12:] + udp


def someip(service: int, method: int, client: int, session: int, msg_type: int, payload: bytes,
           return_code: int = 0, iface_ver: int = 1) -> bytes:
    """SOME/IP header + payload (protocol version 1)."""
    return struct.pack(">HHIHHBBBB", service, method, 8 + len(payload), client, session, 1, iface_ver,
                       msg_type, return_code) + payload


def sd_offer(session: int, service: int, endpoint_ip: int, port: int, instance: int = 1) -> bytes:
    """SOME/IP-SD message with one OfferService entry and its IPv4 endpoint option."""
    entry = struct.pack(">BBBBHHBBHI", 0x01, 0, 0, 0x10, service, instance, 1, 0, 3, 0)  # TTL 3 s
    option = struct.pack(">HBBIBBH", 9, 0x04, 0, endpoint_ip, 0, 0x11, port)
    body = struct.pack(">B3xI", 0xC0, len(entry)) + entry + struct.pack(">I", len(option)) + option
    return someip(0xFFFF, 0x8100, 0, session, 0x02, body)


def avtp_stream(subtype: int, seq: int, stream_id: int, avtp_ts: int, fmt: bytes, data: bytes, fs22: int = 0) -> bytes:
    """IEEE 1722 stream PDU with the common 24-byte header (AAF, CVF, TSCF, ...)."""
    return struct.pack(">BBBBQI4sHBB", subtype, 0x81, seq & 0xFF, 0, stream_id, avtp_ts & 0xFFFFFFFF, fmt,
                       len(data), fs22, 0) + data


def ntscf(seq: int, stream_id: int, acf: bytes) -> bytes:
    """IEEE 1722 NTSCF header (12 bytes) followed by ACF messages."""
    n = len(acf)
    return struct.pack(">BBBBQ", 0x82, 0x80 | (n >> 8 & 7), n & 0xFF, seq & 0xFF, stream_id) + acf


def acf_can(can_id: int, data: bytes, ts_ns: int | None = None, bus: int = 0) -> bytes:
    """ACF CAN message (with a message timestamp) or, with ``ts_ns=None``, ACF CAN Brief."""
    brief = ts_ns is None
    hdr = 8 if brief else 16
    pad = (-len(data)) % 4
    quads = (hdr + len(data) + pad) // 4
    eff = 1 if can_id > 0x7FF else 0
    flags = (pad << 6) | ((0 if brief else 1) << 5) | (eff << 3)
    head = struct.pack(">BBBB", ((0x02 if brief else 0x01) << 1) | (quads >> 8), quads & 0xFF, flags, bus & 0x1F)
    if not brief:
        head += struct.pack(">Q", ts_ns & 0xFFFFFFFFFFFFFFFF)
    return head + struct.pack(">I", can_id & 0x1FFFFFFF) + data + bytes(pad)


def ptp(msg_type: int, seq: int, clock_id: int, body: bytes, correction: int = 0, port: int = 1,
        log_interval: int = -3, domain: int = 0) -> bytes:
    """gPTP (802.1AS) message: 34-byte PTP header (transportSpecific 1) + body."""
    ctrl = {0x0: 0, 0x8: 2}.get(msg_type, 5)
    return struct.pack(">BBHBBHqIQHHBb", 0x10 | msg_type, 0x02, 34 + len(body), domain, 0, 0x0208 if msg_type == 0 else 0x0008,
                       correction, 0, clock_id, port, seq & 0xFFFF, ctrl, log_interval) + body


def ptp_ts(t: float) -> bytes:
    """10-byte PTP timestamp (48-bit seconds, 32-bit nanoseconds)."""
    sec = int(t)
    ns = int(round((t - sec) * 1e9))
    if ns >= 1_000_000_000:
        sec, ns = sec + 1, ns - 1_000_000_000
    return struct.pack(">HII", sec >> 32, sec & 0xFFFFFFFF, ns)


# ----------------------------------------------------------------------------- capture
@dataclass
class SimCapture:
    """A simulated capture: frames in time order with per-packet labels.

    Attributes:
        frames: raw Ethernet frames.
        ts: float64 [N] timestamps (seconds since the epoch).
        labels: int64 [N], 0 benign, 1 attack.
        attack: the attack simulated (``"none"`` for benign-only).
    """

    frames: list[bytes]
    ts: np.ndarray
    labels: np.ndarray
    attack: str

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def class_names(self) -> list[str]:
        """``["benign", attack]`` (just ``["benign"]`` for a benign capture)."""
        return [BENIGN] if self.attack == "none" else [BENIGN, self.attack]

    def write(self, pcap_path: str | os.PathLike, labels_csv: str | os.PathLike | None = None,
              pcapng: bool = False) -> None:
        """Write the frames (pcap with ns timestamps, or pcapng) and optionally the label CSV.

        The CSV has a header ``index,timestamp,label,attack`` and one row per packet.
        """
        pcap_path = Path(pcap_path)
        with open(pcap_path, "wb") as fh:
            if pcapng:
                w = dpkt.pcapng.Writer(fh, snaplen=65535)
                for t, f in zip(self.ts.tolist(), self.frames):
                    w.writepkt(f, ts=t)
            else:
                w = dpkt.pcap.Writer(fh, snaplen=65535, nano=True)
                for t, f in zip(self.ts.tolist(), self.frames):
                    w.writepkt(f, ts=t)
        if labels_csv is not None:
            write_label_csv(labels_csv, self.ts, self.labels, self.class_names)


def write_label_csv(path: str | os.PathLike, ts: np.ndarray, labels: np.ndarray, class_names: list[str]) -> None:
    """Write ``index,timestamp,label,attack`` rows (labels index ``class_names``)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "timestamp", "label", "attack"])
        for i, (t, lab) in enumerate(zip(ts.tolist(), labels.tolist())):
            w.writerow([i, f"{t:.9f}", lab, class_names[lab]])


class _Events:
    def __init__(self) -> None:
        self.ts: list[float] = []
        self.frames: list[bytes] = []
        self.attack: list[bool] = []

    def add(self, t: float, frame: bytes, attack: bool = False) -> None:
        self.ts.append(t)
        self.frames.append(frame)
        self.attack.append(attack)


def simulate(
    attack: str = "none",
    duration_s: float = 2.0,
    seed: int = 0,
    *,
    attack_window: tuple[float, float] = (0.3, 0.9),
    intensity: float = 1.0,
    camera: bool = True,
) -> SimCapture:
    """Simulate ``duration_s`` seconds of the zonal network with one attack (or ``"none"``).

    Args:
        attack: one of :data:`ATTACKS` or ``"none"``.
        duration_s: capture length in seconds.
        seed: random seed; equal arguments give identical captures.
        attack_window: start and end of the attack as fractions of the duration.
        intensity: multiplies the attacker's packet rate.
        camera: include the ~2,000 packets/s camera stream (turn off for tiny test captures).
    """
    if attack != "none" and attack not in ATTACKS:
        raise DataError(f"simulate: unknown attack {attack!r}; choose 'none' or one of {ATTACKS}")
    if not duration_s > 0:
        raise DataError(f"simulate: duration_s must be > 0, got {duration_s}")
    a0f, a1f = attack_window
    if not 0 <= a0f < a1f <= 1:
        raise DataError(f"simulate: attack_window must satisfy 0 <= start < end <= 1, got {attack_window}")
    rng = np.random.default_rng(seed)
    ev = _Events()
    D = float(duration_s)
    a0, a1 = T0 + a0f * D, T0 + a1f * D
    cam_rec: list[tuple[float, bytes]] = []
    can_rec: list[tuple[float, bytes]] = []

    if camera:
        _camera(ev, rng, D, cam_rec)
    _audio(ev, rng, D)
    _gptp(ev, rng, D)
    _someip(ev, rng, D)
    _can(ev, rng, D, can_rec)
    if attack != "none":
        _ATTACK_FNS[attack](ev, rng, a0, a1, intensity, cam_rec=cam_rec, can_rec=can_rec)

    ts = np.asarray(ev.ts, dtype=np.float64)
    # Round to whole ns: the capture stores ns, so in-memory and on-disk timestamps agree.
    ts = np.round((ts - T0) * 1e9) / 1e9 + T0
    order = np.argsort(ts, kind="stable")
    frames = [ev.frames[i] for i in order.tolist()]
    labels = np.asarray(ev.attack, dtype=np.int64)[order]
    keep = ts[order] < T0 + D
    return SimCapture([f for f, k in zip(frames, keep.tolist()) if k], ts[order][keep], labels[keep], attack)


# ----------------------------------------------------------------------------- benign sources
def _camera(ev: _Events, rng: np.random.Generator, D: float, rec: list[tuple[float, bytes]]) -> None:
    seq = 0
    fps = 30
    nframes = int(D * fps) + 1
    for fi in range(nframes):
        t_frame = T0 + fi / fps
        idr = fi % 30 == 0
        npk = int(rng.integers(85, 95)) if idr else int(rng.integers(55, 70))
        sizes = np.full(npk, 1400)
        sizes[-1] = int(rng.integers(200, 1400))
        jit = rng.normal(0, 2e-6, npk)
        blob = rng.bytes(int(sizes.sum()))
        pos = 0
        for k in range(npk):
            t = t_frame + k / (npk * fps) + jit[k]
            h264_ts = int((t - T0) * 90_000) & 0xFFFFFFFF
            nal = (0x65 if idr else 0x41) if k == 0 else 0x7C
            data = struct.pack(">IB", h264_ts, nal) + blob[pos : pos + int(sizes[k]) - 5]
            pos += int(sizes[k])
            avtp_t = int((t - T0 + 0.002) * 1e9)
            marker = 0x10 if k == npk - 1 else 0
            f = eth_frame(AVTP_MCAST_VIDEO, CAMERA, 0x22F0,
                          avtp_stream(0x03, seq, CAMERA_STREAM, avtp_t, b"\x02\x02\x00\x00", data, marker),
                          VLAN_AV, 3)
            seq += 1
            ev.add(t, f)
            rec.append((t, f))


def _audio(ev: _Events, rng: np.random.Generator, D: float) -> None:
    n = int(D * 1000)
    phase = rng.uniform(0, 2 * np.pi)
    k = np.arange(48)
    for i in range(n):
        t = T0 + i * 1e-3 + float(rng.normal(0, 1e-6))
        s = (8000 * np.sin(2 * np.pi * 440 * (i * 48 + k) / 48000 + phase)).astype(">i2")
        data = np.repeat(s, 2).tobytes()  # 2 channels
        fmt = struct.pack(">BBBB", 0x04, 0x50, 2, 16)  # INT_16BIT, nsr 48 kHz, 2 channels, 16 bit
        f = eth_frame(AVTP_MCAST_AUDIO, HEAD_UNIT, 0x22F0,
                      avtp_stream(0x02, i, AUDIO_STREAM, int((t - T0 + 0.002) * 1e9), fmt, data), VLAN_AV, 3)
        ev.add(t, f)


def _sync_pair(ev: _Events, t: float, seq: int, src: bytes, clock: int, origin: float, corr: int,
               attack: bool = False, log_interval: int = -3) -> None:
    ev.add(t, eth_frame(PTP_MCAST, src, 0x88F7, ptp(0x0, seq, clock, bytes(10), log_interval=log_interval)), attack)
    # Follow_Up carries the precise origin timestamp and the 802.1AS follow-up TLV.
    tlv = struct.pack(">HH3s3sihH10si", 3, 28, b"\x00\x80\xc2", b"\x00\x00\x01", 0, 0, 0, bytes(10), 0)
    ev.add(t + 0.0002, eth_frame(PTP_MCAST, src, 0x88F7,
                                 ptp(0x8, seq, clock, ptp_ts(origin) + tlv, correction=corr, log_interval=log_interval)),
           attack)


def _gptp(ev: _Events, rng: np.random.Generator, D: float) -> None:
    for i in range(int(D * 8) + 1):
        t = T0 + i * 0.125 + 0.01
        _sync_pair(ev, t, i, CENTRAL, GM_CLOCK, t + float(rng.normal(0, 5e-8)), int(rng.integers(200, 600)) << 16)
    for i in range(int(D) + 1):
        t = T0 + i + 0.05
        ann = ptp_ts(0) + struct.pack(">hBBBBHBQHB", 37, 0, 246, 248, 0xFE, 0xFFFF, 248, GM_CLOCK, 0, 0xA0)
        ev.add(t, eth_frame(PTP_MCAST, CENTRAL, 0x88F7, ptp(0xB, i, GM_CLOCK, ann, log_interval=0)))
        # peer delay: switch asks, grandmaster answers (two-step)
        tq = t + 0.3
        ev.add(tq, eth_frame(PTP_MCAST, SWITCH, 0x88F7, ptp(0x2, i, SWITCH_CLOCK, bytes(20), log_interval=0)))
        req_id = struct.pack(">QH", SWITCH_CLOCK, 1)
        ev.add(tq + 0.0001, eth_frame(PTP_MCAST, CENTRAL, 0x88F7,
                                      ptp(0x3, i, GM_CLOCK, ptp_ts(tq + 5e-7) + req_id, log_interval=0x7F)))
        ev.add(tq + 0.0002, eth_frame(PTP_MCAST, CENTRAL, 0x88F7,
                                      ptp(0xA, i, GM_CLOCK, ptp_ts(tq + 0.0001) + req_id, log_interval=0x7F)))


class _SomeIpNode:
    """Per-sender session counters (SOME/IP session ids increment per message)."""

    def __init__(self) -> None:
        self.session: dict[tuple[int, int], int] = {}
        self.ident = 0

    def next(self, key: tuple[int, int]) -> int:
        s = self.session.get(key, 0) % 0xFFFF + 1  # session 0 is reserved: wrap to 1
        self.session[key] = s
        return s


def _someip_frame(src: bytes, dst_mac: bytes, src_ip: int, dst_ip: int, sport: int, dport: int, msg: bytes,
                  node: _SomeIpNode, pcp: int = 2) -> bytes:
    node.ident += 1
    return eth_frame(dst_mac, src, 0x0800, ipv4_udp(src_ip, dst_ip, sport, dport, msg, node.ident), VLAN_SOMEIP, pcp)


def _someip(ev: _Events, rng: np.random.Generator, D: float) -> None:
    nodes = {m: _SomeIpNode() for m in (ZONE_FRONT, ZONE_REAR, TELEMATICS, HEAD_UNIT)}
    # notifications: (sender, service, event, period, receiver)
    for src, svc, evt, period, dst, pcp in (
        (ZONE_FRONT, SVC_SPEED, 0x8001, 0.020, CENTRAL, 4),
        (ZONE_FRONT, SVC_LIGHT, 0x8002, 0.100, HEAD_UNIT, 2),
        (TELEMATICS, SVC_TELEM, 0x8003, 1.000, CENTRAL, 1),
    ):
        off = float(rng.uniform(0, period))
        speed = 50.0
        for i in range(int(D / period) + 1):
            t = T0 + off + i * period + float(rng.normal(0, 1e-4))
            speed = max(0.0, speed + float(rng.normal(0, 0.3)))
            payload = struct.pack(">fH", speed, i & 0xFFFF) if svc == SVC_SPEED else rng.bytes(8)
            msg = someip(svc, evt, 0, nodes[src].next((svc, evt)), 0x02, payload)
            ev.add(t, _someip_frame(src, dst, IP_OF[src], IP_OF[dst], PORT_OF_SVC[svc], PORT_OF_SVC[svc], msg,
                                    nodes[src], pcp))
    # climate request / response, head unit -> zonal rear
    off = float(rng.uniform(0, 0.1))
    for i in range(int(D / 0.1) + 1):
        t = T0 + off + i * 0.1 + float(rng.normal(0, 2e-4))
        sess = nodes[HEAD_UNIT].next((SVC_CLIMATE, 1))
        req = someip(SVC_CLIMATE, 0x0001, 0x0033, sess, 0x00, struct.pack(">B", 21))
        ev.add(t, _someip_frame(HEAD_UNIT, ZONE_REAR, IP_OF[HEAD_UNIT], IP_OF[ZONE_REAR], 40001, 30502, req,
                                nodes[HEAD_UNIT]))
        resp = someip(SVC_CLIMATE, 0x0001, 0x0033, sess, 0x80, struct.pack(">BB", 21, 1))
        ev.add(t + float(rng.uniform(0.001, 0.003)),
               _someip_frame(ZONE_REAR, HEAD_UNIT, IP_OF[ZONE_REAR], IP_OF[HEAD_UNIT], 30502, 40001, resp,
                             nodes[ZONE_REAR]))
    # service discovery offers, once a second per server
    for src, svcs in ((ZONE_FRONT, (SVC_SPEED, SVC_LIGHT)), (ZONE_REAR, (SVC_CLIMATE,)), (TELEMATICS, (SVC_TELEM,))):
        off = float(rng.uniform(0, 1))
        for i in range(int(D) + 1):
            for svc in svcs:
                t = T0 + off + i + 0.001 * (svc & 0xF)
                msg = sd_offer(nodes[src].next((0xFFFF, 0x8100)), svc, IP_OF[src], PORT_OF_SVC[svc])
                ev.add(t, _someip_frame(src, SD_MCAST_MAC, IP_OF[src], SD_MCAST_IP, 30490, 30490, msg, nodes[src]))


# CAN ids seen through the front gateway: (id, period s)
_CAN_FRONT = [(0x0C4, 0.01), (0x0C8, 0.01), (0x130, 0.02), (0x140, 0.02), (0x1A0, 0.02), (0x1F0, 0.05),
              (0x220, 0.05), (0x260, 0.1), (0x2A0, 0.1), (0x300, 0.1), (0x350, 0.1), (0x3E0, 0.1)]
_CAN_REAR = [(0x410, 0.02), (0x420, 0.05), (0x430, 0.1), (0x440, 0.1), (0x18FEF100, 0.1)]


def _can(ev: _Events, rng: np.random.Generator, D: float, rec: list[tuple[float, bytes]]) -> None:
    ticks = int(D / 0.01) + 1
    counters = {cid: 0 for cid, _ in _CAN_FRONT + _CAN_REAR}
    base = {cid: rng.bytes(8) for cid, _ in _CAN_FRONT + _CAN_REAR}
    seq = 0
    for k in range(ticks):
        t = T0 + k * 0.01 + 0.003 + float(rng.normal(0, 2e-5))
        msgs = b""
        for cid, period in _CAN_FRONT:
            if k % int(round(period / 0.01)) == 0:
                counters[cid] = (counters[cid] + 1) & 0xFF
                data = bytes([counters[cid]]) + base[cid][1:]
                msgs += acf_can(cid, data, ts_ns=int((t - T0) * 1e9))
        f = eth_frame(CENTRAL, GW_FRONT, 0x22F0, ntscf(seq, CAN_STREAM, msgs), VLAN_CAN, 5)
        seq += 1
        ev.add(t, f)
        rec.append((t, f))
        rear = []
        for cid, period in _CAN_REAR:
            if k % int(round(period / 0.01)) == 0:
                counters[cid] = (counters[cid] + 1) & 0xFF
                rear.append((cid, bytes([counters[cid]]) + base[cid][1:]))
        if rear:
            pay = encode_can_udp(rear)
            ev.add(t + 0.004, eth_frame(CENTRAL, GW_REAR, 0x0800,
                                        ipv4_udp(IP_OF[GW_REAR], IP_OF[CENTRAL], CAN_UDP_PORT, CAN_UDP_PORT, pay, k),
                                        VLAN_CAN, 5))


# ----------------------------------------------------------------------------- attacks
def _times(rng: np.random.Generator, a0: float, a1: float, rate: float) -> np.ndarray:
    """Attack packet times: bursts at ``rate`` packets/s, on for 60 % of each 200 ms."""
    n = max(1, int((a1 - a0) * rate))
    t = np.sort(rng.uniform(a0, a1, n))
    on = ((t - a0) % 0.2) < 0.12
    return t[on] if on.any() else t[:1]


def _atk_avtp_injection(ev, rng, a0, a1, k, **_):
    seq = int(rng.integers(0, 256))
    for t in _times(rng, a0, a1, 300 * k):
        data = rng.bytes(int(rng.integers(200, 1400)))
        f = eth_frame(AVTP_MCAST_VIDEO, CAMERA, 0x22F0,
                      avtp_stream(0x03, seq, CAMERA_STREAM, int((t - T0) * 1e9), b"\x02\x02\x00\x00", data),
                      VLAN_AV, 3)
        seq += 1
        ev.add(float(t), f, True)


def _atk_avtp_replay(ev, rng, a0, a1, k, cam_rec, **_):
    src = [f for t, f in cam_rec if t < a0 - 0.01]
    if not src:
        raise DataError("simulate: avtp_replay needs camera traffic before the attack; use camera=True "
                        "and an attack_window that starts after 0")
    times = _times(rng, a0, a1, 400 * k)
    start = int(rng.integers(0, max(1, len(src) - len(times))))
    for j, t in enumerate(times):
        ev.add(float(t), src[(start + j) % len(src)], True)


def _atk_gptp_sync(ev, rng, a0, a1, k, **_):
    period = 0.125 / max(k, 1e-3)
    for i, t in enumerate(np.arange(a0 + 0.06, a1, period)):
        seq = int((t - T0 - 0.01) / 0.125)  # reuse the real grandmaster's current sequence id
        corr = int(rng.choice([-1, 1]) * rng.uniform(1e6, 5e7)) << 16  # 1-50 ms of "residence time"
        _sync_pair(ev, float(t), seq, CENTRAL, GM_CLOCK, float(t) + float(rng.uniform(0.5, 3.0)), corr, True)


def _atk_gptp_fake_gm(ev, rng, a0, a1, k, **_):
    fake = mac(0x66)
    clock = int.from_bytes(fake[:3] + b"\xff\xfe" + fake[3:], "big")
    for i, t in enumerate(np.arange(a0, a1, 0.25)):
        ann = ptp_ts(0) + struct.pack(">hBBBBHBQHB", 37, 0, 50, 6, 0x21, 0x4E5D, 50, clock, 0, 0x20)
        ev.add(float(t), eth_frame(PTP_MCAST, fake, 0x88F7, ptp(0xB, i, clock, ann, log_interval=-2)), True)
    for i, t in enumerate(np.arange(a0 + 0.01, a1, 1 / (32 * k))):
        _sync_pair(ev, float(t), i, fake, clock, float(t) + 10.0, 0, True, log_interval=-5)


def _atk_mac_flooding(ev, rng, a0, a1, k, **_):
    times = _times(rng, a0, a1, 2000 * k)
    macs = rng.integers(0, 256, size=(len(times), 12), dtype=np.uint8)
    macs[:, 0] &= 0xFE  # unicast
    macs[:, 6] &= 0xFE
    addrs = rng.integers(1, 2**32 - 1, size=(len(times), 2))
    for j, t in enumerate(times):
        tcp = struct.pack(">HHIIBBHHH", int(addrs[j, 0]) & 0xFFFF, int(addrs[j, 1]) & 0xFFFF, 0, 0, 0x50, 0x02, 512, 0, 0)
        pl = ipv4_udp(int(addrs[j, 0]), int(addrs[j, 1]), 0, 0, tcp, j, proto=6)
        ev.add(float(t), eth_frame(macs[j, :6].tobytes(), macs[j, 6:].tobytes(), 0x0800, pl), True)


def _atk_can_dos(ev, rng, a0, a1, k, **_):
    seq = int(rng.integers(0, 256))
    for t in _times(rng, a0, a1, 2000 * k):
        f = eth_frame(CENTRAL, GW_FRONT, 0x22F0,
                      ntscf(seq, CAN_STREAM, acf_can(0x000, bytes(8), ts_ns=int((t - T0) * 1e9))), VLAN_CAN, 5)
        seq += 1
        ev.add(float(t), f, True)


def _atk_can_replay(ev, rng, a0, a1, k, can_rec, **_):
    src = [(t, f) for t, f in can_rec if t < a0 - 0.01]
    if not src:
        raise DataError("simulate: can_replay needs CAN traffic before the attack; start the attack later")
    # replay a recorded slice with its original spacing, sped up by the intensity
    j0 = int(rng.integers(0, len(src)))
    t_prev, t = src[j0][0], a0
    j = j0
    while t < a1:
        ts_j, f = src[j % len(src)]
        gap = ts_j - t_prev if j % len(src) else 0.01
        t += max(gap, 1e-4) / max(k, 1e-3) * 0.5  # twice the original rate
        t_prev = ts_j
        if t < a1:
            ev.add(float(t) + 0.0017, f, True)
        j += 1


def _atk_someip_spoofing(ev, rng, a0, a1, k, **_):
    node = _SomeIpNode()
    node.ident = 40000
    sess = int(rng.integers(1, 1000))
    # fake offers of the climate service pointing at the telematics unit
    for t in np.arange(a0, a1, 0.1 / k):
        msg = sd_offer(sess, SVC_CLIMATE, IP_OF[TELEMATICS], 30502)
        sess += 1
        ev.add(float(t), _someip_frame(TELEMATICS, SD_MCAST_MAC, IP_OF[TELEMATICS], SD_MCAST_IP, 30490, 30490, msg,
                                       node), True)
    # fake speed notifications and climate responses from the wrong ECU
    for t in np.arange(a0 + 0.003, a1, 0.02 / k):
        msg = someip(SVC_SPEED, 0x8001, 0, sess & 0xFFFF or 1, 0x02, struct.pack(">fH", 250.0, 0))
        sess += 1
        ev.add(float(t), _someip_frame(TELEMATICS, CENTRAL, IP_OF[TELEMATICS], IP_OF[CENTRAL], 30501, 30501, msg,
                                       node, 4), True)
    for t in np.arange(a0 + 0.007, a1, 0.1 / k):
        msg = someip(SVC_CLIMATE, 0x0001, 0x0033, int(rng.integers(1, 0xFFFF)), 0x80, struct.pack(">BB", 30, 0))
        ev.add(float(t), _someip_frame(TELEMATICS, HEAD_UNIT, IP_OF[TELEMATICS], IP_OF[HEAD_UNIT], 30502, 40001, msg,
                                       node), True)


def _atk_someip_request_flood(ev, rng, a0, a1, k, **_):
    node = _SomeIpNode()
    node.ident = 50000
    sess = int(rng.integers(1, 0xFFFF))
    for t in _times(rng, a0, a1, 3000 * k):
        req = someip(SVC_CLIMATE, 0x0001, 0x0033, sess, 0x00, struct.pack(">B", int(rng.integers(0, 40))))
        sess = sess % 0xFFFF + 1
        ev.add(float(t), _someip_frame(HEAD_UNIT, ZONE_REAR, IP_OF[HEAD_UNIT], IP_OF[ZONE_REAR], 40001, 30502, req,
                                       node), True)


def _atk_avtp_stream_flood(ev, rng, a0, a1, k, **_):
    stream = int.from_bytes(CAMERA + b"\x00\x07", "big")
    blob = rng.bytes(1400)
    for i, t in enumerate(_times(rng, a0, a1, 4000 * k)):
        f = eth_frame(AVTP_MCAST_VIDEO, CAMERA, 0x22F0,
                      avtp_stream(0x03, i, stream, int((t - T0) * 1e9), b"\x02\x02\x00\x00", blob), VLAN_AV, 3)
        ev.add(float(t), f, True)


_ATTACK_FNS = {
    "avtp_injection": _atk_avtp_injection,
    "avtp_replay": _atk_avtp_replay,
    "gptp_sync_manipulation": _atk_gptp_sync,
    "gptp_fake_grandmaster": _atk_gptp_fake_gm,
    "mac_flooding": _atk_mac_flooding,
    "can_dos": _atk_can_dos,
    "can_replay": _atk_can_replay,
    "someip_spoofing": _atk_someip_spoofing,
    "someip_request_flood": _atk_someip_request_flood,
    "avtp_stream_flood": _atk_avtp_stream_flood,
}
