"""N-way K-shot episode sampling for few-shot classification.

Works on either a class-major tensor ``[C, n, *features]`` (same number of examples per
class, e.g. Omniglot ``[4800, 20, 28, 28]``) or a list of per-class tensors with varying
counts (e.g. intrusion-detection classes from a few hundred to a million rows).

Per episode: ``N`` distinct classes are drawn from the pool, each gets a random label in
``0..N-1`` (a random permutation), and ``K + Q`` distinct examples are drawn from each class
(the first ``K`` form the support set, the other ``Q`` the query set). All randomness comes
from one :class:`torch.Generator`, so a seed fixes every batch.

Cost per batch does not depend on class sizes: small ranges use a random permutation of the
range, large ranges draw random integers and drop repeats (the first ``m`` distinct values of
an i.i.d. uniform sequence are a uniform random ordered ``m``-subset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from fastmaml.errors import DataError
from fastmaml.core.batch import TaskBatch

# Ranges up to this size (or where m is a large fraction of the range) use rand+argsort.
_DENSE_LIMIT = 64


def sample_distinct(highs: torch.Tensor, m: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row ``r``, ``m`` distinct integers uniform in ``[0, highs[r])``, in random order.

    ``highs``: int64 ``[R]`` with every entry ``>= m``. Returns int64 ``[R, m]`` on the CPU.
    Cost is ``O(R * m)`` for large ranges (independent of ``highs``) and ``O(R * high)`` for
    small ones.
    """
    highs = highs.to(torch.long).cpu()
    r = highs.numel()
    out = torch.empty((r, m), dtype=torch.long)
    if r == 0 or m == 0:
        return out
    if bool((highs < m).any()):
        raise DataError(f"cannot draw {m} distinct values from a range of {int(highs.min())}")
    dense = (highs <= _DENSE_LIMIT) | (highs < 4 * m)
    if bool(dense.any()):
        rows = dense.nonzero().squeeze(1)
        h = highs[rows]
        width = int(h.max())
        keys = torch.rand((rows.numel(), width), generator=generator)
        # Positions beyond a row's range sort last.
        keys.masked_fill_(torch.arange(width) >= h[:, None], 2.0)
        out[rows] = keys.argsort(dim=1)[:, :m]
    sparse_rows = (~dense).nonzero().squeeze(1)
    while sparse_rows.numel():
        h = highs[sparse_rows]
        draws = 2 * m + 8  # with high >= 4m, m distinct values appear among 2m+8 draws almost always
        cand = torch.randint(0, 2**62, (sparse_rows.numel(), draws), generator=generator) % h[:, None]
        # Mark later repeats: sort stably by value, a repeat equals its predecessor.
        sorted_vals, order = torch.sort(cand, dim=1, stable=True)
        dup_sorted = torch.zeros_like(sorted_vals, dtype=torch.bool)
        dup_sorted[:, 1:] = sorted_vals[:, 1:] == sorted_vals[:, :-1]
        dup = torch.empty_like(dup_sorted).scatter_(1, order, dup_sorted)
        ok = (~dup).sum(dim=1) >= m
        # First m non-repeats in draw order: stable sort puts keepers (0) before repeats (1).
        pick = torch.sort(dup.to(torch.uint8), dim=1, stable=True).indices[:, :m]
        chosen = cand.gather(1, pick)
        done = sparse_rows[ok]
        out[done] = chosen[ok]
        sparse_rows = sparse_rows[~ok]
    return out


@dataclass
class EpisodeIndices:
    """Which data an episode batch uses.

    ``classes[t, j]``: pool class index that has label ``j`` in task ``t`` (``[T, N]``).
    ``examples[t, j, i]``: example index within that class; ``i < K`` support, else query (``[T, N, K+Q]``).
    """

    classes: torch.Tensor
    examples: torch.Tensor


def uint8_images_to_float(x: torch.Tensor, add_channel: bool = False) -> torch.Tensor:
    """uint8 images to float32 in ``[0, 1]``; ``add_channel`` inserts a channel dim before H, W.

    Use ``add_channel=True`` for grayscale ``[T, M, H, W]`` batches such as Omniglot.
    """
    y = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)
    return y.unsqueeze(-3) if add_channel else y


