"""Automotive-Ethernet traffic source for the few-shot IDS.

* :mod:`.pcap_reader` streams pcap / pcapng captures (via dpkt) into numpy column chunks;
  :mod:`.labels` reads their per-packet label CSVs
  with IEEE 1722 AVTP, gPTP, SOME/IP and CAN-over-Ethernet fields decoded.
* :mod:`.zonal_sim` simulates a zonal in-vehicle network with benign traffic and attacks.
* :mod:`.features` turns packet chunks into :class:`~fastmaml.apps.ids.samples.SampleSet`.
* :mod:`.baselines` holds the obvious rule-based detectors to compare against.
"""

from fastmaml.apps.ids.ethernet.pcap_reader import PacketChunk, PcapReader, ReadStats, read_pcap
from fastmaml.apps.ids.ethernet.labels import LabelTable, read_labels

__all__ = ["LabelTable", "PacketChunk", "PcapReader", "ReadStats", "read_labels", "read_pcap"]
