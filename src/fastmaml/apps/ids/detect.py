"""Adapted detectors: save/load (safetensors + JSON, never pickle), few-shot adaptation, streaming detection.

A detector folder holds ``detector.safetensors`` (the network's parameters) and
``detector.json`` (model config, fitted feature state, feature columns, window, class
names, the step size and number of steps used to adapt it, provenance). Streaming reads a
capture chunk by chunk through the readers, featurizes it with the fitted state (carrying
per-ID state and the unfinished window across chunks) and writes one verdict per frame (or
per window) to CSV.

Detectors of automotive-Ethernet traffic (``traffic == "eth"``) read pcap/pcapng captures
through :class:`~fastmaml.apps.ids.ethernet.pcap_reader.PcapReader` and the packet features
of :mod:`fastmaml.apps.ids.ethernet.features` instead (one verdict per packet); the same
functions dispatch on the detector's ``traffic``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fastmaml.apps.ids.alerts import ALERT_RULES, AlertRule, alert_metrics
from fastmaml.apps.ids.can.features import FeatureState, FrameFeaturizer, build_sample_set, frame_feature_names
from fastmaml.apps.ids.can.readers import open_capture
from fastmaml.apps.ids.config import ModelConfig
from fastmaml.apps.ids.ethernet.features import PACKET_FEATURES, EthFeatureState, EthFeaturizer
from fastmaml.apps.ids.ethernet.pcap_reader import PROTO_NAMES, PcapReader
from fastmaml.apps.ids.ethernet.labels import LabelTable
from fastmaml.apps.ids.ethernet.source import featurize_capture, is_pcap, to_samples
from fastmaml.apps.ids.metrics import detection_metrics
from fastmaml.apps.ids.models import build_model
from fastmaml.apps.ids.samples import BENIGN, make_windows, window_labels
from fastmaml.config import from_dict
from fastmaml.core.maml import MAML
from fastmaml.errors import DataError
from fastmaml.fileio import atomic_write_bytes, atomic_write_text

FORMAT = "fastmaml.ids.Detector"
WEIGHTS, META = "detector.safetensors", "detector.json"


@dataclass
class Detector:
    """A binary (benign vs attack) detector network plus everything needed to featurize raw traffic."""

    model: dict[str, Any]  # ModelConfig as a dict
    params: dict[str, torch.Tensor]
    feature_state: dict[str, Any]  # FeatureState.to_dict()
    feature_names: list[str]  # columns of FRAME_FEATURES the network reads, in order
    window: int | None
    stride: int | None
    label_rule: str
    class_names: list[str]  # [benign, attack name]
    inner_lr: float  # step size for few-shot adaptation
    adapt_steps: int
    threshold: float = 0.5  # p(attack) above which a sample is flagged
    meta: dict[str, Any] = field(default_factory=dict)
    traffic: str = "can"  # "can" (CAN logs, FRAME_FEATURES) or "eth" (pcap, PACKET_FEATURES)

    def module(self) -> nn.Module:
        """The network with this detector's parameters loaded."""
        net = build_model(from_dict(ModelConfig, dict(self.model), "model"), len(self.feature_names), self.window)
        try:
            net.load_state_dict(self.params)
        except RuntimeError as e:
            raise DataError(f"detector weights do not fit its model config {self.model} ({e}); re-save the detector") from e
        return net.eval()

    def all_features(self) -> list[str]:
        """Every column the featurizer of this detector's traffic computes."""
        if self.traffic == "eth":
            return list(PACKET_FEATURES)
        if self.traffic != "can":
            raise DataError(f"detector traffic {self.traffic!r} unknown (expected 'can' or 'eth'); re-save the detector")
        return frame_feature_names(self.state())

    def columns(self) -> list[int]:
        valid = self.all_features()
        unknown = [n for n in self.feature_names if n not in valid]
        if unknown:
            raise DataError(f"detector uses features {unknown} that this version does not compute; valid: {valid}")
        return [valid.index(n) for n in self.feature_names]

    def state(self) -> Any:
        """The fitted feature state (CAN ``FeatureState`` or Ethernet ``EthFeatureState``)."""
        if self.traffic == "eth":
            return EthFeatureState.from_dict(self.feature_state, "detector feature_state")
        return FeatureState.from_dict(self.feature_state, "detector feature_state")


def save_detector(det: Detector, path: str | Path) -> Path:
    """Write ``path/detector.safetensors`` + ``path/detector.json`` atomically; returns the folder."""
    from safetensors.torch import save

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS, save({k: v.detach().contiguous().cpu() for k, v in det.params.items()}))
    meta = {"format": FORMAT, "version": 1, **{k: v for k, v in det.__dict__.items() if k != "params"}}
    atomic_write_text(folder / META, json.dumps(meta, indent=1) + "\n")
    return folder


