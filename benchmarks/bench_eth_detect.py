"""Throughput of automotive-Ethernet detection on one CPU thread.

Simulates a zonal-network capture (with an attack), writes it as pcap, then times
reading (dpkt + vectorized decoding) + feature extraction + a small MLP forward, and
prints packets/s. Usage: ``PYTHONPATH=src python benchmarks/bench_eth_detect.py [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fastmaml.apps.ids.ethernet.features import PACKET_FEATURES, EthFeatureState, EthFeaturizer
from fastmaml.apps.ids.ethernet.pcap_reader import PcapReader, read_pcap
from fastmaml.apps.ids.ethernet.zonal_sim import simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0, help="simulated capture length")
    ap.add_argument("--attack", default="mac_flooding")
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        benign, capture = Path(d) / "benign.pcap", Path(d) / "attack.pcap"
        simulate("none", 2.0, seed=1).write(benign)
        state = EthFeatureState.fit(read_pcap(benign)[0])
        simulate(args.attack, args.seconds, seed=2).write(capture)
        size_mb = capture.stat().st_size / 1e6
        mlp = torch.nn.Sequential(torch.nn.Linear(len(PACKET_FEATURES), 64), torch.nn.ReLU(),
                                  torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)).eval()
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            n = 0
            fz = EthFeaturizer(state)
            with torch.inference_mode():
                for chunk in PcapReader(capture, chunk_size=args.chunk_size).chunks():
                    logits = mlp(torch.from_numpy(fz.transform(chunk)))
                    n += int(logits.shape[0])
            best = min(best, time.perf_counter() - t0)
        # reading alone, for the breakdown
        t0 = time.perf_counter()
        for _ in PcapReader(capture, chunk_size=args.chunk_size).chunks():
            pass
        t_read = time.perf_counter() - t0
    print(f"capture: {n} packets, {size_mb:.1f} MB, attack={args.attack}")
    print(f"read only:                 {n / t_read:,.0f} packets/s")
    print(f"read + features + MLP:     {n / best:,.0f} packets/s (1 thread, best of {args.repeats})")


if __name__ == "__main__":
    main()
