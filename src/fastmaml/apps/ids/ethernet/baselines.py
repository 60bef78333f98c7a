"""Rule baselines for automotive-Ethernet intrusion detection (per-packet 0/1 predictions).

Each rule reads the :class:`~fastmaml.apps.ids.ethernet.features.PacketStats` of a chunk,
computed against the same benign-fitted :class:`EthFeatureState` the learned detectors use,
so the comparison is fair:

* :func:`unknown_mac_rule`: source MAC never seen in benign traffic (MAC flooding, rogue
  grandmaster / node).
* :func:`rate_rule`: a packet of a known stream arrives much sooner than the stream's
  typical interval, or the stream itself is unknown (floods, injection, DoS).
* :func:`seq_gap_rule`: the stream's sequence counter did not advance by exactly one
  (injection, replay, duplicated gPTP sequence ids).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fastmaml.apps.ids.ethernet.features import EthFeatureState, EthFeaturizer, PacketStats
from fastmaml.apps.ids.ethernet.pcap_reader import PacketChunk


def unknown_mac_rule(stats: PacketStats) -> np.ndarray:
    """1 where the source MAC is not in the benign MAC set."""
    return stats.src_mac_new.astype(np.int64)


def rate_rule(stats: PacketStats, factor: float = 4.0, flag_unknown_streams: bool = True) -> np.ndarray:
    """1 where inter-arrival < typical interval / ``factor`` (or the stream is unknown)."""
    with np.errstate(invalid="ignore"):
        fast = np.isfinite(stats.interval) & np.isfinite(stats.dt) & (stats.dt * factor < stats.interval)
    if flag_unknown_streams:
        fast = fast | stats.stream_new
    return fast.astype(np.int64)


def seq_gap_rule(stats: PacketStats, tolerance: int = 0) -> np.ndarray:
    """1 where a sequenced stream's counter jumped by more than ``tolerance`` or went back."""
    return (stats.has_seq & ((stats.seq_gap < 0) | (stats.seq_gap > tolerance))).astype(np.int64)


RULES = {"unknown_mac": unknown_mac_rule, "rate": rate_rule, "seq_gap": seq_gap_rule}


def rule_predictions(chunks: Iterable[PacketChunk] | PacketChunk, state: EthFeatureState) -> dict[str, np.ndarray]:
    """Predictions of every rule (and their OR, ``"any"``) over the chunks of one capture."""
    if isinstance(chunks, PacketChunk):
        chunks = [chunks]
    fz = EthFeaturizer(state)
    out: dict[str, list[np.ndarray]] = {name: [] for name in (*RULES, "any")}
    for c in chunks:
        st = fz.stats(c)
        preds = {name: fn(st) for name, fn in RULES.items()}
        for name, p in preds.items():
            out[name].append(p)
        out["any"].append(np.maximum.reduce(list(preds.values())))
    return {k: (np.concatenate(v) if v else np.zeros(0, np.int64)) for k, v in out.items()}
