"""Streaming detection: a capture read chunk by chunk, featurized, judged; one verdict per row (or window) to CSV.

The detector's traffic kind (:class:`~fastmaml.apps.ids.traffic.Traffic`) reads the capture
and featurizes it with the fitted state, carrying per-stream state across chunks; windows
carry their unfinished tail, so any chunking gives the verdicts of one pass. Beside the CSV,
alert rules turn verdicts into alerts per stream (CAN ID, protocol) with false alerts per hour
and delays when the capture carries labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from fastmaml.apps.ids.alerts import ALERT_RULES, AlertRule, alert_metrics
from fastmaml.apps.ids.detect.detector import Detector, check_capture, log_odds, predict_logits, predict_proba
from fastmaml.apps.ids.detect.scores import KeyIndex
from fastmaml.apps.ids.detect.union import rule_channel
from fastmaml.apps.ids.evidence import Alerts, CusumState, Evidence, cusum_alerts, judge, merge_alerts
from fastmaml.errors import DataError
from fastmaml.apps.ids.metrics import detection_metrics
from fastmaml.apps.ids.samples import make_windows, window_labels
from fastmaml.apps.ids.traffic import ReadOptions


@dataclass
class DetectSummary:
    """Totals of a streaming run."""

    frames: int
    samples: int  # verdicts written (frames, or windows)
    flagged: int
    seconds: float
    frames_per_second: float
    out: str
    metrics: dict[str, float] | None = None  # when the capture carries labels
    unit: str = "frames"  # the traffic kind's rows: "frames" (CAN), "packets" (Ethernet)
    reader_note: str = ""  # malformed packets skipped / file truncated, when any
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert rule -> alert_metrics (needs timestamps)
    key_name: str = "CAN ID"  # what the alert streams are per (the traffic kind's key: CAN ID, protocol)
    # The calibrated evidence alerts (CUSUM on log-odds per stream): threshold, alert times and keys, and,
    # against labels, evidence.Judgement.to_dict() (occurrences caught, delays, false alerts per hour).
    evidence: dict[str, Any] | None = None


class _WindowStream:
    """Windows of ``w`` rows every ``stride`` over a capture read in chunks.

    The unfinished window is carried into the next chunk, so streaming yields exactly the
    windows of a one-pass run (CAN frames and Ethernet packets alike).
    """

    def __init__(self, n_features: int, w: int, stride: int) -> None:
        self.w, self.stride = w, stride
        self.tail_x = np.zeros((0, n_features), np.float32)
        self.tail_y = np.zeros(0, np.int64)
        self.seen = 0  # rows pushed so far
        self.skip = 0  # rows still to pass over before the next window starts (stride > w)

    def push(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add a chunk's rows and labels; return the first row index of each completed window, the
        windows ``[n, w, F]`` (contiguous) and the labels of the rows they start from (tail included)."""
        drop = min(self.skip, len(x))
        self.skip -= drop
        start = self.seen + drop - len(self.tail_x)
        self.seen += len(x)
        x, y = np.concatenate([self.tail_x, x[drop:]]), np.concatenate([self.tail_y, y[drop:]])
        xs = make_windows(x, self.w, self.stride)
        used = len(xs) * self.stride
        self.skip += max(used - len(x), 0)
        self.tail_x, self.tail_y = x[used:], y[used:]
        return start + np.arange(len(xs)) * self.stride, np.ascontiguousarray(xs), y


