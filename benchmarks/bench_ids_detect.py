"""CAN intrusion-detection throughput on one core: read + features + FrameMLP forward.

Simulates a capture (default 300 s, ~130k frames with a DoS attack), writes it as a candump
log, then times, single-threaded (torch.set_num_threads(1)):
  read     candump log -> FrameBatch chunks
  feat     + frame features (FeatureState fitted on a separate benign capture)
  detect   + FrameMLP(F -> 64 -> 64 -> 2) forward on each chunk
  ids detect  the whole `fastmaml ids detect` path (stream_detect: + CSV verdicts), frame and window detectors
and, with --cic, the CICIoV2024 reader on the real 1.2M-row benign zip; with --signals also the
signal-level features (can/signals.py) on the same capture, beside the plain ones (the
FeatureState fitted with signals=True), and their ratio, and the path `ids adapt --clean` deploys: evidence alerts
with the detector alone and beside the plausibility and timing rules (a second channel), side by side.
The target is >= 100,000 frames/s for "detect".

Usage: python benchmarks/bench_ids_detect.py [--seconds 300] [--chunk 65536] [--cic PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fastmaml.apps.ids.can import sim as can_sim
from fastmaml.apps.ids.can.readers import open_capture
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer, frame_feature_names
from fastmaml.apps.ids.detect import Detector, calibrate_detector, load_detector, save_detector, stream_detect
from fastmaml.apps.ids.registry import load_ids_config
from fastmaml.apps.ids.models import build_model
from fastmaml.apps.ids.models import FrameMLP
from fastmaml.config import to_dict


def run(path: Path, chunk: int, state: FeatureState | None, model: torch.nn.Module | None) -> tuple[int, float]:
    """Frames and seconds for one pass over ``path``."""
    t0 = time.perf_counter()
    n = 0
    fz = FrameFeaturizer(state) if state is not None else None
    with torch.inference_mode():
        for b in open_capture(path, chunk_size=chunk):
            n += len(b)
            if fz is not None:
                x = fz.transform(b)
                if model is not None:
                    model(torch.from_numpy(x)).argmax(1)
    return n, time.perf_counter() - t0


def preset_detector(state: FeatureState, window: int | None) -> Detector:
    """An (untrained) detector with the sim preset's model: speed does not depend on the weights."""
    cfg = load_ids_config("sim")
    names = frame_feature_names(state)
    torch.manual_seed(0)
    net = build_model(cfg.model, len(names), window)
    return Detector(to_dict(cfg.model), {k: v.detach() for k, v in net.state_dict().items()}, state.to_dict(), names,
                    window, window, "any", ["benign", "attack"], cfg.maml.inner_lr, cfg.eval.steps)


def _stream(det_path: Path, capture: Path, out: Path, chunk: int) -> float:
    t0 = time.perf_counter()
    summary = stream_detect(load_detector(det_path), capture, out, chunk_size=chunk, progress=False)
    return summary.frames / (time.perf_counter() - t0)