def load_detector(path: str | Path) -> Detector:
    """Read a detector folder (or its ``detector.json``) written by :func:`save_detector`."""
    from safetensors.torch import load_file

    p = Path(path)
    folder = p.parent if p.name == META else p
    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise DataError(f"{folder} is not a detector folder (needs {META} and {WEIGHTS}); "
                        "create one with `fastmaml ids train` or `fastmaml ids adapt`")
    try:
        meta = json.loads((folder / META).read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{folder / META} is not valid JSON ({e}); re-save the detector") from e
    if meta.get("format") != FORMAT:
        raise DataError(f"{folder / META} is not a fastmaml IDS detector (format={meta.get('format')!r})")
    try:
        params = load_file(str(folder / WEIGHTS))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise DataError(f"{folder / WEIGHTS} is truncated or corrupt ({e}); re-save the detector") from e
    fields = {f for f in Detector.__dataclass_fields__ if f != "params"}
    missing = sorted(fields - set(meta) - {"threshold", "meta", "traffic"})
    if missing:
        raise DataError(f"{folder / META} lacks {missing}; re-save the detector")
    det = Detector(params=params, **{k: meta[k] for k in fields if k in meta})
    det.module()  # fail now, with a clear message, if weights and config disagree
    return det


def _check_traffic(det: Detector, capture: str | Path) -> None:
    """DataError when the capture's kind (pcap vs CAN log) does not match the detector's traffic."""
    if not Path(capture).is_file():
        raise DataError(f"capture {capture} not found; check the path")
    pcap = is_pcap(capture)
    if det.traffic == "eth" and not pcap:
        raise DataError(f"{capture} is not a pcap/pcapng capture, but this detector was trained on automotive "
                        "Ethernet; give a pcap, or use a detector trained on CAN (--preset sim/cic)")
    if det.traffic != "eth" and pcap:
        raise DataError(f"{capture} is a pcap (Ethernet) capture, but this detector was trained on CAN traffic; "
                        "train an Ethernet detector with `fastmaml ids train --preset eth`")


def _reader(capture: str | Path, format: str, labels: str | Path | None, chunk_size: int, skip_malformed: bool,
            columns: Sequence[str] | dict[str, Any] | None = None, bad_id: str = "error"):
    kw: dict[str, Any] = {"chunk_size": chunk_size, "skip_malformed": skip_malformed}
    if labels is not None:
        kw["labels"] = labels
    if columns:
        kw["columns"] = columns
        format = "csv" if format == "auto" else format
    if bad_id != "error":
        kw["bad_id"] = bad_id
    try:
        return open_capture(capture, format, **kw)
    except TypeError:
        raise DataError(f"{capture}: this capture format carries its own labels; drop the label file option") from None


# =================================================================== adaptation
@dataclass
class AdaptInfo:
    """What adaptation used and how the adapted detector scores on the capture's other samples."""

    shots: int
    attack: str
    available: dict[str, int]
    holdout_metrics: dict[str, float] | None


def adapt_detector(det: Detector, capture: str | Path, k: int, *, labels: str | Path | None = None,
                   attack: str | None = None, steps: int | None = None, format: str = "auto", seed: int = 0,
                   max_samples: int = 200_000, columns: Sequence[str] | dict[str, Any] | None = None,
                   bad_id: str = "error") -> tuple[Detector, AdaptInfo]:
    """Adapt ``det`` to a new attack from K labelled benign + K attack samples of a capture.

    ``attack`` picks one attack class of the capture (default: every non-benign label is the
    attack). The other samples of the capture (up to ``max_samples`` per class) score the
    adapted detector. ``columns`` (format ``csv``): the column map of a labelled CSV export
    (``key=value`` strings or a dict); ``bad_id``: what to do with out-of-range IDs (error, skip, keep).
    """
    if k < 1:
        raise DataError(f"--shots must be >= 1 labelled sample per class, got {k}")
    _check_traffic(det, capture)
    if det.traffic == "eth":
        if labels is None:
            raise DataError(f"{capture}: adapting needs labelled packets; give --labels (index/timestamp,attack CSV)")
        cf = featurize_capture(capture, det.state(), labels)
        s, _ = to_samples(cf, det.window, det.stride, det.label_rule, max_samples, max_samples, seed)
    else:
        reader = _reader(capture, format, labels, 65536, False, columns, bad_id)
        s = build_sample_set(reader, det.state(), window=det.window, stride=det.stride, label_rule=det.label_rule,
                             max_per_class=max_samples, seed=seed, name=str(capture))
    attacks = [c for c in s.class_names if c != BENIGN]
    if attack is not None and attack not in attacks:
        raise DataError(f"attack {attack!r} not in {capture}; its labels are {attacks or 'benign only'}")
    chosen = [attack] if attack else attacks
    y = torch.zeros(len(s), dtype=torch.long)
    for c in chosen:
        y[s.labels == s.class_names.index(c)] = 1
    keep = (s.labels == 0) | (y == 1)
    x, y = s.features[keep][..., det.columns()], y[keep]
    available = {BENIGN: int((y == 0).sum()), "+".join(chosen) or "attack": int((y == 1).sum())}
    for name, n in available.items():
        if n < k:
            raise DataError(f"{capture} has {n} {name!r} samples but --shots {k} needs {k} per class; "
                            "lower --shots or give a longer capture")
    g = torch.Generator().manual_seed(seed)
    picks = [torch.nonzero(y == c).squeeze(1) for c in (0, 1)]
    picks = [p[torch.randperm(p.numel(), generator=g)[:k]] for p in picks]
    support = torch.cat(picks)
    net = det.module()
    learner = MAML(net, F.cross_entropy, inner_lr=det.inner_lr, inner_steps=1)
    steps = det.adapt_steps if steps is None else steps
    params = learner.adapt(x[support], y[support], steps=steps)
    name = "+".join(chosen) if chosen else "attack"
    new = replace(det, params={n: p.detach().clone() for n, p in params.items()}, class_names=[BENIGN, name],
                  meta={**det.meta, "adapted_to": name, "shots": k, "adapt_steps_used": steps,
                        "adapt_capture": str(capture)})
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[support] = False
    metrics = None
    if bool(rest.any()):
        p = predict_proba(new.module(), x[rest])
        metrics = detection_metrics((p > new.threshold).numpy(), (y[rest] == 1).numpy())
    return new, AdaptInfo(k, name, available, metrics)


def predict_proba(net: nn.Module, x: torch.Tensor, batch_size: int = 16384) -> torch.Tensor:
    """p(attack) per sample."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(torch.softmax(net(x[i: i + batch_size]), -1)[:, 1])
    return torch.cat(out) if out else torch.zeros(0)


# ==================================================================== streaming
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
    unit: str = "frames"  # "frames" (CAN) or "packets" (Ethernet)
    reader_note: str = ""  # malformed packets skipped / file truncated, when any
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert rule -> alert_metrics (needs timestamps)


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


@dataclass
class _Rows:
    """One chunk of a capture, featurized: what the streaming loop needs from a traffic source."""

    x: np.ndarray  # features [n, all features of the traffic]
    truth: np.ndarray | None  # 0/1 per row; None when the capture carries no labels
    index: np.ndarray  # row number in the capture (frame or packet index)
    ts: np.ndarray  # timestamps (NaN where the capture has none)
    key: np.ndarray  # per-row stream: CAN ID, or Ethernet protocol name (output column and alert streams)


def _can_rows(det: Detector, capture: str | Path, labels: str | Path | None, format: str, chunk_size: int,
              skip_malformed: bool, columns: Sequence[str] | dict[str, Any] | None = None, bad_id: str = "error"
              ) -> tuple[Iterator[_Rows], Callable[[], str]]:
    reader = _reader(capture, format, labels, chunk_size, skip_malformed, columns, bad_id)
    fz = FrameFeaturizer(det.state())

    def rows() -> Iterator[_Rows]:
        n = 0
        for b in reader:
            has = bool((b.label >= 0).all())
            yield _Rows(fz.transform(b), b.is_attack().astype(np.int64) if has else None,
                        np.arange(n, n + len(b)), b.timestamp, b.can_id)
            n += len(b)

    def note() -> str:
        st = reader.stats
        return f"{st.lines_skipped} malformed line(s) skipped, e.g. {st.skip_reasons[:3]}" if st.lines_skipped else ""

    return rows(), note


def _eth_rows(det: Detector, capture: str | Path, labels: str | Path | None, chunk_size: int
              ) -> tuple[Iterator[_Rows], Callable[[], str]]:
    table = LabelTable.load(labels) if labels is not None else None
    reader = PcapReader(capture, chunk_size=chunk_size)
    fz = EthFeaturizer(det.state())
    proto_names = np.array(PROTO_NAMES)

    def rows() -> Iterator[_Rows]:
        for c in reader.chunks():
            truth = (table.lookup(index=c.index, ts=c.ts) > 0).astype(np.int64) if table is not None else None
            yield _Rows(fz.transform(c), truth, c.index, c.ts, proto_names[c.proto])

    def note() -> str:
        st = reader.stats
        return st.summary() if st.malformed or st.truncated_file else ""

    return rows(), note


def stream_detect(det: Detector, capture: str | Path, out_csv: str | Path, *, labels: str | Path | None = None,
                  format: str = "auto", chunk_size: int = 65536, progress: bool = True,
                  skip_malformed: bool = False, alert_rules: Sequence[AlertRule] = ALERT_RULES,
                  columns: Sequence[str] | dict[str, Any] | None = None, bad_id: str = "error",
                  frames_per_second: float | None = None) -> DetectSummary:
    """Stream ``capture`` (CAN log, or pcap/pcapng for an Ethernet detector) through ``det``; verdicts to ``out_csv``.

    Sample-level detectors write one row per frame/packet: ``frame,timestamp,can_id,p_attack,verdict[,label]``
    (Ethernet: ``packet,timestamp,proto,...``, ``packet`` = its index in the file); window detectors
    write ``first_frame,last_frame,p_attack,verdict[,label]`` (``first_packet,last_packet`` for
    Ethernet). ``label`` (0/1 ground truth) appears when the capture carries labels. Malformed
    pcap packets are always skipped and counted; CAN lines only with ``skip_malformed``.
    The summary also holds, per alert rule, the alerts raised (per CAN ID / protocol, or bus-wide
    for windows) and, against the labels, false alerts per hour and the delay to each attack.
    Captures without timestamps (CICIoV2024) get alert metrics only with ``frames_per_second``,
    the bus rate assumed to turn frame counts into time.
    """
    _check_traffic(det, capture)
    eth = det.traffic == "eth"
    rows, note = (_eth_rows(det, capture, labels, chunk_size) if eth else
                  _can_rows(det, capture, labels, format, chunk_size, skip_malformed, columns, bad_id))
    unit = "packet" if eth else "frame"
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
    labelled: bool | None = None  # every chunk so far carried labels (the first one decides the CSV columns)
    t0 = time.perf_counter()
    bar = tqdm(unit=f" {unit}s", unit_scale=True, disable=not progress, desc="detect", mininterval=0.5)
    try:
        with open(tmp, "w", encoding="ascii") as fh, torch.inference_mode():
            for r in rows:
                if labelled is None:
                    with_label = r.truth is not None
                    fh.write(_header(unit, w, with_label))
                labelled = (r.truth is not None) and labelled is not False
                truth = r.truth if r.truth is not None else np.full(len(r.x), -1, np.int64)
                x = r.x if identity else r.x[:, cols]
                if w is None:
                    p = predict_proba(net, torch.from_numpy(np.ascontiguousarray(x))).numpy()
                    v = p > det.threshold
                    fh.write(_sample_rows(r.index, r.ts, r.key, p, v, truth if with_label else None))
                    t, k, pos = r.ts, r.key, np.arange(n_rows, n_rows + len(r.x))
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
                fh.write(_header(unit, w, False))
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
    return DetectSummary(n_rows, n_samples, n_flagged, secs, n_rows / max(secs, 1e-9), str(out_csv), metrics,
                         unit=f"{unit}s", reader_note=note(), alerts=alerts)


def _alerts(v: np.ndarray, y: np.ndarray, kept: dict[str, list[np.ndarray]], rules: Sequence[AlertRule]
            ) -> dict[str, dict[str, Any]]:
    """Per alert rule: alerts, false alerts per hour, occurrences alerted and delays (needs timestamps)."""
    t = np.concatenate(kept["t"])
    if np.isnan(t).any():
        return {}  # no timestamps (e.g. CICIoV2024): no time base for alerts per hour
    keys = np.concatenate(kept["k"])
    _, stream = np.unique(keys, return_inverse=True)
    return {rule.name: alert_metrics(v, y, t, stream, rule) for rule in rules}


def _header(unit: str, window: int | None, labelled: bool) -> str:
    key = "proto" if unit == "packet" else "can_id"
    cols = [unit, "timestamp", key] if window is None else [f"first_{unit}", f"last_{unit}"]
    return ",".join(cols + ["p_attack", "verdict"] + (["label"] if labelled else [])) + "\n"


def _sample_rows(idx: np.ndarray, ts: np.ndarray, key: np.ndarray, p: np.ndarray, v: np.ndarray,
                 truth: np.ndarray | None) -> str:
    tss = ["" if t != t else f"{t:.6f}" for t in ts.tolist()]
    ps = [f"{x:.4f}" for x in p.tolist()]
    vs = v.astype(np.int8).tolist()
    if truth is None:
        rows = [f"{i},{t},{c},{q},{d}" for i, t, c, q, d in zip(idx.tolist(), tss, key.tolist(), ps, vs)]
    else:
        rows = [f"{i},{t},{c},{q},{d},{y}" for i, t, c, q, d, y in zip(idx.tolist(), tss, key.tolist(), ps, vs,
                                                                        truth.tolist())]
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
