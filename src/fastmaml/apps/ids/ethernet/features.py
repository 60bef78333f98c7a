"""Automotive-Ethernet packets -> feature tensors -> :class:`~fastmaml.apps.ids.samples.SampleSet`.

Each packet belongs to a *stream*: an AVTP stream ID; a gPTP (source MAC, message type);
a SOME/IP (source MAC, service, method, message type); a CAN-in-UDP (source MAC, port); any
other frame (source MAC, EtherType). From benign training traffic :class:`EthFeatureState`
learns each stream's typical inter-arrival time (median), its typical AVTP presentation-time
and gPTP origin-time offsets from the capture clock, the known source / destination MACs
and the known CAN identifiers. It is saved as JSON.

Packet-level features (:data:`PACKET_FEATURES`), all roughly in [-1, 1]:

* EtherType one-hot (AVTP, gPTP, IPv4, IPv6, ARP, other); protocol flags (SOME/IP,
  CAN-in-UDP, other UDP, other IP); length / 1514; VLAN present, id / 4095, PCP / 7.
* ``src_mac_new`` / ``dst_mac_new``: MAC not seen in benign traffic; ``stream_new``: stream
  not seen in benign traffic; ``stream_first``: no earlier packet of the stream in this pass.
* ``seq_gap``: sequence number - previous one of the stream - 1 (modulo the counter width,
  as a signed value; AVTP sequence_num, gPTP sequenceId, SOME/IP session id), as a flag
  (``seq_gap_nz``), a clipped value / 16 and a "repeated number" flag (gap = -1).
* ``dt_ratio``: log2(inter-arrival / the stream's typical interval) / 10, clipped to [-1, 1];
  ``dt_log``: log10 of the raw inter-arrival, scaled (for streams without a learned interval).
* Header fields: AVTP subtype / 255, stream-data length / 1500, deviation of the AVTP
  presentation time from its usual offset to the capture clock (signed log scale); gPTP
  message type / 15, correction (signed log of ns), origin-timestamp deviation (signed log);
  SOME/IP message type one-hot (request, notification, response, error), return code != 0,
  service / 65535, method / 65535; CAN id (11-bit / 0x7FF, 29-bit / 2**29), data length / 64,
  frames per packet / 8, unknown CAN id, the first CAN data bytes / 255.
* The first :data:`N_PAYLOAD` payload bytes / 255.

Window-level samples stack W consecutive packets into ``[W, F]``; labels follow
:func:`fastmaml.apps.ids.can.features.window_labels` (same rule as the CAN pipeline).

The transform is vectorized per chunk (argsort by stream key) and carries each stream's
last timestamp / sequence number across chunks, so streaming gives the same features as a
one-shot pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastmaml.apps.ids.ethernet.pcap_reader import ETH_ARP, ETH_AVTP, ETH_GPTP, ETH_IPV4, ETH_IPV6, PROTO_AVTP, PROTO_CAN_UDP, PROTO_GPTP, PROTO_IP, PROTO_SOMEIP, PROTO_UDP, PacketChunk, PcapReader
from fastmaml.apps.ids.ethernet.labels import read_labels
from fastmaml.apps.ids.samples import make_windows, window_labels
from fastmaml.apps.ids.samples import BENIGN, SampleSet
from fastmaml.errors import DataError

N_PAYLOAD = 8
N_CAN_BYTES = 4
PACKET_FEATURES: list[str] = [
    "et_avtp", "et_gptp", "et_ipv4", "et_ipv6", "et_arp", "et_other",
    "p_someip", "p_can_udp", "p_udp_other", "p_ip_other",
    "length", "has_vlan", "vlan", "pcp",
    "src_mac_new", "dst_mac_new", "stream_new", "stream_first",
    "seq_gap_nz", "seq_gap", "seq_repeat", "dt_ratio", "dt_log",
    "avtp_subtype", "avtp_data_len", "avtp_ts_dev",
    "ptp_type", "ptp_correction", "ptp_origin_dev",
    "someip_req", "someip_notif", "someip_resp", "someip_err", "someip_rc_nz", "someip_service", "someip_method",
    "can_id", "can_len", "can_count", "can_id_new",
    *[f"can_b{i}" for i in range(N_CAN_BYTES)],
    *[f"pay{i}" for i in range(N_PAYLOAD)],
]
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(*cols: np.ndarray) -> np.ndarray:
    """64-bit hash of several integer columns (splitmix64 finalizer per step)."""
    h = np.zeros(len(cols[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in cols:
            h = h ^ (np.asarray(c).astype(np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return h


def stream_keys(c: PacketChunk) -> np.ndarray:
    """uint64 stream key per packet (see the module docstring for what a stream is)."""
    n = len(c)
    proto = c.proto.astype(np.int64)
    mac_hi = (c.src_mac >> np.uint64(24)).astype(np.int64)
    mac_lo = (c.src_mac & np.uint64(0xFFFFFF)).astype(np.int64)
    zero = np.zeros(n, dtype=np.int64)
    a = np.where(proto == PROTO_AVTP, (c.avtp_stream_id >> np.uint64(32)).astype(np.int64), mac_hi)
    b = np.where(proto == PROTO_AVTP, (c.avtp_stream_id & np.uint64(0xFFFFFFFF)).astype(np.int64), mac_lo)
    x = np.select(
        [proto == PROTO_GPTP, proto == PROTO_SOMEIP, proto == PROTO_CAN_UDP, proto == PROTO_AVTP],
        [c.ptp_type.astype(np.int64), (c.someip_service.astype(np.int64) << 16) | c.someip_method, c.dport,
         c.avtp_subtype.astype(np.int64)],
        c.ethertype.astype(np.int64),
    )
    y = np.where(proto == PROTO_SOMEIP, c.someip_msg_type.astype(np.int64), zero)
    return _mix(proto, a, b, x, y)


def _seq(c: PacketChunk) -> tuple[np.ndarray, np.ndarray]:
    """Per-packet sequence number (-1 none) and its counter modulus."""
    seq = np.full(len(c), -1, dtype=np.int64)
    mod = np.ones(len(c), dtype=np.int64)
    m = c.avtp_seq >= 0
    seq[m], mod[m] = c.avtp_seq[m], 256
    m = c.ptp_seq >= 0
    seq[m], mod[m] = c.ptp_seq[m], 65536
    m = c.someip_session >= 0
    seq[m], mod[m] = c.someip_session[m], 65536
    return seq, mod


def _wrap32(x: np.ndarray) -> np.ndarray:
    """Signed value of a 32-bit wrapped difference."""
    return ((x + 2**31) % 2**32) - 2**31


def _raw_offsets(c: PacketChunk) -> tuple[np.ndarray, np.ndarray]:
    """AVTP presentation-time offset (ns, wrapped) and gPTP origin-time offset (s) to the capture clock."""
    ts_ns = np.round(np.mod(c.ts, 2**32 / 1e9) * 1e9).astype(np.int64)
    avtp = np.where(c.avtp_ts >= 0, _wrap32(c.avtp_ts - ts_ns).astype(np.float64), np.nan)
    ptp = c.ptp_origin_ts - c.ts
    return avtp, ptp


def _slog(x: np.ndarray, scale: float) -> np.ndarray:
    """sign(x) * log10(1 + |x|) / scale, NaN -> 0."""
    out = np.sign(x) * np.log10(1.0 + np.abs(x)) / scale
    return np.nan_to_num(out, nan=0.0)


def _group_median(keys: np.ndarray, vals: np.ndarray) -> dict[int, float]:
    ok = np.isfinite(vals)
    keys, vals = keys[ok], vals[ok]
    if not len(keys):
        return {}
    order = np.lexsort((vals, keys))
    ks, vs = keys[order], vals[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    ends = np.r_[starts[1:], len(ks)]
    mid = (starts + ends - 1) // 2
    return {int(k): float(v) for k, v in zip(ks[starts].tolist(), vs[mid].tolist())}


@dataclass
class EthFeatureState:
    """What the features learn from benign traffic (JSON-serializable)."""

    intervals: dict[int, float] = field(default_factory=dict)   # stream key -> median inter-arrival (s)
    avtp_offsets: dict[int, float] = field(default_factory=dict)  # stream key -> median AVTP offset (ns)
    ptp_offsets: dict[int, float] = field(default_factory=dict)   # stream key -> median origin offset (s)
    src_macs: list[int] = field(default_factory=list)
    dst_macs: list[int] = field(default_factory=list)
    can_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cache()

    def _cache(self) -> None:
        self._src = np.array(sorted(self.src_macs), dtype=np.uint64)
        self._dst = np.array(sorted(self.dst_macs), dtype=np.uint64)
        self._can = np.array(sorted(self.can_ids), dtype=np.int64)
        k = np.array(sorted(self.intervals), dtype=np.uint64)
        self._keys = k
        self._iv = np.array([self.intervals[int(x)] for x in k.tolist()], dtype=np.float64)
        self._avo = np.array([self.avtp_offsets.get(int(x), np.nan) for x in k.tolist()], dtype=np.float64)
        self._pto = np.array([self.ptp_offsets.get(int(x), np.nan) for x in k.tolist()], dtype=np.float64)

    @staticmethod
    def fit(chunks: Iterable[PacketChunk] | PacketChunk) -> "EthFeatureState":
        """Learn the state from benign packets (chunks in time order)."""
        if isinstance(chunks, PacketChunk):
            chunks = [chunks]
        carry = _Carry()
        ks, dts, avs, pts, srcs, dsts, cans = [], [], [], [], [], [], []
        for c in chunks:
            if not len(c):
                continue
            keys = stream_keys(c)
            seq, mod = _seq(c)
            prev_ts, _ = carry.step(keys, c.ts, seq)
            av, pt = _raw_offsets(c)
            ks.append(keys)
            dts.append(c.ts - prev_ts)
            avs.append(av)
            pts.append(pt)
            srcs.append(np.unique(c.src_mac))
            dsts.append(np.unique(c.dst_mac))
            cans.append(np.unique(c.can_id[c.can_id >= 0]))
        if not ks:
            raise DataError("EthFeatureState.fit: no packets given; fit on a benign capture with traffic")
        K = np.concatenate(ks)
        dt = np.concatenate(dts)
        intervals = _group_median(K, np.where(dt > 0, dt, np.nan))
        for k in np.unique(K).tolist():  # streams with one packet still count as known
            intervals.setdefault(int(k), float("nan"))
        return EthFeatureState(
            intervals=intervals,
            avtp_offsets=_group_median(K, np.concatenate(avs)),
            ptp_offsets=_group_median(K, np.concatenate(pts)),
            src_macs=sorted(set(np.concatenate(srcs).tolist())),
            dst_macs=sorted(set(np.concatenate(dsts).tolist())),
            can_ids=sorted(set(np.concatenate(cans).tolist())),
        )

    def to_dict(self) -> dict:
        """JSON-able form (NaN intervals stored as null)."""
        def enc(d: dict[int, float]) -> dict[str, float | None]:
            return {str(k): (None if not np.isfinite(v) else v) for k, v in d.items()}
        return {"format": "fastmaml.ids.EthFeatureState", "version": 1, "intervals": enc(self.intervals),
                "avtp_offsets": enc(self.avtp_offsets), "ptp_offsets": enc(self.ptp_offsets),
                "src_macs": self.src_macs, "dst_macs": self.dst_macs, "can_ids": self.can_ids}

    @staticmethod
    def from_dict(d: dict, where: str = "EthFeatureState") -> "EthFeatureState":
        """Inverse of :meth:`to_dict`; DataError naming ``where`` for a malformed dict."""
        try:
            if d.get("format") != "fastmaml.ids.EthFeatureState":
                raise ValueError(f"format is {d.get('format')!r}")

            def dec(x: dict) -> dict[int, float]:
                return {int(k): (float("nan") if v is None else float(v)) for k, v in x.items()}
            return EthFeatureState(dec(d["intervals"]), dec(d["avtp_offsets"]), dec(d["ptp_offsets"]),
                                   [int(x) for x in d["src_macs"]], [int(x) for x in d["dst_macs"]],
                                   [int(x) for x in d["can_ids"]])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{where}: not an Ethernet feature state ({e}); re-create it with EthFeatureState.fit") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the state as JSON."""
        Path(path).write_text(json.dumps(self.to_dict()))

    @staticmethod
    def load(path: str | os.PathLike) -> "EthFeatureState":
        """Read a state written by :meth:`save`."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: not an EthFeatureState JSON ({e}); re-create it with EthFeatureState.save") from None
        if not isinstance(d, dict):
            raise DataError(f"{p}: not an EthFeatureState JSON (top level is not an object); re-create it with "
                            "EthFeatureState.save")
        return EthFeatureState.from_dict(d, str(p))


class _Carry:
    """Last timestamp / sequence number per stream key, carried across chunks (sorted arrays)."""

    MAX_KEYS = 1_000_000  # MAC flooding creates a stream per random MAC: bound the memory

    def __init__(self) -> None:
        self.k = np.zeros(0, dtype=np.uint64)
        self.ts = np.zeros(0)
        self.seq = np.zeros(0, dtype=np.int64)

    def step(self, keys: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Previous timestamp (NaN none) and sequence number (-1 none) of each packet's stream."""
        n = len(keys)
        order = np.argsort(keys, kind="stable")
        ks, ts_s, sq_s = keys[order], ts[order], seq[order]
        first = np.ones(n, dtype=bool)
        first[1:] = ks[1:] != ks[:-1]
        last = np.ones(n, dtype=bool)
        last[:-1] = first[1:]
        pts = np.empty(n)
        psq = np.empty(n, dtype=np.int64)
        pts[1:], psq[1:] = ts_s[:-1], sq_s[:-1]
        fk = ks[first]
        pos = np.searchsorted(self.k, fk)
        posc = np.minimum(pos, max(len(self.k) - 1, 0))
        hit = (pos < len(self.k)) & (self.k[posc] == fk) if len(self.k) else np.zeros(len(fk), dtype=bool)
        pts[first] = np.where(hit, self.ts[posc] if len(self.k) else np.nan, np.nan)
        psq[first] = np.where(hit, self.seq[posc] if len(self.k) else -1, -1)
        # merge: this chunk's last packet per stream replaces the carried entry
        nk, nts, nsq = ks[last], ts_s[last], sq_s[last]
        keep = ~np.isin(self.k, nk)
        k2 = np.concatenate([self.k[keep], nk])
        o = np.argsort(k2, kind="stable")
        self.k, self.ts = k2[o], np.concatenate([self.ts[keep], nts])[o]
        self.seq = np.concatenate([self.seq[keep], nsq])[o]
        if len(self.k) > self.MAX_KEYS:
            newest = np.sort(np.argsort(self.ts)[-self.MAX_KEYS // 2 :])
            self.k, self.ts, self.seq = self.k[newest], self.ts[newest], self.seq[newest]
        prev_ts = np.empty(n)
        prev_seq = np.empty(n, dtype=np.int64)
        prev_ts[order], prev_seq[order] = pts, psq
        return prev_ts, prev_seq


@dataclass
class PacketStats:
    """Per-packet intermediate quantities (used by the features and the rule baselines)."""

    src_mac_new: np.ndarray   # bool
    dst_mac_new: np.ndarray   # bool
    stream_new: np.ndarray    # bool
    stream_first: np.ndarray  # bool: no earlier packet of the stream in this pass
    has_seq: np.ndarray       # bool: the stream carries a sequence number and has a predecessor
    seq_gap: np.ndarray       # int64 signed gap (0 when not has_seq)
    dt: np.ndarray            # float64 inter-arrival in the stream (NaN when first)
    interval: np.ndarray      # float64 learned typical interval (NaN unknown)
    avtp_dev: np.ndarray      # float64 ns, deviation of the AVTP offset from the learned one (NaN none)
    ptp_dev: np.ndarray       # float64 s, deviation of the gPTP origin offset (NaN none)
    can_id_new: np.ndarray    # bool


class EthFeaturizer:
    """Streaming feature extractor: call :meth:`transform` on consecutive chunks of one capture."""

    def __init__(self, state: EthFeatureState) -> None:
        self.state = state
        self.reset()

    def reset(self) -> None:
        """Forget the per-stream history (start of a new capture)."""
        self._carry = _Carry()

    def stats(self, c: PacketChunk) -> PacketStats:
        """Per-packet intermediate quantities; advances the stream history."""
        s = self.state
        keys = stream_keys(c)
        seq, mod = _seq(c)
        prev_ts, prev_seq = self._carry.step(keys, c.ts, seq)
        pos = np.minimum(np.searchsorted(s._keys, keys), max(len(s._keys) - 1, 0))
        known = (s._keys[pos] == keys) if len(s._keys) else np.zeros(len(c), dtype=bool)
        interval = np.where(known, s._iv[pos] if len(s._keys) else np.nan, np.nan)
        has_seq = (seq >= 0) & (prev_seq >= 0)
        gap = np.where(has_seq, np.mod(seq - prev_seq - 1, mod), 0)
        gap = np.where(has_seq & (gap >= mod // 2), gap - mod, gap)
        av, pt = _raw_offsets(c)
        av_dev = np.where(known, _wrap32(np.nan_to_num(av - (s._avo[pos] if len(s._keys) else 0.0))), np.nan)
        av_dev = np.where(np.isfinite(av), av_dev, np.nan)
        pt_dev = np.where(known, pt - (s._pto[pos] if len(s._keys) else 0.0), np.nan)

        def new(vals: np.ndarray, ref: np.ndarray) -> np.ndarray:
            if not len(ref):
                return np.ones(len(vals), dtype=bool)
            p = np.minimum(np.searchsorted(ref, vals), len(ref) - 1)
            return ref[p] != vals

        can_new = (c.can_id >= 0) & new(c.can_id, s._can)
        return PacketStats(new(c.src_mac, s._src), new(c.dst_mac, s._dst), ~known, np.isnan(prev_ts), has_seq,
                           gap.astype(np.int64), c.ts - prev_ts, interval, av_dev, pt_dev, can_new)

    def transform(self, c: PacketChunk) -> np.ndarray:
        """float32 ``[n, F]`` packet features (columns named by :data:`PACKET_FEATURES`)."""
        return self.transform_with_stats(c)[0]

    def transform_with_stats(self, c: PacketChunk) -> tuple[np.ndarray, PacketStats]:
        """Features and the per-packet stats they came from, in one pass (rules read the stats)."""
        st = self.stats(c)
        return self._features(c, st), st

    def _features(self, c: PacketChunk, st: PacketStats) -> np.ndarray:
        n = len(c)
        X = np.zeros((n, len(PACKET_FEATURES)), dtype=np.float32)
        col = {name: i for i, name in enumerate(PACKET_FEATURES)}
        et = c.ethertype
        known_et = np.zeros(n, dtype=bool)
        for name, v in (("et_avtp", ETH_AVTP), ("et_gptp", ETH_GPTP), ("et_ipv4", ETH_IPV4), ("et_ipv6", ETH_IPV6),
                        ("et_arp", ETH_ARP)):
            m = et == v
            X[:, col[name]] = m
            known_et |= m
        X[:, col["et_other"]] = ~known_et
        X[:, col["p_someip"]] = c.proto == PROTO_SOMEIP
        X[:, col["p_can_udp"]] = c.proto == PROTO_CAN_UDP
        X[:, col["p_udp_other"]] = c.proto == PROTO_UDP
        X[:, col["p_ip_other"]] = c.proto == PROTO_IP
        X[:, col["length"]] = np.minimum(c.length, 9000) / 1514.0
        X[:, col["has_vlan"]] = c.vlan >= 0
        X[:, col["vlan"]] = np.maximum(c.vlan, 0) / 4095.0
        X[:, col["pcp"]] = np.maximum(c.pcp, 0) / 7.0
        X[:, col["src_mac_new"]] = st.src_mac_new
        X[:, col["dst_mac_new"]] = st.dst_mac_new
        X[:, col["stream_new"]] = st.stream_new
        X[:, col["stream_first"]] = st.stream_first
        X[:, col["seq_gap_nz"]] = st.seq_gap != 0
        X[:, col["seq_gap"]] = np.clip(st.seq_gap, -16, 16) / 16.0
        X[:, col["seq_repeat"]] = st.has_seq & (st.seq_gap == -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log2(np.maximum(st.dt, 1e-9) / st.interval) / 10.0
            dtlog = (np.log10(np.maximum(st.dt, 1e-7)) + 7.0) / 8.0
        X[:, col["dt_ratio"]] = np.clip(np.nan_to_num(ratio, nan=0.0, posinf=1.0, neginf=-1.0), -1, 1)
        X[:, col["dt_log"]] = np.clip(np.nan_to_num(dtlog, nan=1.0), 0, 1)
        avtp = c.proto == PROTO_AVTP
        X[:, col["avtp_subtype"]] = np.where(avtp, np.maximum(c.avtp_subtype, 0) / 255.0, 0)
        X[:, col["avtp_data_len"]] = np.where(avtp, np.clip(c.avtp_data_len, 0, 1500) / 1500.0, 0)
        X[:, col["avtp_ts_dev"]] = np.clip(_slog(st.avtp_dev, 10.0), -1, 1)
        ptp = c.proto == PROTO_GPTP
        X[:, col["ptp_type"]] = np.where(ptp, np.maximum(c.ptp_type, 0) / 15.0, 0)
        X[:, col["ptp_correction"]] = np.clip(_slog(c.ptp_correction / 65536.0, 10.0), -1, 1)
        X[:, col["ptp_origin_dev"]] = np.clip(_slog(st.ptp_dev * 1e9, 10.0), -1, 1)
        mt = c.someip_msg_type & ~0x20  # ignore the SOME/IP-TP flag
        some = c.proto == PROTO_SOMEIP
        X[:, col["someip_req"]] = some & ((mt == 0x00) | (mt == 0x01))
        X[:, col["someip_notif"]] = some & (mt == 0x02)
        X[:, col["someip_resp"]] = some & (mt == 0x80)
        X[:, col["someip_err"]] = some & (mt == 0x81)
        X[:, col["someip_rc_nz"]] = some & (c.someip_return_code > 0)
        X[:, col["someip_service"]] = np.maximum(c.someip_service, 0) / 65535.0
        X[:, col["someip_method"]] = np.maximum(c.someip_method, 0) / 65535.0
        cid = c.can_id
        X[:, col["can_id"]] = np.where(cid < 0, 0, np.where(cid > 0x7FF, cid / 2.0**29, cid / 2047.0))
        X[:, col["can_len"]] = np.maximum(c.can_len, 0) / 64.0
        X[:, col["can_count"]] = np.minimum(c.can_count, 8) / 8.0
        X[:, col["can_id_new"]] = st.can_id_new
        b0 = col["can_b0"]
        X[:, b0 : b0 + N_CAN_BYTES] = c.can_data[:, :N_CAN_BYTES] / 255.0
        p0 = col["pay0"]
        k = min(N_PAYLOAD, c.payload.shape[1])
        X[:, p0 : p0 + k] = c.payload[:, :k] / 255.0
        return X


def packet_features(chunk: PacketChunk, state: EthFeatureState) -> torch.Tensor:
    """float32 ``[n, F]`` features of one chunk, with a fresh stream history."""
    return torch.from_numpy(EthFeaturizer(state).transform(chunk))


def build_sample_set(
    pcap_path: str | os.PathLike,
    state: EthFeatureState,
    labels_csv: str | os.PathLike | None = None,
    *,
    window: int | None = None,
    stride: int = 1,
    label_rule: str = "any",
    **reader_kwargs,
) -> SampleSet:
    """Read a capture (streaming), compute features and labels, return a ``SampleSet``.

    Args:
        pcap_path: pcap / pcapng capture.
        state: fitted :class:`EthFeatureState`.
        labels_csv: side CSV (see :func:`~fastmaml.apps.ids.ethernet.pcap_reader.read_labels`);
            without it every packet is benign.
        window: if given, window-level samples ``[N, window, F]`` with ``stride``.
        label_rule: window label rule (``"any"`` or ``"majority"``).
    """
    rd = PcapReader(pcap_path, **reader_kwargs)
    fz = EthFeaturizer(state)
    feats, idx, tss = [], [], []
    for c in rd.chunks():
        feats.append(fz.transform(c))
        idx.append(c.index)
        tss.append(c.ts)
    F = np.concatenate(feats) if feats else np.zeros((0, len(PACKET_FEATURES)), np.float32)
    index = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    if labels_csv is not None:
        labels, names = read_labels(labels_csv, index=index, ts=np.concatenate(tss) if tss else np.zeros(0))
    else:
        labels, names = np.zeros(len(F), np.int64), [BENIGN]
    return to_sample_set(F, labels, names, window=window, stride=stride, label_rule=label_rule, source=str(pcap_path))


def to_sample_set(
    feats: np.ndarray, labels: np.ndarray, class_names: list[str], *, window: int | None = None,
    stride: int = 1, label_rule: str = "any", source: str = "",
) -> SampleSet:
    """Packet features (+ optional windowing) and labels as a ``SampleSet``."""
    if len(feats) != len(labels):
        raise DataError(f"to_sample_set ({source}): {len(feats)} feature rows but {len(labels)} labels; "
                        "label every packet")
    if window is not None:
        if window < 1 or stride < 1:
            raise DataError(f"to_sample_set ({source}): window and stride must be >= 1, got {window}, {stride}")
        feats = make_windows(feats, window, stride)
        labels = window_labels(np.asarray(labels, np.int64), window, stride, rule=label_rule)
    return SampleSet(torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
                     torch.from_numpy(np.asarray(labels, dtype=np.int64)), list(class_names), list(PACKET_FEATURES),
                     source)
