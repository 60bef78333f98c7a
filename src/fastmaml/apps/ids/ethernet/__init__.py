"""Automotive-Ethernet traffic source for the few-shot IDS.

* :mod:`.pcap_reader` streams pcap / pcapng captures (via dpkt) into numpy column chunks;
  :mod:`.labels` reads their per-packet label CSVs
  with IEEE 1722 AVTP, gPTP, SOME/IP and CAN-over-Ethernet fields decoded.
* :mod:`.zonal_sim` simulates a zonal in-vehicle network with benign traffic and attacks.
* :mod:`.features` turns packet chunks into :class:`~fastmaml.apps.ids.samples.SampleSet`.
* :mod:`.baselines` holds the obvious rule-based detectors to compare against.
* :mod:`.traffic` is the Ethernet traffic kind of the IDS (registered in ``ids/registry.py``).

The names below are imported on first use: importing this package (as the traffic registry
does) must not need dpkt, which a CAN-only install may lack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LabelTable", "PacketChunk", "PcapReader", "ReadStats", "read_labels", "read_pcap"]


def __getattr__(name: str) -> Any:
    if name in ("LabelTable", "read_labels"):
        from fastmaml.apps.ids.ethernet import labels as module
    elif name in ("PacketChunk", "PcapReader", "ReadStats", "read_pcap"):
        from fastmaml.apps.ids.ethernet import pcap_reader as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
