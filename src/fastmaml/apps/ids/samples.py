"""A labelled set of IDS samples, shared by the CAN and automotive-Ethernet pipelines.

The experiment builds few-shot episodes from ``SampleSet`` objects, so the format is
deliberately small: a float32 feature tensor, int64 labels indexing ``class_names``
(index 0 is always ``"benign"``) and the names of the last feature axis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fastmaml.errors import DataError

BENIGN = "benign"


@dataclass
class SampleSet:
    """Features and labels of N samples.

    Attributes:
        features: float32 ``[N, F]`` (frame level) or ``[N, W, F]`` (window level).
        labels: int64 ``[N]``, each an index into ``class_names``.
        class_names: class names; ``class_names[0] == "benign"``.
        feature_names: names of the last feature axis (length F).
        source: free text saying where the samples came from (for error messages).
    """

    features: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    feature_names: list[str]
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise DataError when shapes, dtypes or names are inconsistent."""
        where = f" ({self.source})" if self.source else ""
        if not isinstance(self.features, torch.Tensor) or not isinstance(self.labels, torch.Tensor):
            raise DataError(f"SampleSet{where}: features and labels must be torch.Tensors; convert with torch.as_tensor")
        if self.features.dtype != torch.float32:
            raise DataError(
                f"SampleSet{where}: features must be float32, got {self.features.dtype}; use features.float()"
            )
        if self.labels.dtype != torch.int64:
            raise DataError(f"SampleSet{where}: labels must be int64, got {self.labels.dtype}; use labels.long()")
        if self.features.dim() not in (2, 3):
            raise DataError(
                f"SampleSet{where}: features must be [N, F] or [N, W, F], got shape {tuple(self.features.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.shape[0] != self.features.shape[0]:
            raise DataError(
                f"SampleSet{where}: labels shape {tuple(self.labels.shape)} does not match "
                f"features shape {tuple(self.features.shape)}; need labels [N] with N = features.shape[0]"
            )
        if not self.class_names or self.class_names[0] != BENIGN:
            raise DataError(
                f"SampleSet{where}: class_names[0] must be {BENIGN!r}, got {self.class_names!r}; "
                "put benign first even if no benign samples are present"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"SampleSet{where}: duplicate class names in {self.class_names!r}")
        if len(self.feature_names) != self.features.shape[-1]:
            raise DataError(
                f"SampleSet{where}: {len(self.feature_names)} feature_names for {self.features.shape[-1]} "
                "features; give one name per entry of the last feature axis"
            )
        if self.labels.numel():
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= len(self.class_names):
                raise DataError(
                    f"SampleSet{where}: labels range [{lo}, {hi}] outside [0, {len(self.class_names) - 1}] "
                    f"of class_names {self.class_names!r}"
                )
        if self.features.numel() and not bool(torch.isfinite(self.features).all()):
            raise DataError(f"SampleSet{where}: features contain NaN or infinite values; fix the feature extraction")

    # ----------------------------------------------------------------- helpers
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def is_windowed(self) -> bool:
        """True for window-level features ``[N, W, F]``."""
        return self.features.dim() == 3

    def counts(self) -> dict[str, int]:
        """Number of samples per class name (classes with zero samples included)."""
        bc = torch.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(bc[i]) for i, name in enumerate(self.class_names)}

    def by_class(self) -> dict[str, torch.Tensor]:
        """Features grouped by class name; only classes with at least one sample appear."""
        out: dict[str, torch.Tensor] = {}
        for i, name in enumerate(self.class_names):
            mask = self.labels == i
            if bool(mask.any()):
                out[name] = self.features[mask]
        return out

    def subset(self, classes: Sequence[str], relabel: bool = True) -> SampleSet:
        """Samples of the named classes only.

        With ``relabel`` the result's class_names are ``["benign", *other requested classes]``
        in the given order (benign is kept at index 0 even if not requested, with no samples).
        Without it the original class_names and label indices are kept.
        """
        unknown = [c for c in classes if c not in self.class_names]
        if unknown:
            raise DataError(f"SampleSet.subset: unknown classes {unknown!r}; available: {self.class_names!r}")
        idx = [self.class_names.index(c) for c in classes]
        mask = torch.zeros_like(self.labels, dtype=torch.bool)
        for i in idx:
            mask |= self.labels == i
        feats, labels = self.features[mask], self.labels[mask]
        if not relabel:
            return SampleSet(feats, labels, list(self.class_names), list(self.feature_names), self.source)
        new_names = [BENIGN] + [c for c in classes if c != BENIGN]
        remap = torch.full((len(self.class_names),), -1, dtype=torch.int64)
        for new_i, name in enumerate(new_names):
            remap[self.class_names.index(name)] = new_i
        return SampleSet(feats, remap[labels], new_names, list(self.feature_names), self.source)

    def concat(self, other: SampleSet) -> SampleSet:
        """Both sets together; class lists are merged (self's order first, then new names of other)."""
        if other.features.shape[1:] != self.features.shape[1:]:
            raise DataError(
                f"SampleSet.concat: feature shapes differ {tuple(self.features.shape[1:])} vs "
                f"{tuple(other.features.shape[1:])}; build both with the same feature extractor and window"
            )
        if list(other.feature_names) != list(self.feature_names):
            raise DataError("SampleSet.concat: feature_names differ; build both with the same feature extractor")
        names = list(self.class_names) + [c for c in other.class_names if c not in self.class_names]
        remap = torch.tensor([names.index(c) for c in other.class_names], dtype=torch.int64)
        labels = torch.cat([self.labels, remap[other.labels]])
        feats = torch.cat([self.features, other.features])
        src = " + ".join(s for s in (self.source, other.source) if s)
        return SampleSet(feats, labels, names, list(self.feature_names), src)

    def select(self, index: torch.Tensor) -> SampleSet:
        """Samples at the given indices (or boolean mask), same class list."""
        return SampleSet(
            self.features[index], self.labels[index], list(self.class_names), list(self.feature_names), self.source
        )

    @staticmethod
    def concat_all(sets: Iterable[SampleSet]) -> SampleSet:
        """Concatenate several sets (at least one)."""
        sets = list(sets)
        if not sets:
            raise DataError("SampleSet.concat_all: no sets given")
        out = sets[0]
        for s in sets[1:]:
            out = out.concat(s)
        return out


