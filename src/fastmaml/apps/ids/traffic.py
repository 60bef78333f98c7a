"""What the IDS needs from one kind of in-vehicle traffic (CAN frames, Ethernet packets, ...).

A :class:`Traffic` names what one sample row is (``unit``), the feature columns a fitted
feature state gives, how a capture of it becomes labelled samples (few-shot adaptation) or
featurized chunks (streaming detection), its rule baselines, and the source kinds
(``source.kind``) whose data it carries. One implementation per kind lives beside its readers
(``can/traffic.py``, ``ethernet/traffic.py``), registered by name in
:mod:`fastmaml.apps.ids.registry`; the experiment, detectors, report and CLI read the registry
and never branch on the kind. Adding a traffic kind is one module with a ``Traffic`` (and its
sources) plus one registry line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Protocol, Sequence

import numpy as np

from fastmaml.apps.ids.config import FeatureConfig, SourceConfig
from fastmaml.apps.ids.families import IdsData
from fastmaml.apps.ids.results import CompareResult
from fastmaml.apps.ids.samples import SampleSet
from fastmaml.errors import DataError

Log = Callable[[str], None]
# source.kind -> IdsData: prepare(src, feat, log, workdir); workdir may hold temporary files.
Prepare = Callable[[SourceConfig, FeatureConfig, Log, "Path | None"], IdsData]


@dataclass(frozen=True)
class Source:
    """One ``source.kind``: the function preparing its data, and what it takes."""

    prepare: Prepare
    file_splits: bool = False  # a folder of capture files: takes source.split by_capture / within_interval / auto


class FeatureState(Protocol):
    """What a featurizer learns from benign traffic; JSON-able (saved in detector.json)."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ReadOptions:
    """How to read a capture file; a traffic kind's readers use the options they know."""

    format: str = "auto"
    chunk_size: int = 65536
    skip_malformed: bool = False
    columns: Sequence[str] | dict[str, Any] | None = None  # the column map of a labelled CSV export
    bad_id: str = "error"
    label_column: int = 1  # candump with inline label columns: which column after ID#DATA is the label


@dataclass
class Rows:
    """One chunk of a capture, featurized: what streaming detection needs from a traffic kind."""

    x: np.ndarray  # features [n, every column of the traffic's featurizer]
    truth: np.ndarray | None  # 0/1 per row; None when the capture carries no labels
    index: np.ndarray  # row number in the capture (frame or packet index)
    ts: np.ndarray  # timestamps (NaN where the capture has none)
    key: np.ndarray  # per-row stream (CAN ID, protocol name): the verdict CSV's key column, one alert stream each


@dataclass
class RowStream:
    """A capture read chunk by chunk; ``note()`` (after the rows) says what the reader skipped, '' if nothing."""

    rows: Iterator[Rows]
    note: Callable[[], str] = field(default=lambda: "")