class EpisodeSampler:
    """Samples batches of N-way K-shot (Q-query) classification episodes.

    Args:
        data: ``[C, n, *features]`` tensor, or a sequence of ``[n_c, *features]`` tensors
            (one per class, counts may differ; features and dtype must match).
        n_way: classes per episode (``N``).
        k_shot: support examples per class (``K >= 1``).
        q_query: query examples per class (``Q >= 0``).
        classes: optional pool of class indices to draw from (default: all classes).
        transform: applied to ``support_x`` and ``query_x`` of every batch (after moving to
            ``device``), e.g. ``functools.partial(uint8_images_to_float, add_channel=True)``.
        device: where the batch tensors are put (default: where the data is).
        shuffle_examples: randomly order examples inside the support and query sets; by default
            they are grouped by label (``0,..,0,1,..,1,...``), which is equivalent for MAML.
    """

    def __init__(
        self,
        data: torch.Tensor | Sequence[torch.Tensor],
        n_way: int,
        k_shot: int,
        q_query: int,
        *,
        classes: Sequence[int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str | None = None,
        shuffle_examples: bool = False,
    ) -> None:
        if isinstance(data, torch.Tensor):
            if data.dim() < 2:
                raise DataError(
                    f"episode data tensor has shape {tuple(data.shape)}; expected [classes, examples, *features]"
                )
            self._dense = True
            # Contiguous once here, so gathering through a flat [C*n, ...] view never copies the set.
            self.data: torch.Tensor | list[torch.Tensor] = data.contiguous()
            self.counts = torch.full((data.shape[0],), data.shape[1], dtype=torch.long)
            self.feature_shape = tuple(data.shape[2:])
            self.dtype = data.dtype
            self.data_device = data.device
        else:
            items = list(data)
            if not items:
                raise DataError("episode data is an empty list of classes")
            for i, t in enumerate(items):
                if not isinstance(t, torch.Tensor) or t.dim() < 1:
                    raise DataError(f"class {i} of the episode data is not a tensor [examples, *features]")
                if t.shape[1:] != items[0].shape[1:] or t.dtype != items[0].dtype or t.device != items[0].device:
                    raise DataError(
                        f"class {i} has features {tuple(t.shape[1:])} {t.dtype} on {t.device} but class 0 has "
                        f"{tuple(items[0].shape[1:])} {items[0].dtype} on {items[0].device}; all classes must match"
                    )
            self._dense = False
            self.data = items
            self.counts = torch.tensor([t.shape[0] for t in items], dtype=torch.long)
            self.feature_shape = tuple(items[0].shape[1:])
            self.dtype = items[0].dtype
            self.data_device = items[0].device
        if n_way < 1 or k_shot < 1 or q_query < 0:
            raise DataError(f"need n_way >= 1, k_shot >= 1, q_query >= 0; got {n_way}, {k_shot}, {q_query}")
        self.n_way, self.k_shot, self.q_query = int(n_way), int(k_shot), int(q_query)
        self.transform = transform
        self.device = torch.device(device) if device is not None else self.data_device
        self.shuffle_examples = shuffle_examples
        self.pool = self._check_pool(classes)

    @property
    def num_classes(self) -> int:
        """Number of classes in the data (not only the pool)."""
        return int(self.counts.numel())

    def _check_pool(self, classes: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
        if classes is None:
            pool = torch.arange(self.num_classes)
        else:
            pool = torch.as_tensor(list(classes) if not isinstance(classes, torch.Tensor) else classes, dtype=torch.long).flatten().cpu()
            if pool.numel() and (int(pool.min()) < 0 or int(pool.max()) >= self.num_classes):
                raise DataError(f"class indices {pool.tolist()} out of range: the data has {self.num_classes} classes")
            if pool.unique().numel() != pool.numel():
                raise DataError(f"class indices {pool.tolist()} contain repeats")
        if pool.numel() < self.n_way:
            raise DataError(
                f"{self.n_way}-way episodes need {self.n_way} classes but only {pool.numel()} are available; "
                "lower n_way or add classes"
            )
        need = self.k_shot + self.q_query
        small = pool[self.counts[pool] < need]
        if small.numel():
            c = int(small[0])
            raise DataError(
                f"class {c} has {int(self.counts[c])} examples but {self.k_shot}-shot {self.q_query}-query episodes "
                f"need {need} per class ({small.numel()} class(es) too small); lower k_shot/q_query or drop the class"
            )
        return pool

    def sample_indices(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        classes: Sequence[int] | None = None,
    ) -> EpisodeIndices:
        """Draw class and example indices for ``batch_size`` episodes (see :class:`EpisodeIndices`)."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        pool = self.pool if classes is None else self._check_pool(classes)
        t, n, m = int(batch_size), self.n_way, self.k_shot + self.q_query
        # Slots are a uniform random ordered subset of the pool, so slot j -> label j is already
        # a uniformly random class-to-label assignment, also when the pool has exactly N classes.
        slots = sample_distinct(torch.full((t,), pool.numel(), dtype=torch.long), n, generator)
        cls = pool[slots]
        ex = sample_distinct(self.counts[cls].flatten(), m, generator).view(t, n, m)
        return EpisodeIndices(cls, ex)

    def _fetch(self, cls: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
        """Examples ``ex`` of classes ``cls`` (both ``[T, L]``) as ``[T, L, *features]``."""
        dd = self.data_device
        if self._dense:
            flat = self.data.flatten(0, 1)  # a view: [C * n, *features]
            rows = (cls * self.data.shape[1] + ex).flatten().to(dd)
            return flat.index_select(0, rows).view(*cls.shape, *self.feature_shape)
        t, length = cls.shape
        out = torch.empty((t * length, *self.feature_shape), dtype=self.dtype, device=dd)
        flat_cls, flat_ex = cls.flatten(), ex.flatten()
        # One indexing op per distinct class, not per example: cheap for a few big classes.
        for c in flat_cls.unique().tolist():
            rows = (flat_cls == c).nonzero().squeeze(1)
            # index_select/index_copy_ are ~10x faster than advanced indexing on big row tables.
            out.index_copy_(0, rows.to(dd), self.data[c].index_select(0, flat_ex[rows].to(dd)))
        return out.view(t, length, *self.feature_shape)

    def _part(
        self, idx: EpisodeIndices, lo: int, hi: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of example positions ``lo:hi`` of every class (support or query)."""
        t, n, _ = idx.examples.shape
        mm = hi - lo
        cls = idx.classes[:, :, None].expand(t, n, mm).reshape(t, n * mm)
        ex = idx.examples[:, :, lo:hi].reshape(t, n * mm)
        y = torch.arange(n).view(1, n, 1).expand(t, n, mm).reshape(t, n * mm)
        if self.shuffle_examples and mm:
            # Permute indices rather than data, so no extra copy of the batch is made.
            perm = torch.rand((t, n * mm), generator=generator).argsort(dim=1)
            cls, ex, y = cls.gather(1, perm), ex.gather(1, perm), y.gather(1, perm)
        return self._fetch(cls, ex).to(self.device), y.to(self.device)

    def gather(self, idx: EpisodeIndices, generator: torch.Generator | None = None) -> TaskBatch:
        """Build the :class:`TaskBatch` for given indices (``generator`` only for ``shuffle_examples``)."""
        k, m = self.k_shot, idx.examples.shape[2]
        sx, sy = self._part(idx, 0, k, generator)
        qx, qy = self._part(idx, k, m, generator)
        if self.transform is not None:
            sx, qx = self.transform(sx), self.transform(qx)
        return TaskBatch(sx, sy, qx, qy)

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        classes: Sequence[int] | None = None,
    ) -> TaskBatch:
        """A batch of ``batch_size`` episodes.

        ``classes`` overrides the pool for this call; with exactly ``n_way`` classes every
        episode uses those classes (labels still randomly permuted), e.g. benign vs one attack.
        Returns ``support_x [T, N*K, *f]``, ``support_y [T, N*K]`` int64,
        ``query_x [T, N*Q, *f]``, ``query_y [T, N*Q]``.
        """
        return self.gather(self.sample_indices(batch_size, generator, classes), generator)