# Windows of consecutive samples (frames or packets): shared by the CAN and Ethernet pipelines.
def unlabelled_rows(rows: np.ndarray, feature_names: Sequence[str]) -> SampleSet:
    """Feature rows of a stream (labels unknown: every row called benign) as a SampleSet, the input rules'
    ``predict_samples`` take."""
    x = torch.from_numpy(np.ascontiguousarray(rows, np.float32))
    return SampleSet(x, torch.zeros(len(x), dtype=torch.long), [BENIGN], list(feature_names))


def window_labels(labels: np.ndarray, window: int, stride: int, benign: int = 0, rule: str = "any") -> np.ndarray:
    """Label per window of ``labels`` (int codes, ``benign`` = benign code), see the module doc."""
    n = (len(labels) - window) // stride + 1 if len(labels) >= window else 0
    if n <= 0:
        return np.zeros(0, np.int64)
    idx = np.arange(n)[:, None] * stride + np.arange(window)[None, :]
    w = labels[idx]
    att = w != benign
    n_att = att.sum(1)
    out = np.full(n, benign, np.int64)
    need = n_att > (window // 2) if rule == "majority" else n_att > 0
    if rule not in ("any", "majority"):
        raise DataError(f"label_rule must be 'any' or 'majority', got {rule!r}")
    for r in np.flatnonzero(need).tolist():  # only attack windows pay for the vote
        vals, cnt = np.unique(w[r][att[r]], return_counts=True)
        out[r] = vals[np.argmax(cnt)]
    return out


def key_balanced_rows(keys: np.ndarray, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` random row indices with every stream key (CAN ID) of ``keys`` drawn equally often (an ID with fewer
    rows than its share gives each of them about as often; no row is left out where ``n`` covers them all).

    Why: alerts are raised per ID, so a false alert on a 10 Hz ID costs as much as one on a 100 Hz ID; drawn
    uniformly by frame, a slow ID is a percent of the benign side, and adapting on K attack frames of that ID
    can then raise all of its clean frames' scores at almost no cost in the loss (``ids adapt --benign-per-id``,
    ``eval.evidence_benign_per_id``).
    """
    uniq, inverse = np.unique(keys, return_inverse=True)
    if n <= 0 or not len(uniq):
        return torch.zeros(0, dtype=torch.long)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(uniq)))])
    share = np.full(len(uniq), n // len(uniq))
    share[torch.randperm(len(uniq), generator=g)[: n % len(uniq)].numpy()] += 1
    picks = []
    for k in range(len(uniq)):
        rows = torch.from_numpy(order[starts[k]: starts[k + 1]])
        # Whole rounds of a shuffled key, then a shuffled part: every row about equally often.
        reps = -(-int(share[k]) // len(rows))
        perm = torch.cat([torch.randperm(len(rows), generator=g) for _ in range(reps)]) if reps else rows[:0]
        picks.append(rows[perm[: int(share[k])]])
    out = torch.cat(picks)
    return out[torch.randperm(len(out), generator=g)]


def make_windows(feats: np.ndarray, window: int, stride: int) -> np.ndarray:
    """[n_windows, window, F] view-copy of consecutive frame features."""
    n = (len(feats) - window) // stride + 1 if len(feats) >= window else 0
    if n <= 0:
        return np.zeros((0, window, feats.shape[1]), np.float32)
    idx = np.arange(n)[:, None] * stride + np.arange(window)[None, :]
    return feats[idx]


def same_key_rows(keys: np.ndarray, shot_keys: np.ndarray, n: int, g: torch.Generator) -> torch.Tensor:
    """Up to ``n`` random row indices whose stream key (CAN ID) is one of ``shot_keys`` (as many as there are, if
    fewer; none drawn, and no random number used, when that is 0).

    Why: adapted on K attack frames of one or two IDs beside benign frames drawn uniformly (few of them of those
    IDs), a detector can call a frame an attack for being of that ID; benign frames of the same IDs make it learn
    what is false about them instead (``ids adapt --same-id``, ``eval.evidence_same_id``).
    """
    own = torch.from_numpy(np.flatnonzero(np.isin(keys, shot_keys)))
    n = min(n, len(own))
    return own[torch.randperm(len(own), generator=g)[:n]] if n else own[:0]