def stream_detect(det: Detector, capture: str | Path, out_csv: str | Path, *, labels: str | Path | None = None,
                  format: str = "auto", chunk_size: int = 65536, progress: bool = True,
                  skip_malformed: bool = False, alert_rules: Sequence[AlertRule] = ALERT_RULES,
                  columns: Sequence[str] | dict[str, Any] | None = None, bad_id: str = "error",
                  frames_per_second: float | None = None, evidence: Evidence | None = None,
                  gap_s: float = 0.05, label_column: int = 1) -> DetectSummary:
    """Stream ``capture`` (a capture of the detector's traffic kind) through ``det``; verdicts to ``out_csv``.

    Sample-level detectors write one row per frame/packet:
    ``frame,timestamp,can_id,p_attack,log_odds,verdict[,label]`` (``log_odds``: logit attack minus
    logit benign, the score evidence sums; Ethernet: ``packet,timestamp,proto,...``, ``packet`` = its index in the file); window detectors
    write ``first_frame,last_frame,p_attack,verdict[,label]`` (``first_packet,last_packet`` for
    Ethernet; in general the traffic kind's unit and key column). ``label`` (0/1 ground truth)
    appears when the capture carries labels. Malformed pcap packets are always skipped and
    counted; CAN lines only with ``skip_malformed``. ``format``, ``columns`` and ``bad_id`` go to
    the CAN readers.
    The summary also holds, per alert rule, the alerts raised (per CAN ID / protocol, or bus-wide
    for windows) and, against the labels, false alerts per hour and the delay to each attack.
    Captures without timestamps (CICIoV2024) get alert metrics only with ``frames_per_second``,
    the bus rate assumed to turn frame counts into time.

    ``evidence`` (default: the detector's calibrated setting, if any): the CUSUM of each stream's
    log-odds raises the alerts of ``DetectSummary.evidence``; against labels, each attack occurrence
    (per attacked ID, split where frames are more than ``gap_s`` or 5 periods of that ID apart) is
    caught or not, and alerts that did not see an attack are false.
    """
    check_capture(det, capture)
    traffic = det.kind()
    options = ReadOptions(format=format, chunk_size=chunk_size, skip_malformed=skip_malformed, columns=columns,
                          bad_id=bad_id, label_column=label_column)
    stream = traffic.row_stream(det.state(), capture, labels, options)
    unit = traffic.unit
    net = det.module()
    cols = det.columns()
    identity = cols == list(range(len(det.all_features())))
    w, stride = det.window, det.stride or det.window or 1
    windows = _WindowStream(len(cols), w, stride) if w is not None else None
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(f".{out_csv.name}.part")
    n_rows = n_samples = n_flagged = 0
    kept: dict[str, list[np.ndarray]] = {"v": [], "y": [], "t": [], "k": [], "pos": []}
    ev = evidence if evidence is not None else det.alarm()
    if ev is not None and w is not None:
        raise DataError("evidence over time needs a frame-level detector; this one reads windows")
    cusum_state, key_index, ev_alerts, rule_alerts = CusumState(), KeyIndex(), [], []
    rule_checks: dict[int, list[str]] = {}  # frame of a rule alert -> the checks that frame fails
    channel = rule_channel(det) if ev is not None else None  # a rule raising alerts beside the detector (union.py)
    labelled: bool | None = None  # every chunk so far carried labels (the first one decides the CSV columns)
    t0 = time.perf_counter()
    bar = tqdm(unit=f" {unit}s", unit_scale=True, disable=not progress, desc="detect", mininterval=0.5)
    try:
        with open(tmp, "w", encoding="ascii") as fh, torch.inference_mode():
            for r in stream.rows:
                if labelled is None:
                    with_label = r.truth is not None
                    fh.write(_header(unit, traffic.key_column, w, with_label))
                labelled = (r.truth is not None) and labelled is not False
                truth = r.truth if r.truth is not None else np.full(len(r.x), -1, np.int64)
                x = r.x if identity else r.x[:, cols]
                if w is None:
                    z = predict_logits(net, torch.from_numpy(np.ascontiguousarray(x)))
                    p = torch.softmax(z, -1)[:, 1].numpy()
                    lo = log_odds(z)
                    v = p > det.threshold
                    fh.write(_sample_rows(r.index, r.ts, r.key, p, lo, v, truth if with_label else None))
                    t, k, pos = r.ts, r.key, np.arange(n_rows, n_rows + len(r.x))
                    if ev is not None:
                        keys = key_index(np.asarray(r.key))
                        a, cusum_state = cusum_alerts(lo, np.asarray(r.ts, np.float64), keys, ev, cusum_state)
                        ev_alerts.append(Alerts(a.index + n_rows, a.time, a.key, a.onset))
                        if channel is not None:
                            a = channel(r.x, np.asarray(r.ts, np.float64), keys)
                            rule_alerts.append(Alerts(a.index + n_rows, a.time, a.key, a.onset))
                            for i, why in zip(a.index.tolist(), channel.explain(r.x[a.index])):
                                if why:
                                    rule_checks[i + n_rows] = why
                else:
                    first, xs, yt = windows.push(x, truth)
                    p = predict_proba(net, torch.from_numpy(xs)).numpy() if len(xs) else np.zeros(0)
                    v = p > det.threshold
                    truth = (window_labels(np.maximum(yt, 0), w, stride, 0, det.label_rule) if len(xs)
                             else np.zeros(0, np.int64))
                    fh.write(_window_rows(first, w, p, v, truth if with_label else None))
                    # A window is complete once its last row arrives, so that row is in this chunk.
                    t = r.ts[first + w - 1 - n_rows] if len(first) else r.ts[:0]
                    k = np.zeros(len(v), np.int64)  # windows span all IDs: one bus-wide alert stream
                    pos = first + w - 1
                kept["v"].append(v)
                kept["y"].append(truth.astype(bool))
                kept["t"].append(np.asarray(t, np.float64))
                kept["k"].append(np.asarray(k))
                kept["pos"].append(pos)
                n_rows += len(r.x)
                n_samples += len(v)
                n_flagged += int(v.sum())
                bar.update(len(r.x))
            if labelled is None:
                fh.write(_header(unit, traffic.key_column, w, False))
        tmp.replace(out_csv)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    secs = time.perf_counter() - t0
    v, y = (np.concatenate(kept["v"]), np.concatenate(kept["y"])) if kept["v"] else (np.zeros(0, bool),) * 2
    metrics = detection_metrics(v, y) if labelled and len(v) else None
    if frames_per_second and kept["t"] and np.isnan(np.concatenate(kept["t"])).any():
        kept["t"] = [np.concatenate(kept["pos"]).astype(np.float64) / frames_per_second]  # position -> assumed time
    alerts = _alerts(v, y if labelled else np.zeros(len(v), bool), kept, alert_rules) if len(v) else {}
    ev_summary = None
    if ev is not None and len(v):
        ev_summary = _evidence_summary(ev, ev_alerts, y if labelled else None, kept, key_index, gap_s,
                                       traffic.partners(det.state()), rule_alerts,
                                       channel.rule if channel is not None else "", rule_checks)
    return DetectSummary(n_rows, n_samples, n_flagged, secs, n_rows / max(secs, 1e-9), str(out_csv), metrics,
                         unit=f"{unit}s", reader_note=stream.note(), alerts=alerts, key_name=traffic.key_name,
                         evidence=ev_summary)


