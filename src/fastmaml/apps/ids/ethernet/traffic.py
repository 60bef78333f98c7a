"""Automotive Ethernet as a traffic kind of the IDS (:class:`~fastmaml.apps.ids.traffic.Traffic`).

Packet features (:data:`~.features.PACKET_FEATURES`) of pcap/pcapng captures with side label
CSVs. Everything that reads or writes pcaps needs dpkt, so this module imports that pipeline
only inside the methods (:func:`_eth`): the registry imports this module in every run,
CAN-only installs included.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import numpy as np

from fastmaml.apps.ids.ethernet.magic import is_pcap
from fastmaml.apps.ids.results import CompareResult
from fastmaml.apps.ids.samples import SampleSet
from fastmaml.apps.ids.traffic import ReadOptions, Rows, RowStream, Source, Traffic, count_table
from fastmaml.errors import ConfigError, DataError


def _eth(module: str) -> ModuleType:
    """A module of the pcap pipeline (``source``, ``features``, ...), imported on use: it needs dpkt."""
    try:
        return import_module(f"fastmaml.apps.ids.ethernet.{module}")
    except ImportError as e:
        if e.name != "dpkt":
            raise
        raise ConfigError("automotive Ethernet needs dpkt, an optional dependency: pip install -e .[ids] "
                          "(or bash scripts/install.sh --dev)") from e


class EthernetTraffic(Traffic):
    name = "eth"
    description = "automotive Ethernet"
    unit = "packet"
    key_column = "proto"
    key_name = "protocol"
    capture_name = "a pcap (Ethernet) capture"
    train_hint = "train an Ethernet detector with `fastmaml ids train --preset eth`"
    rules = {"unknown_mac": "unknown-MAC rule", "rate": "rate rule", "seq_gap": "sequence-gap rule"}
    reference_rule = "any"  # no single rule catches most attacks; their OR is the fair reference
    sources = {"eth_sim": Source(lambda *a: _eth("source").prepare_eth(*a)),
               "eth_captures": Source(lambda *a: _eth("source").prepare_eth(*a))}
    source_blocks = ("eth_sim",)

    def feature_names(self, state: Any) -> list[str]:
        return list(_eth("features").PACKET_FEATURES)

    def load_state(self, d: dict[str, Any], where: str) -> Any:
        return _eth("features").EthFeatureState.from_dict(d, where)

    def fit_state(self, capture: str | Path, labels: str | Path | None = None,
                  options: ReadOptions = ReadOptions()) -> Any:
        return _eth("features").EthFeatureState.fit(_eth("source").benign_chunks(capture, labels))

    def labelled_samples(self, state: Any, capture: str | Path, labels: str | Path | None, *, window: int | None,
                         stride: int | None, label_rule: str, max_per_class: int, seed: int,
                         options: ReadOptions = ReadOptions()) -> SampleSet:
        if labels is None:  # pcaps carry no labels of their own
            raise DataError(f"{capture}: adapting needs labelled packets; give --labels (index/timestamp,attack CSV)")
        src = _eth("source")
        s, _ = src.to_samples(src.featurize_capture(capture, state, labels), window, stride, label_rule,
                              max_per_class, max_per_class, seed)
        return s

    def row_stream(self, state: Any, capture: str | Path, labels: str | Path | None,
                   options: ReadOptions = ReadOptions()) -> RowStream:
        pcap = _eth("pcap_reader")
        table = _eth("labels").LabelTable.load(labels) if labels is not None else None
        reader = pcap.PcapReader(capture, chunk_size=options.chunk_size)
        fz = _eth("features").EthFeaturizer(state)
        proto_names = np.array(pcap.PROTO_NAMES)

        def rows() -> Iterator[Rows]:
            for c in reader.chunks():
                truth = (table.lookup(index=c.index, ts=c.ts) > 0).astype(np.int64) if table is not None else None
                yield Rows(fz.transform(c), truth, c.index, c.ts, proto_names[c.proto])

        def note() -> str:
            st = reader.stats
            return st.summary() if st.malformed or st.truncated_file else ""

        return RowStream(rows(), note)

    def claims(self, path: str | Path) -> bool:
        return is_pcap(path)

    def capture_problem(self, path: str | Path) -> str | None:
        if is_pcap(path):
            return None
        return (f"{path} is not a pcap/pcapng capture, but this detector was trained on automotive Ethernet; "
                "give a pcap, or use a detector trained on CAN (--preset sim/cic)")

    def simulate(self, attack: str, duration_s: float, seed: int, out: Path, labels: Path) -> str:
        zonal_sim = _eth("zonal_sim")
        if attack not in ("none", *zonal_sim.ATTACKS):
            raise DataError(f"unknown zonal-network attack {attack!r}; valid: none, {', '.join(zonal_sim.ATTACKS)}")
        cap = zonal_sim.simulate(attack, duration_s, seed)
        cap.write(out, labels, pcapng=out.suffix == ".pcapng")
        return f"wrote {len(cap)} packets ({int(cap.labels.sum())} attack) to {out}, labels to {labels}"

    def data_section(self, report: CompareResult) -> list[str]:
        """Counts, and how many attack packets a MAC / stream allow-list would see."""
        novelty = (report.data_stats or {}).get("novelty", {})

        def share(key: str):
            def cell(a: str) -> str:
                n = novelty.get(a, {})
                return f"{100 * n[key]:.1f}%" if key in n else "n/a"
            return cell

        return ["## Data", ""] + count_table(report, {
            "attack packets from an unknown source MAC": share("src_mac_new"),
            "attack packets of a stream unseen in benign traffic": share("stream_new"),
        }) + ["Counts are samples after the per-family caps (features.max_benign / max_attack); the two last columns "
              "are over all attack packets of the test capture. Attacks whose packets come from known MACs on known "
              "streams (injection, replay, spoofing, request floods) are invisible to the unknown-MAC rule.", ""]


ETHERNET = EthernetTraffic()
