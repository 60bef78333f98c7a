"""CAN frames: a per-frame record for convenience and a columnar batch for speed.

Readers stream multi-GB captures, and detection must run at >=100k frames/s on one core,
so the hot path works on ``FrameBatch`` (numpy columns); ``CanFrame`` exists for tests,
small hand-built inputs and debugging.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from fastmaml.apps.ids.samples import BENIGN
from fastmaml.errors import DataError

CLASSIC_MAX = 8
FD_MAX = 64
# CAN FD DLC codes 9..15 mean 12..64 data bytes.
FD_DLC_TO_LEN = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)


def len_to_dlc(n: int) -> int:
    """Smallest DLC code whose length holds ``n`` bytes (CAN FD rounding)."""
    for code, length in enumerate(FD_DLC_TO_LEN):
        if length >= n:
            return code
    raise DataError(f"CAN FD payload of {n} bytes exceeds 64")


@dataclass(frozen=True)
class CanFrame:
    """One CAN (FD) frame. ``label`` is None when unknown, else e.g. "benign" or "dos"."""

    timestamp: float | None
    can_id: int
    is_extended: bool = False
    is_remote: bool = False
    is_fd: bool = False
    dlc: int = 8
    data: bytes = b""
    label: str | None = None


@dataclass
class FrameBatch:
    """Column-wise frames. All arrays have length N.

    Attributes:
        timestamp: float64 seconds; NaN where the capture has no timestamps.
        can_id: uint32 arbitration ID.
        is_extended, is_remote, is_fd: bool flags.
        dlc: uint8 DLC field (for CAN FD a code 0..15; the byte count is ``length``).
        length: uint8 number of data bytes present.
        data: uint8 [N, 8] (or [N, 64] when any FD frame has >8 bytes), zero padded.
        label: int16 index into ``label_names``; -1 = unknown.
        label_names: the label vocabulary.
    """

    timestamp: np.ndarray
    can_id: np.ndarray
    is_extended: np.ndarray
    is_remote: np.ndarray
    is_fd: np.ndarray
    dlc: np.ndarray
    length: np.ndarray
    data: np.ndarray
    label: np.ndarray
    label_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.can_id)
        for name in ("timestamp", "is_extended", "is_remote", "is_fd", "dlc", "length", "label"):
            if len(getattr(self, name)) != n:
                raise DataError(f"FrameBatch: column {name} has {len(getattr(self, name))} rows, can_id has {n}")
        if self.data.ndim != 2 or self.data.shape[0] != n:
            raise DataError(f"FrameBatch: data must be [N, 8|64], got {self.data.shape} for N={n}")

    # ---------------------------------------------------------------- builders
    @staticmethod
    def empty(width: int = CLASSIC_MAX) -> FrameBatch:
        """A batch of zero frames."""
        return FrameBatch(
            np.zeros(0, np.float64), np.zeros(0, np.uint32), np.zeros(0, bool), np.zeros(0, bool),
            np.zeros(0, bool), np.zeros(0, np.uint8), np.zeros(0, np.uint8), np.zeros((0, width), np.uint8),
            np.zeros(0, np.int16), [],
        )

    @staticmethod
    def from_frames(frames: Iterable[CanFrame]) -> FrameBatch:
        """Columnar batch from records (slow path; for small inputs)."""
        frames = list(frames)
        n = len(frames)
        width = FD_MAX if any(len(f.data) > CLASSIC_MAX for f in frames) else CLASSIC_MAX
        data = np.zeros((n, width), np.uint8)
        names: list[str] = []
        label = np.full(n, -1, np.int16)
        for i, f in enumerate(frames):
            if len(f.data) > width:
                raise DataError(f"frame {i}: {len(f.data)} data bytes exceed 64")
            data[i, : len(f.data)] = np.frombuffer(f.data, np.uint8)
            if f.label is not None:
                if f.label not in names:
                    names.append(f.label)
                label[i] = names.index(f.label)
        return FrameBatch(
            np.array([np.nan if f.timestamp is None else f.timestamp for f in frames], np.float64),
            np.array([f.can_id for f in frames], np.uint32),
            np.array([f.is_extended for f in frames], bool),
            np.array([f.is_remote for f in frames], bool),
            np.array([f.is_fd for f in frames], bool),
            np.array([f.dlc for f in frames], np.uint8),
            np.array([len(f.data) for f in frames], np.uint8),
            data, label, names,
        )

    @staticmethod
    def concat(batches: Sequence[FrameBatch]) -> FrameBatch:
        """All batches in order; label vocabularies are merged."""
        batches = [b for b in batches]
        if not batches:
            return FrameBatch.empty()
        names: list[str] = []
        for b in batches:
            names += [x for x in b.label_names if x not in names]
        width = max(b.data.shape[1] for b in batches)
        labels = []
        datas = []
        for b in batches:
            remap = np.array([names.index(x) for x in b.label_names] + [-1], np.int16)
            labels.append(remap[b.label.astype(np.int64)])  # -1 indexes the trailing -1
            d = b.data
            if d.shape[1] < width:
                d = np.pad(d, ((0, 0), (0, width - d.shape[1])))
            datas.append(d)
        cat = np.concatenate
        return FrameBatch(
            cat([b.timestamp for b in batches]), cat([b.can_id for b in batches]),
            cat([b.is_extended for b in batches]), cat([b.is_remote for b in batches]),
            cat([b.is_fd for b in batches]), cat([b.dlc for b in batches]),
            cat([b.length for b in batches]), cat(datas), cat(labels).astype(np.int16), names,
        )

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return int(len(self.can_id))

    @property
    def has_timestamps(self) -> bool:
        """True when every frame has a timestamp."""
        return len(self) > 0 and not bool(np.isnan(self.timestamp).any())

    def select(self, index: np.ndarray | slice) -> FrameBatch:
        """Frames at ``index`` (int array, bool mask or slice), same vocabulary."""
        return FrameBatch(
            self.timestamp[index], self.can_id[index], self.is_extended[index], self.is_remote[index],
            self.is_fd[index], self.dlc[index], self.length[index], self.data[index], self.label[index],
            list(self.label_names),
        )

    def labels(self) -> list[str | None]:
        """Label strings (None where unknown)."""
        names = list(self.label_names) + [None]
        return [names[i] for i in self.label.astype(np.int64)]

    def label_codes(self, names: Sequence[str]) -> np.ndarray:
        """Labels as int64 indices into ``names`` (-1 for unknown or absent names)."""
        remap = np.array([names.index(x) if x in names else -1 for x in self.label_names] + [-1], np.int64)
        return remap[self.label.astype(np.int64)]

    def is_attack(self) -> np.ndarray:
        """Bool [N]: label known and not benign."""
        ben = self.label_names.index(BENIGN) if BENIGN in self.label_names else -2
        return (self.label >= 0) & (self.label != ben)

    def frame(self, i: int) -> CanFrame:
        """Frame ``i`` as a record."""
        lab = int(self.label[i])
        ts = float(self.timestamp[i])
        return CanFrame(
            None if np.isnan(ts) else ts, int(self.can_id[i]), bool(self.is_extended[i]), bool(self.is_remote[i]),
            bool(self.is_fd[i]), int(self.dlc[i]), bytes(self.data[i, : int(self.length[i])]),
            None if lab < 0 else self.label_names[lab],
        )

    def __iter__(self) -> Iterator[CanFrame]:
        for i in range(len(self)):
            yield self.frame(i)

    def sort_by_time(self) -> FrameBatch:
        """Frames in timestamp order (stable, so equal stamps keep their order)."""
        return self.select(np.argsort(self.timestamp, kind="stable"))


@dataclass
class ReadStats:
    """What a reader did: frames yielded, lines skipped as malformed, and why (first few)."""

    source: str = ""
    frames_read: int = 0
    lines_skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    max_reasons: int = 20

    def skip(self, reason: str) -> None:
        """Count a skipped line, remembering the first ``max_reasons`` reasons."""
        self.lines_skipped += 1
        if len(self.skip_reasons) < self.max_reasons:
            self.skip_reasons.append(reason)