def _evidence_summary(ev: Evidence, parts: list[Alerts], y: np.ndarray | None, kept: dict[str, list[np.ndarray]],
                      key_index: KeyIndex, gap_s: float, partners: dict[int, set[int]],
                      rule_parts: list[Alerts] | None = None, rule: str = "",
                      rule_checks: dict[int, list[str]] | None = None) -> dict[str, Any]:
    """The evidence alerts of a whole capture (the detector's and, with a union rule, the rule's, in frame order),
    judged against its labels when it has them; a rule alert names the checks its frame fails (``rule_checks``)."""
    rule_checks = rule_checks or {}
    det_a, rule_a = merge_alerts(*parts), merge_alerts(*(rule_parts or []))  # the chunks' alerts, in frame order
    a = merge_alerts(det_a, rule_a)
    source = np.r_[np.zeros(len(det_a.index), np.int64), np.ones(len(rule_a.index), np.int64)]
    source = source[np.argsort(np.r_[det_a.index, rule_a.index], kind="stable")]
    names = {v: k for k, v in key_index.ids.items()}
    out: dict[str, Any] = {"threshold": ev.threshold, "clip": ev.clip, "drift": ev.drift, "holdoff_s": ev.holdoff_s,
                           "alerts": int(len(a.index)),
                           "alert_list": [{"frame": int(i), "time": float(t), "key": names.get(int(k), int(k)),
                                           **({"channel": rule if c else "detector"} if rule else {}),
                                           **({"checks": rule_checks[int(i)]} if c and int(i) in rule_checks else {})}
                                          for i, t, k, c in zip(a.index, a.time, a.key, source)]}
    if rule:
        out["union"] = {"rule": rule, "detector_alerts": int(len(det_a.index)), "rule_alerts": int(len(rule_a.index))}
    t = np.concatenate(kept["t"])
    out["seconds"] = float(t[-1] - t[0]) if len(t) > 1 else 0.0
    if y is not None:
        keys = np.concatenate([key_index(np.asarray(k)) for k in kept["k"]])
        out["judgement"] = judge(a, y, t, keys, gap_s, partners).to_dict()
        for o in out["judgement"]["per_occurrence"]:
            o["key"] = names.get(o["key"], o["key"])
    return out