class Traffic(ABC):
    """One traffic kind. Class attributes describe it; methods read and featurize its captures."""

    name: ClassVar[str]  # registry key, stored in detector.json and results.json ("can", "eth")
    description: ClassVar[str]  # in messages: "this detector was trained on <description>"
    unit: ClassVar[str]  # one sample row: "frame", "packet"
    key_column: ClassVar[str]  # the verdict CSV's per-row stream column ("can_id", "proto")
    key_name: ClassVar[str]  # what the alert streams are per ("CAN ID", "protocol")
    capture_name: ClassVar[str] = ""  # a file claims() recognizes, in messages ("a pcap (Ethernet) capture")
    train_hint: ClassVar[str] = ""  # how to get a detector for such a capture
    rules: ClassVar[Mapping[str, str]]  # rule baselines: name -> label in reports
    reference_rule: ClassVar[str]  # the rule drawn as the dotted reference line of the F1-vs-K figure
    sources: ClassVar[Mapping[str, Source]]  # the source kinds carrying this traffic
    # The SourceConfig settings blocks (source.<block>) only this kind's sources read: left out of the other
    # kinds' cache keys.
    source_blocks: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def feature_names(self, state: Any) -> list[str]:
        """Every column the featurizer computes with ``state`` (a detector reads a subset)."""

    @abstractmethod
    def load_state(self, d: dict[str, Any], where: str) -> FeatureState:
        """The feature state from its ``to_dict()`` form; DataError naming ``where`` when it is not one."""

    @abstractmethod
    def fit_state(self, capture: str | Path, labels: str | Path | None = None,
                  options: ReadOptions = ReadOptions()) -> FeatureState:
        """A feature state fitted on the benign rows of a capture (unlabelled rows count as benign)."""

    @abstractmethod
    def labelled_samples(self, state: Any, capture: str | Path, labels: str | Path | None, *, window: int | None,
                         stride: int | None, label_rule: str, max_per_class: int, seed: int,
                         options: ReadOptions = ReadOptions()) -> SampleSet:
        """A labelled capture as samples (benign first, then its attack classes), at most ``max_per_class`` each."""

    @abstractmethod
    def row_stream(self, state: Any, capture: str | Path, labels: str | Path | None,
                   options: ReadOptions = ReadOptions()) -> RowStream:
        """The capture featurized chunk by chunk (with 0/1 truth where it carries labels)."""

    def stream_rules(self, state: Any, clean: str | Path | None, options: ReadOptions = ReadOptions()
                     ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        """The rule baselines fitted on a clean capture, each a function of a chunk's feature rows (every
        column of :meth:`feature_names`) to bool flags: what ``ids judge`` streams beside the detectors.
        ``clean`` None: only the rules ``state`` alone defines (no clean frames read)."""
        return {}

    def deployed_rule(self, state: Any) -> str:
        """The rule baseline run beside a detector when none is named (``--union auto``, the default of ``ids
        adapt``, ``ids detect`` and ``ids judge``): '' where this kind has none for ``state``."""
        return ""

    def identity_columns(self) -> list[str]:
        """The feature columns that say *which* stream a sample belongs to and its raw content (CAN: the ID and
        the payload bytes), left out with ``features.identity: false``; empty where the kind defines none."""
        return []

    def sample_keys(self, feature_names: Sequence[str]) -> Callable[[np.ndarray], np.ndarray] | None:
        """A function from feature rows (those columns) to their stream keys, where the features carry them
        (CAN: the ID); None where they do not. Used to draw clean frames of the attacked streams."""
        return None

    def partners(self, state: Any) -> dict[int, set[int]]:
        """Stream key -> keys whose traffic it is checked against (CAN: an ID's signals' cross-ID partners).

        An attack on one key moves its partners' evidence too, so an alert there saw the attack.
        Default: none."""
        return {}

    def claims(self, path: str | Path) -> bool:
        """True when ``path`` is unmistakably this kind's capture (a magic number); default: cannot tell."""
        return False

    def capture_problem(self, path: str | Path) -> str | None:
        """Why a detector of this kind cannot read ``path`` (a message naming the fix), or None when it may
        (its readers then judge the file)."""
        return None

    def simulate(self, attack: str, duration_s: float, seed: int, out: Path, labels: Path) -> str:
        """Write a simulated capture with ``attack`` ('none': benign only) and its label file; a summary line."""
        raise DataError(f"there is no simulator of {self.description}")

    def data_section(self, report: CompareResult) -> list[str]:
        """The report's "Data" section (Markdown lines): sample counts per attack."""
        return ["## Data", ""] + count_table(report, {})


def count_table(report: CompareResult, columns: Mapping[str, Callable[[str], str]]) -> list[str]:
    """Markdown table of each attack's train/test benign/attack sample counts, then ``columns`` (header -> cell)."""
    counts = (report.data_stats or {}).get("counts", {})
    if not counts:
        return []
    heads = ["attack", "train benign", "train attack", "test benign", "test attack", *columns]
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    for a, c in counts.items():
        cells = [str(c["train"]["benign"]), str(c["train"][a]), str(c["test"]["benign"]), str(c["test"][a])]
        lines.append(f"| {a} | " + " | ".join(cells + [cell(a) for cell in columns.values()]) + " |")
    return lines + [""]
