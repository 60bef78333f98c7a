"""A new traffic kind is one file plus one registry line: a toy kind, defined here, runs compare, train, adapt, detect.

Toy traffic: sensor readings (time, sensor, value) in a small text format with a magic first
line; attacks shift some readings' values. Its feature state is each sensor's benign mean and
spread; features are the reading's z-score, |z| and the sensor number; one range rule.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from fastmaml.apps.ids import experiment as E
from fastmaml.apps.ids.detect import adapt_detector, load_detector, stream_detect
from fastmaml.apps.ids.families import IdsData, TaskFamily, cap
from fastmaml.apps.ids.registry import TRAFFIC
from fastmaml.apps.ids.samples import BENIGN, SampleSet
from fastmaml.apps.ids.traffic import ReadOptions, Rows, RowStream, Source, Traffic
from fastmaml.cli import main
from fastmaml.errors import DataError

MAGIC = "#toy-readings"
SHIFT = {"spike": 6.0, "drift": 3.0}  # attack -> how far (in benign spreads) it moves a reading
FEATURES = ["z", "abs_z", "sensor"]


def readings(attack: str, n: int, seed: int) -> tuple[np.ndarray, ...]:
    """time, sensor, value, label (0/1) of ``n`` readings; a fifth of them attacked unless ``attack`` is 'none'."""
    g = np.random.default_rng(seed)
    sensor = g.integers(0, 4, n)
    value = 10.0 * sensor + g.normal(0.0, 1.0, n)
    hit = (g.random(n) < 0.2) & (attack != "none")
    value[hit] += SHIFT.get(attack, 0.0)
    return np.arange(n) * 0.01, sensor, value, hit.astype(np.int64)


@dataclass
class ToyState:
    mean: list[float]
    std: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"format": "toy", "mean": self.mean, "std": self.std}

    @staticmethod
    def fit(sensor: np.ndarray, value: np.ndarray) -> ToyState:
        return ToyState([float(value[sensor == s].mean()) for s in range(4)],
                        [float(value[sensor == s].std()) for s in range(4)])

    def features(self, sensor: np.ndarray, value: np.ndarray) -> np.ndarray:
        z = (value - np.array(self.mean)[sensor]) / np.array(self.std)[sensor] / 8.0
        return np.stack([z, np.abs(z), sensor / 4.0], 1).astype(np.float32)


def write(path: Path, labels: Path, t: np.ndarray, sensor: np.ndarray, value: np.ndarray, y: np.ndarray,
          attack: str) -> None:
    path.write_text(MAGIC + "\n" + "".join(f"{a:.3f},{s},{v:.4f}\n" for a, s, v in zip(t, sensor, value)))
    labels.write_text("index,attack\n" + "".join(f"{i},{attack if k else BENIGN}\n" for i, k in enumerate(y)))


def read(path: str | Path, labels: str | Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    rows = np.loadtxt(path, delimiter=",", comments="#", ndmin=2)
    names = [r["attack"] for r in csv.DictReader(open(labels))] if labels is not None else None
    return rows[:, 0], rows[:, 1].astype(np.int64), rows[:, 2], names


def prepare(src: Any, feat: Any, log: Any, workdir: Any) -> IdsData:
    """Source ``toy_sim``: features fitted on a benign run; each attack a train run and a test run (two seeds)."""
    _, sensor, value, _ = readings("none", src.synthetic.samples, src.sim.fit_seed)
    state = ToyState.fit(sensor, value)
    families = {}
    for a in src.attacks or list(SHIFT):
        parts = []
        for seed in (src.sim.train_seed, src.sim.test_seed):
            _, sensor, value, y = readings(a, src.synthetic.samples, seed)
            s = SampleSet(torch.from_numpy(state.features(sensor, value)), torch.from_numpy(y), [BENIGN, a],
                          FEATURES, f"toy {a}")
            s = cap(s, feat.max_benign, feat.max_attack, feat.seed)
            parts.append((s, {"range": s.features[:, 1] > 3.0 / 8.0}))
        families[a] = TaskFamily(a, parts[0][0], parts[1][0], parts[0][1], parts[1][1])
    counts = {a: {"train": f.train.counts(), "test": f.test.counts()} for a, f in families.items()}
    return IdsData(families, FEATURES, None, state.to_dict(), "toy sensors", {"counts": counts})


class ToyTraffic(Traffic):
    name = "toy"
    description = "toy sensor readings"
    unit = "reading"
    key_column = "sensor"
    key_name = "sensor"
    capture_name = "a toy readings file"
    train_hint = "train a toy detector (source.kind=toy_sim)"
    rules = {"range": "range rule"}
    reference_rule = "range"
    sources = {"toy_sim": Source(prepare)}

    def feature_names(self, state: ToyState) -> list[str]:
        return list(FEATURES)

    def load_state(self, d: dict[str, Any], where: str) -> ToyState:
        if d.get("format") != "toy":
            raise DataError(f"{where}: not a toy feature state")
        return ToyState(d["mean"], d["std"])

    def fit_state(self, capture, labels=None, options=ReadOptions()) -> ToyState:
        _, sensor, value, names = read(capture, labels)
        benign = np.array([n == BENIGN for n in names]) if names else np.ones(len(sensor), bool)
        return ToyState.fit(sensor[benign], value[benign])

    def labelled_samples(self, state, capture, labels, *, window, stride, label_rule, max_per_class, seed,
                         options=ReadOptions()) -> SampleSet:
        if window is not None or labels is None:
            raise DataError("toy detectors judge single labelled readings")
        _, sensor, value, names = read(capture, labels)
        classes = [BENIGN] + sorted(set(names) - {BENIGN})
        y = torch.tensor([classes.index(n) for n in names])
        return SampleSet(torch.from_numpy(state.features(sensor, value)), y, classes, FEATURES, str(capture))

    def row_stream(self, state, capture, labels, options=ReadOptions()) -> RowStream:
        t, sensor, value, names = read(capture, labels)

        def rows() -> Iterator[Rows]:
            for i in range(0, len(t), options.chunk_size):
                sl = slice(i, i + options.chunk_size)
                truth = np.array([n != BENIGN for n in names[sl]], np.int64) if names else None
                yield Rows(state.features(sensor[sl], value[sl]), truth, np.arange(len(t))[sl], t[sl], sensor[sl])

        return RowStream(rows())

    def claims(self, path) -> bool:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC.encode()

    def capture_problem(self, path) -> str | None:
        return None if self.claims(path) else f"{path} is not a toy readings file"

    def simulate(self, attack: str, duration_s: float, seed: int, out: Path, labels: Path) -> str:
        rows = readings(attack, int(duration_s * 100), seed)
        write(out, labels, *rows, attack)
        return f"wrote {len(rows[0])} readings to {out}"


TOY = ToyTraffic()

TINY = ["source.kind=toy_sim", "source.synthetic.samples=300", "train.iterations=30", "eval.episodes=5",
        "eval.tuning_episodes=4", "methods=[scratch, maml]"]


def test_a_toy_traffic_kind_runs_compare_train_adapt_detect(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(TRAFFIC, TOY.name, TOY)  # the one registry line
    cfg = E.load_ids_config("tiny", TINY)
    report = E.compare(cfg, tmp_path / "compare")
    assert report.traffic == "toy" and [f.fold for f in report.folds] == ["spike", "drift"]
    md = (tmp_path / "compare" / "report.md").read_text()
    assert "reading-level features (3 features per reading" in md and "range rule" in md
    detector = E.meta_train_detector(cfg, ["spike"], tmp_path / "train")
    # The CLI's simulator choices come from the registry.
    assert main(["ids", "simulate", "--network", "toy", "--attack", "drift", "--duration", "20", "--seed", "7",
                 "--out", str(tmp_path / "drift.toy")]) == 0
    cap, labels = tmp_path / "drift.toy", tmp_path / "drift_labels.csv"
    det, info = adapt_detector(load_detector(detector), cap, 5, labels=labels)
    assert det.traffic == "toy" and info.attack == "drift" and info.holdout_metrics is not None
    s = stream_detect(det, cap, tmp_path / "v.csv", labels=labels, chunk_size=500, progress=False)
    assert s.unit == "readings" and s.key_name == "sensor" and s.frames == 2000 and s.metrics is not None
    assert (tmp_path / "v.csv").read_text().splitlines()[0] == "reading,timestamp,sensor,p_attack,log_odds,verdict,label"
    # A capture of another kind is refused by whichever kind claims it.
    can_log = tmp_path / "c.log"
    can_log.write_text("(1.000000) can0 123#0011\n")
    capsys.readouterr()
    assert main(["ids", "detect", "--detector", str(detector), "--capture", str(can_log), "--out",
                 str(tmp_path / "x.csv")]) == 2
    assert "c.log is not a toy readings file" in capsys.readouterr().err