def _alerts(v: np.ndarray, y: np.ndarray, kept: dict[str, list[np.ndarray]], rules: Sequence[AlertRule]
            ) -> dict[str, dict[str, Any]]:
    """Per alert rule: alerts, false alerts per hour, occurrences alerted and delays (needs timestamps)."""
    t = np.concatenate(kept["t"])
    if np.isnan(t).any():
        return {}  # no timestamps (e.g. CICIoV2024): no time base for alerts per hour
    keys = np.concatenate(kept["k"])
    _, stream = np.unique(keys, return_inverse=True)
    return {rule.name: alert_metrics(v, y, t, stream, rule) for rule in rules}


def _header(unit: str, key: str, window: int | None, labelled: bool) -> str:
    cols = [unit, "timestamp", key, "p_attack", "log_odds"] if window is None else [f"first_{unit}", f"last_{unit}",
                                                                                    "p_attack"]
    return ",".join(cols + ["verdict"] + (["label"] if labelled else [])) + "\n"


def _sample_rows(idx: np.ndarray, ts: np.ndarray, key: np.ndarray, p: np.ndarray, lo: np.ndarray, v: np.ndarray,
                 truth: np.ndarray | None) -> str:
    tss = ["" if t != t else f"{t:.6f}" for t in ts.tolist()]
    ps = [f"{x:.4f}" for x in p.tolist()]
    los = [f"{x:.3f}" for x in lo.tolist()]
    vs = v.astype(np.int8).tolist()
    if truth is None:
        rows = [f"{i},{t},{c},{q},{o},{d}" for i, t, c, q, o, d in zip(idx.tolist(), tss, key.tolist(), ps, los, vs)]
    else:
        rows = [f"{i},{t},{c},{q},{o},{d},{y}" for i, t, c, q, o, d, y in zip(idx.tolist(), tss, key.tolist(), ps, los,
                                                                              vs, truth.tolist())]
    return "".join(r + "\n" for r in rows)


def _window_rows(first: np.ndarray, w: int, p: np.ndarray, v: np.ndarray, truth: np.ndarray | None) -> str:
    ps = [f"{x:.4f}" for x in p.tolist()]
    vs = v.astype(np.int8).tolist()
    f = first.tolist()
    if truth is None:
        rows = [f"{a},{a + w - 1},{q},{d}" for a, q, d in zip(f, ps, vs)]
    else:
        rows = [f"{a},{a + w - 1},{q},{d},{y}" for a, q, d, y in zip(f, ps, vs, truth.tolist())]
    return "".join(r + "\n" for r in rows)
