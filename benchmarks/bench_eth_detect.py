"""Throughput of automotive-Ethernet detection on one CPU thread, through the real detect path.

Simulates a zonal-network capture with an attack and writes it as pcap (+ label CSV). A
detector (the ``eth`` preset's MLP, its feature state fitted on a separate benign capture)
is saved, loaded and adapted to the capture's attack from K = 5 labelled packets per class
with :func:`fastmaml.apps.ids.detect.adapt_detector`, or ``--detector`` names one made by
``fastmaml ids train/adapt``. Then it times :func:`fastmaml.apps.ids.detect.stream_detect`
(what ``fastmaml ids detect`` runs: read pcap -> packet features -> network forward ->
per-packet verdict CSV), with a breakdown of the stages, and prints packets/s.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_eth_detect.py [--seconds 20] [--detector DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from fastmaml.apps.ids.detect import Detector, adapt_detector, load_detector, save_detector, stream_detect
    from fastmaml.apps.ids.ethernet.features import PACKET_FEATURES, EthFeatureState, EthFeaturizer
    from fastmaml.apps.ids.ethernet.pcap_reader import PcapReader, read_pcap
    from fastmaml.apps.ids.ethernet.zonal_sim import simulate
    from fastmaml.apps.ids.registry import load_ids_config
    from fastmaml.apps.ids.models import build_model
    from fastmaml.eval.environment import environment
    from fastmaml.config import to_dict

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="simulated capture length (default: %(default)s)")
    ap.add_argument("--attack", default="someip_request_flood", help="attack in the capture (default: %(default)s)")
    ap.add_argument("--detector", type=Path, default=None, help="an Ethernet detector folder (default: build one)")
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the target: one CPU core
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        benign, capture, labels = d / "benign.pcap", d / "capture.pcap", d / "capture_labels.csv"
        simulate(args.attack, args.seconds, seed=2).write(capture, labels)
        size_mb = capture.stat().st_size / 1e6
        if args.detector is None:
            simulate("none", 5.0, seed=1).write(benign)
            state = EthFeatureState.fit(read_pcap(benign)[0])
            cfg = load_ids_config("eth")
            torch.manual_seed(0)
            net = build_model(cfg.model, len(PACKET_FEATURES), None)
            base = Detector(to_dict(cfg.model), {k: v.detach() for k, v in net.state_dict().items()}, state.to_dict(),
                            list(PACKET_FEATURES), None, None, "any", ["benign", "attack"], cfg.maml.inner_lr,
                            cfg.eval.steps, traffic="eth")
            save_detector(base, d / "base")
            det, _ = adapt_detector(load_detector(d / "base"), capture, 5, labels=labels)
            save_detector(det, d / "adapted")
            det_path, origin = d / "adapted", "eth preset MLP (untrained), adapted with K=5, 10 steps"
        else:
            det_path, origin = args.detector, str(args.detector)
        det = load_detector(det_path)
        if det.traffic != "eth":
            raise SystemExit(f"{det_path} is a {det.traffic} detector; give an Ethernet one")

        def best(fn) -> tuple[float, int]:
            times, n = [], 0
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                n = fn()
                times.append(time.perf_counter() - t0)
            return min(times), n

        def read_only() -> int:
            return sum(len(c) for c in PcapReader(capture, chunk_size=args.chunk_size).chunks())

        def read_features() -> int:
            fz = EthFeaturizer(det.state())
            return sum(len(fz.transform(c)) for c in PcapReader(capture, chunk_size=args.chunk_size).chunks())

        def read_features_forward() -> int:
            fz, net, n = EthFeaturizer(det.state()), det.module(), 0
            with torch.inference_mode():
                for c in PcapReader(capture, chunk_size=args.chunk_size).chunks():
                    n += int(net(torch.from_numpy(fz.transform(c)[:, det.columns()])).shape[0])
            return n

        def detect() -> int:
            s = stream_detect(load_detector(det_path), capture, d / "verdicts.csv", chunk_size=args.chunk_size,
                              progress=False)
            return s.frames

        def detect_labelled() -> int:
            s = stream_detect(load_detector(det_path), capture, d / "verdicts.csv", labels=labels,
                              chunk_size=args.chunk_size, progress=False)
            return s.frames

        rows = [("read pcap only", best(read_only)), ("read + features", best(read_features)),
                ("read + features + forward", best(read_features_forward)),
                ("stream_detect (= fastmaml ids detect)", best(detect)),
                ("stream_detect with --labels", best(detect_labelled))]
        n_rows = sum(1 for _ in open(d / "verdicts.csv")) - 1
    env = environment()
    print(f"machine: {env['processor']}, torch {env['torch']}, Python {env['python']}, {torch.get_num_threads()} thread")
    print(f"capture: {args.seconds:.0f} s simulated zonal network with {args.attack}, {rows[0][1][1]} packets, "
          f"{size_mb:.1f} MB; detector: {origin}; chunk {args.chunk_size} packets; best of {args.repeats}")
    for name, (secs, n) in rows:
        print(f"{name:40s} {n / secs:12,.0f} packets/s  ({secs:.3f} s)")
    print(f"verdict rows written: {n_rows} (one per packet)")


if __name__ == "__main__":
    main()
