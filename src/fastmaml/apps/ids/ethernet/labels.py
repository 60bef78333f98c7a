"""Per-packet labels of pcap captures: a side CSV keyed by packet index or by timestamp."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from fastmaml.errors import DataError


def read_labels(
    csv_path: str | os.PathLike,
    *,
    index: np.ndarray | None = None,
    ts: np.ndarray | None = None,
    ts_tolerance: float = 1e-6,
) -> tuple[np.ndarray, list[str]]:
    """Per-packet labels from a side CSV, as public automotive-Ethernet datasets ship them.

    The CSV has a header with an ``index`` column (0-based packet index) or a ``timestamp``
    column (with both, ``index`` is used when ``index`` is passed, else ``timestamp``), and an ``attack`` column (class name; ``benign`` or empty = benign) and/or a
    ``label`` column (0 = benign, other integers = attack; used when ``attack`` is absent,
    as ``attack_<label>``). Packets the CSV does not mention are benign.

    Args:
        csv_path: the label file.
        index: packet indices to label (``PacketChunk.index``); used with an ``index`` column.
        ts: packet timestamps; used with a ``timestamp`` column (matched within ``ts_tolerance``).

    Returns:
        ``(labels, class_names)``: int64 labels (one per requested packet) indexing
        ``class_names``, whose entry 0 is ``"benign"``.
    """
    table = LabelTable.load(csv_path, prefer_index=index is not None or ts is None)
    return table.lookup(index=index, ts=ts, ts_tolerance=ts_tolerance), table.class_names


class LabelTable:
    """A label CSV parsed once, for looking up chunk after chunk (streaming detection).

    See :func:`read_labels` for the format. With a timestamp-keyed CSV, packets with
    identical timestamps are matched in order of appearance within each lookup.
    """

    def __init__(self, path: Path, by_index: bool, keys: np.ndarray, codes: np.ndarray, class_names: list[str]) -> None:
        self.path, self.by_index, self.class_names = path, by_index, class_names
        order = np.argsort(keys, kind="stable")
        self._k, self._c = keys[order], codes[order]

    @staticmethod
    def load(csv_path: str | os.PathLike, prefer_index: bool = True) -> "LabelTable":
        """Parse the CSV (keyed by ``index`` when it has that column and ``prefer_index``, else ``timestamp``)."""
        p = Path(csv_path)
        if not p.is_file():
            raise DataError(f"{p}: label CSV not found; check the path")
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            # match by index when the caller gave indices (and the CSV has them), else by timestamp
            by_index = "index" in cols and (prefer_index or "timestamp" not in cols)
            if not by_index and "timestamp" not in cols:
                raise DataError(f"{p}: label CSV needs an 'index' or 'timestamp' column, has {cols}; add a header row")
            if "attack" not in cols and "label" not in cols:
                raise DataError(f"{p}: label CSV needs an 'attack' or 'label' column, has {cols}")
            keys: list[float] = []
            names: list[str] = []
            for line, rec in enumerate(reader, start=2):
                rec = {k.strip(): (v or "").strip() for k, v in rec.items() if k is not None}
                try:
                    key = float(rec["index"] if by_index else rec["timestamp"])
                    name = rec.get("attack", "")
                    if not name and rec.get("label", ""):
                        lab = int(rec["label"])
                        name = "benign" if lab == 0 else f"attack_{lab}"
                except (ValueError, KeyError) as e:
                    raise DataError(f"{p}: line {line}: bad label row {rec} ({e}); fix or delete that row") from None
                keys.append(key)
                names.append(name or "benign")
        class_names = ["benign"] + sorted({n for n in names if n != "benign"})
        code = np.array([class_names.index(n) for n in names], dtype=np.int64)
        k = np.asarray(keys, dtype=np.float64)
        return LabelTable(p, by_index, k, code, class_names)

    def lookup(self, *, index: np.ndarray | None = None, ts: np.ndarray | None = None,
               ts_tolerance: float = 1e-6) -> np.ndarray:
        """int64 labels (indexing ``class_names``) of the packets with these indices / timestamps."""
        p, ks, cs = self.path, self._k, self._c
        by_index = self.by_index
        if by_index:
            if index is None:
                raise DataError(f"{p}: label CSV is keyed by packet index; pass index=chunk.index")
            want = np.asarray(index, dtype=np.int64)
            ks = ks.astype(np.int64)
            pos = np.clip(np.searchsorted(ks, want), 0, max(len(ks) - 1, 0))
            hit = (ks[pos] == want) if len(ks) else np.zeros(len(want), dtype=bool)
        else:
            if ts is None:
                raise DataError(f"{p}: label CSV is keyed by timestamp; pass ts=chunk.ts")
            want_t = np.asarray(ts, dtype=np.float64)
            pos = np.clip(np.searchsorted(ks, want_t), 0, max(len(ks) - 1, 0))
            if len(ks):
                prev = np.maximum(pos - 1, 0)
                pos = np.where(np.abs(ks[prev] - want_t) < np.abs(ks[pos] - want_t), prev, pos)
                hit = np.abs(ks[pos] - want_t) <= ts_tolerance
                # Packets with identical timestamps (common at epoch scale, where float64 resolves
                # ~0.2 us) are matched to identical CSV timestamps in order of appearance.
                left = np.searchsorted(ks, want_t, "left")
                n_eq = np.searchsorted(ks, want_t, "right") - left
                o = np.argsort(want_t, kind="stable")
                wt = want_t[o]
                grp_start = np.r_[0, np.flatnonzero(wt[1:] != wt[:-1]) + 1]
                rank_s = np.arange(len(wt)) - np.repeat(grp_start, np.diff(np.r_[grp_start, len(wt)]))
                rank = np.empty(len(wt), dtype=np.int64)
                rank[o] = rank_s
                exact = rank < n_eq
                pos = np.where(exact, left + rank, pos)
                hit = hit | exact
            else:
                hit = np.zeros(len(want_t), dtype=bool)
        labels = np.where(hit, cs[pos] if len(cs) else 0, 0).astype(np.int64)
        return labels