def _real_capture(path: Path, chunk: int, repeat: int) -> None:
    """Features (+ a FrameMLP forward) on a real capture in memory, plain and with signals, in one run."""
    frames = open_capture(path).read_all()
    fit = frames.select(slice(0, int(0.4 * len(frames))))
    for label, st in (("plain", FeatureState.fit(fit)), ("signals", FeatureState.fit(fit, signals=True))):
        net = FrameMLP(len(frame_feature_names(st)), (64, 64), 2).eval()
        best = 0.0
        for _ in range(repeat):
            fz = FrameFeaturizer(st)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for a in range(0, len(frames), chunk):
                    net(torch.from_numpy(fz.transform(frames.select(slice(a, a + chunk))))).argmax(1)
            best = max(best, len(frames) / (time.perf_counter() - t0))
        extra = f", {len(st.signals)} signals ({sum(bool(x.partners) for x in st.signals)} with partners)" if st.signals else ""
        print(f"{path.name} {label:8s} feat+mlp (mem) {best:12,.0f} frames/s  ({len(frames):,} frames{extra})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="simulated capture length")
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=3, help="best of N passes")
    ap.add_argument("--cic", type=Path, default=None, help="CICIoV2024 decimal_benign.csv.zip to time the reader on")
    ap.add_argument("--signals", action="store_true", help="also time the signal-level features")
    ap.add_argument("--real", type=Path, default=None,
                    help="a real clean capture (e.g. DAGA's clean/V40_03.can.zip) to time the features with and without "
                         "signals on, the state fitted on its first 40%%")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    clean = can_sim.simulate("none", 60.0, 1)
    state = FeatureState.fit(clean)
    model = FrameMLP(len(frame_feature_names(state)), (64, 64), 2).eval()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "capture.log"
        frames = can_sim.simulate("dos", args.seconds, 2)
        can_sim.write_candump(frames, path)
        print(f"torch={torch.__version__} threads={torch.get_num_threads()} frames={len(frames)} chunk={args.chunk}")
        for name, st, m in (("read", None, None), ("read+feat", state, None), ("read+feat+mlp", state, model)):
            best = max(n / s for n, s in (run(path, args.chunk, st, m) for _ in range(args.repeat)))
            print(f"{name:14s} {best:12,.0f} frames/s")
        # the whole `fastmaml ids detect` path: read, features, the sim preset's window detector, CSV verdicts
        for window in (None, 16):
            det_path = Path(d) / f"det_w{window}"
            save_detector(preset_detector(state, window), det_path)
            best = max(_stream(det_path, path, Path(d) / "verdicts.csv", args.chunk) for _ in range(args.repeat))
            label = f"ids detect w={window or 1}"
            print(f"{label:14s} {best:12,.0f} frames/s  (stream_detect: read + features + detector + CSV)")
        if args.signals:
            sig_state = FeatureState.fit(clean, signals=True)
            sig_model = FrameMLP(len(frame_feature_names(sig_state)), (64, 64), 2).eval()
            plain, sig = (max(n / s for n, s in (run(path, args.chunk, st, m) for _ in range(args.repeat)))
                          for st, m in ((state, model), (sig_state, sig_model)))
            print(f"{'+signals':14s} {sig:12,.0f} frames/s  read+feat+mlp with {len(sig_state.signals)} signals "
                  f"({sum(bool(x.partners) for x in sig_state.signals)} with partners): {sig / plain:.2f}x the "
                  f"plain features' {plain:,.0f}")
            det_path = Path(d) / "det_sig"
            save_detector(preset_detector(sig_state, None), det_path)
            best = max(_stream(det_path, path, Path(d) / "verdicts.csv", args.chunk) for _ in range(args.repeat))
            print(f"{'ids detect sig':14s} {best:12,.0f} frames/s  (stream_detect with signal features)")
            # As ids adapt --clean deploys it: evidence alerts (a CUSUM per CAN ID) with the detector alone, and beside
            # the plausibility and timing rules (a second channel), each calibrated on a clean capture; side by side.
            clean_path = Path(d) / "clean.log"
            can_sim.write_candump(clean, clean_path)
            rates = {}
            for union in ("none", "plausibility_timing"):
                cal_det, _ = calibrate_detector(load_detector(det_path), clean_path, 10.0, union=union)
                save_detector(cal_det, Path(d) / f"det_{union}")
                rates[union] = max(_stream(Path(d) / f"det_{union}", path, Path(d) / "verdicts.csv", args.chunk)
                                   for _ in range(args.repeat))
            print(f"{'ids detect ev':14s} {rates['none']:12,.0f} frames/s  (+ evidence alerts, the detector alone)")
            print(f"{'ids detect pair':14s} {rates['plausibility_timing']:12,.0f} frames/s  (+ the plausibility and "
                  f"timing rules beside it, as deployed: {rates['plausibility_timing'] / rates['none']:.2f}x)")
        # the hot path without parsing text (frames already in memory, e.g. from a live socket)
        fz = FrameFeaturizer(state)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for a in range(0, len(frames), args.chunk):
                model(torch.from_numpy(fz.transform(frames.select(slice(a, a + args.chunk))))).argmax(1)
        print(f"{'feat+mlp (mem)':14s} {len(frames) / (time.perf_counter() - t0):12,.0f} frames/s")
    if args.real is not None:
        _real_capture(args.real, args.chunk, args.repeat)
    if args.cic is not None:
        n, s = run(args.cic, args.chunk, None, None)
        print(f"CICIoV2024 reader on {args.cic.name}: {n:,} rows in {s:.2f}s = {n / s:,.0f} rows/s")


if __name__ == "__main__":
    main()
