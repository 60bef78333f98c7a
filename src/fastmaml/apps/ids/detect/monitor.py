"""Live monitoring: the streaming detector of ``ids detect`` on a CAN bus read through python-can.

Frames are read with ``bus.recv(timeout)`` into batches (up to ``batch_s`` seconds or
``batch_frames`` frames), and each batch is one chunk of the stream: the frame features
(:class:`~fastmaml.apps.ids.can.features.FrameFeaturizer`, per-ID state carried across
batches), the detector's log-odds and the per-CAN-ID CUSUM (:func:`~fastmaml.apps.ids.evidence.cusum_alerts`,
its :class:`~fastmaml.apps.ids.evidence.CusumState` carried across batches). Both carry their state,
so any batching gives the alerts ``ids detect`` raises on the same frames in one pass.

Time is each Message's own timestamp: on a real bus the driver's receive time, and on a replay
(python-can's virtual bus with ``preserve_timestamps=True``) the capture's timestamps as sent;
the wall clock is used only for the batch window and ``duration_s``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fastmaml.apps.ids.can.capture import rows_to_batch
from fastmaml.apps.ids.can.features import FrameFeaturizer
from fastmaml.apps.ids.can.frames import FrameBatch
from fastmaml.apps.ids.can.traffic import CanTraffic
from fastmaml.apps.ids.detect.detector import Detector, log_odds, predict_logits
from fastmaml.apps.ids.detect.union import rule_channel
from fastmaml.apps.ids.evidence import CusumState, Evidence, cusum_alerts
from fastmaml.errors import DataError

NO_THRESHOLD = ("the detector is not calibrated, so it has no evidence threshold to alert at: calibrate it on a clean "
                "capture (fastmaml ids detect --detector DIR --clean CLEAN.log --capture CLEAN.log --out verdicts.csv "
                "writes the threshold into DIR) or pass --threshold")


@dataclass
class MonitorSummary:
    """Totals of a monitoring run."""

    frames: int  # data frames scored
    alerts: int
    seconds: float  # wall time from start to stop
    busy_seconds: float  # of which spent featurizing and scoring: frames / busy_seconds is what it keeps up with
    frames_per_second: float  # frames / seconds: the bus's rate when the bus is the bottleneck
    batches: int
    error_frames: int  # CAN error frames received (skipped)
    stopped: str  # "max-frames", "duration" or "interrupted"
    dropped: int | None = None  # frames the interface says it lost; None: python-can does not report it

    def line(self) -> str:
        drop = ("dropped frames not reported by this python-can interface" if self.dropped is None
                else f"{self.dropped} dropped")
        return (f"monitor stopped ({self.stopped}): {self.frames} frames in {self.seconds:.1f} s "
                f"({self.frames_per_second:,.0f} frames/s; scoring busy {self.busy_seconds:.2f} s, "
                f"{self.frames / max(self.busy_seconds, 1e-9):,.0f} frames/s capacity), {self.alerts} alerts, "
                f"{self.batches} batches, {self.error_frames} error frames, {drop}")


class FrameScorer:
    """The batch function: a chunk of frames in, its evidence alerts out (dicts, one per alert).

    Carries the featurizer's per-ID state, the CUSUM state and the frame count across calls.
    """

    def __init__(self, det: Detector, evidence: Evidence | None = None) -> None:
        if not isinstance(det.kind(), CanTraffic):  # python-can delivers CAN frames: no other kind can be monitored
            raise DataError(f"ids monitor reads a CAN bus; this detector reads {det.kind().description}")
        if det.window is not None:
            raise DataError(f"evidence alerts need a frame-level detector; this one reads windows of {det.window} "
                            "frames: retrain it with features.window=null")
        ev = evidence if evidence is not None else det.alarm()
        if ev is None:
            raise DataError(NO_THRESHOLD)
        self.ev = ev
        self.net, self.cols = det.module(), det.columns()
        self.featurizer = FrameFeaturizer(det.state())
        self.cusum = CusumState()
        self.channel = rule_channel(det)  # a rule raising alerts beside the detector (union.py), if calibrated so
        self.frames = 0

    def __call__(self, b: FrameBatch) -> list[dict[str, Any]]:
        """Score the next chunk; its alerts as JSON-able dicts (``frame``: index in the stream, as ``ids detect``)."""
        if not len(b):
            return []
        rows = self.featurizer.transform(b)
        x = np.ascontiguousarray(rows[:, self.cols])
        with torch.inference_mode():
            z = predict_logits(self.net, torch.from_numpy(x))
        keys = b.can_id.astype(np.int64)
        alerts, self.cusum = cusum_alerts(log_odds(z), b.timestamp, keys, self.ev, self.cusum)
        channels = [("detector", self.ev, alerts, [[]] * len(alerts.index))]
        if self.channel is not None:
            a = self.channel(rows, b.timestamp, keys)
            channels.append((self.channel.rule, self.channel.ev, a, self.channel.explain(rows[a.index])))
        out = [{"time": float(t), "can_id": int(k), "can_id_hex": f"0x{int(k):x}", "evidence": round(float(lv), 4),
                "threshold": ev.threshold, "onset": float(on), "frame": int(i) + self.frames,
                "frames": int(i) + self.frames + 1, **({"channel": name} if self.channel is not None else {}),
                **({"checks": why} if why else {})}
               for name, ev, a, whys in channels
               for i, t, k, on, lv, why in zip(a.index, a.time, a.key, a.onset, a.level, whys)]
        out.sort(key=lambda d: d["frame"])
        self.frames += len(b)
        return out


def messages_to_batch(msgs: Sequence[Any]) -> FrameBatch:
    """python-can Messages (data frames) as a FrameBatch, the way the python-can capture reader builds them."""
    return rows_to_batch([(float(m.timestamp), int(m.arbitration_id), bool(m.is_extended_id), bool(m.is_remote_frame),
                           bool(m.is_fd), int(m.dlc), bytes(m.data), None) for m in msgs])


def open_bus(spec: str, bitrate: int | None = None) -> Any:
    """``can.Bus`` for ``INTERFACE:CHANNEL`` (e.g. ``socketcan:can0``); DataError in one line when it cannot open."""
    interface, _, channel = spec.partition(":")
    if not interface or not channel:
        raise DataError(f"--bus {spec!r}: give INTERFACE:CHANNEL, e.g. socketcan:can0, pcan:PCAN_USBBUS1, virtual:test")
    try:
        import can
    except ImportError:
        raise DataError("monitoring a live bus needs python-can: pip install 'fastmaml[ids]'") from None
    kw: dict[str, Any] = {"bitrate": bitrate} if bitrate else {}
    try:
        return can.Bus(interface=interface, channel=channel, **kw)
    except can.CanInterfaceNotImplementedError as e:
        known = ", ".join(sorted(can.VALID_INTERFACES))
        raise DataError(f"--bus {spec}: python-can cannot use interface {interface!r} "
                        f"(CanInterfaceNotImplementedError: {_one_line(e)}); its interfaces: {known}") from None
    except (can.CanError, OSError, ValueError) as e:
        # socketcan on a missing channel raises OSError or CanInitializationError depending on the version.
        raise DataError(f"--bus {spec}: cannot open channel {channel!r} ({type(e).__name__}: {_one_line(e)}); check "
                        f"the device exists and is up (socketcan: ip link show {channel})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or "no message"


def collect(bus: Any, out: list[Any], want: int, wait_s: float) -> None:
    """Append received messages to ``out`` until it holds ``want`` or ``wait_s`` has passed (or the bus is quiet).

    Appending in place keeps the frames already received when Ctrl-C interrupts ``recv``.
    """
    end = time.monotonic() + wait_s
    while len(out) < want:
        left = end - time.monotonic()
        if left <= 0:
            return
        m = bus.recv(left)
        if m is None:
            return
        out.append(m)


def monitor(scorer: FrameScorer, bus: Any, *, alerts_path: str | Path | None = None, duration_s: float | None = None,
            max_frames: int | None = None, batch_s: float = 0.05, batch_frames: int = 4096,
            echo: Callable[[str], None] | None = print) -> MonitorSummary:
    """Score the frames ``bus`` receives until ``max_frames``, ``duration_s`` or Ctrl-C; alerts to ``alerts_path``.

    Each alert is one JSON line (flushed per batch, so a killed run leaves whole lines) and, with
    ``echo``, one console line. Ctrl-C scores the frames already received, then returns the summary.
    A python-can error while reading is a DataError naming it.
    """
    import can

    fh = None
    if alerts_path is not None:
        Path(alerts_path).parent.mkdir(parents=True, exist_ok=True)
        fh = open(alerts_path, "w", encoding="ascii")
    n_alerts = n_batches = n_errors = 0
    busy = 0.0
    pending: list[Any] = []
    stopped = "interrupted"
    t0 = time.monotonic()

    def score(msgs: list[Any]) -> None:
        nonlocal n_alerts, n_batches, n_errors, busy
        data = [m for m in msgs if not m.is_error_frame]
        n_errors += len(msgs) - len(data)
        t = time.perf_counter()
        alerts = scorer(messages_to_batch(data)) if data else []
        busy += time.perf_counter() - t
        n_batches += 1
        for a in alerts:
            if fh is not None:
                fh.write(json.dumps(a) + "\n")
            if echo is not None:
                why = f": {', '.join(a['checks'])}" if a.get("checks") else ""
                echo(f"ALERT t={a['time']:.6f} CAN ID {a['can_id_hex']} evidence {a['evidence']:.2f} > "
                     f"{a['threshold']:.2f} (frame {a['frame']}{', ' + a['channel'] if 'channel' in a else ''}{why})")
        if fh is not None:
            fh.flush()
        n_alerts += len(alerts)

    try:
        try:
            while True:
                seen = scorer.frames + n_errors
                if max_frames is not None and seen >= max_frames:
                    stopped = "max-frames"
                    break
                if duration_s is not None and time.monotonic() - t0 >= duration_s:
                    stopped = "duration"
                    break
                want = batch_frames if max_frames is None else min(batch_frames, max_frames - seen)
                wait = batch_s if duration_s is None else max(min(batch_s, t0 + duration_s - time.monotonic()), 0.0)
                try:
                    collect(bus, pending, want, wait)
                except (can.CanError, OSError) as e:  # CanOperationError, or the socket's own error on socketcan
                    raise DataError(f"the bus failed after {scorer.frames} frames ({type(e).__name__}: "
                                    f"{_one_line(e)})") from None
                batch, pending = pending, []  # taken first: a Ctrl-C inside score never scores a batch twice
                if batch:
                    score(batch)
        except KeyboardInterrupt:
            stopped = "interrupted"
            if pending:
                score(pending)  # the frames received before Ctrl-C
    finally:
        if fh is not None:
            fh.close()
    secs = time.monotonic() - t0
    return MonitorSummary(scorer.frames, n_alerts, secs, busy, scorer.frames / max(secs, 1e-9), n_batches, n_errors,
                          stopped)
