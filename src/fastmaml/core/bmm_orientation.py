"""Batched matmuls computed the way round the CPU's kernel runs faster: an inductor graph pass.

Why: the second-order meta-gradient of a vmapped MLP holds batched matmuls whose output is much
taller than wide (the sinusoid MLP: ``[25, 40, 40] @ [25, 40, 10] -> [25, 40, 10]``, both operands
transposed views). On a CPU, ATen's ``bmm`` runs such a narrow output several times slower than the
same product transposed, ``(b^T a^T)^T``, whose output is wide: 80-180 us against 20-25 us for that
shape (AMD EPYC, AVX2, one thread, torch 2.13), and 22% of the compiled meta-iteration went there.
Which way is faster depends on the shape, the strides and the CPU's BLAS (a one-column product got
slower transposed), so the pass does not guess: for each such ``bmm`` of the graph it times both
orientations on tensors of the same shapes and strides, once per process, and rewrites the node only
where the transposed one is clearly faster (:data:`MIN_GAIN`). Same products, same sums: only the
order of the floating-point additions inside a dot product may differ.

Installed by :class:`~fastmaml.core.compiled.CompiledMetaStep` as inductor's
``post_grad_custom_post_pass`` while it compiles for a CPU. ``benchmarks/bench_maml.py`` has the
figures (second-order sinusoid MAML against JAX).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, NamedTuple

import torch

try:  # torch >= 2.5: a pass with a uuid keeps inductor's FX graph cache on
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
except ImportError:  # pragma: no cover - older torch: no pass (see available())
    CustomGraphPass, get_hash_for_files = object, None  # type: ignore[assignment,misc]
try:  # the pass runs while inductor's fake-tensor mode may be active; the timing needs real tensors
    from torch._subclasses.fake_tensor import unset_fake_temporarily
except ImportError:  # pragma: no cover
    unset_fake_temporarily = contextlib.nullcontext  # type: ignore[assignment]

#: the transposed product must be this much faster to be used (so that timing noise rarely flips a choice)
MIN_GAIN = 1.25
_REPEATS, _CALLS = 3, 20
_verdicts: dict[tuple, bool] = {}  # (shapes, strides, dtype, threads) -> computed transposed


class _Layout(NamedTuple):
    """A tensor's sizes, strides and dtype, all :func:`transposed_is_faster` needs to time one like it."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: torch.dtype

    def stride(self) -> tuple[int, ...]:
        return self.strides


def _hints(dims: Any) -> tuple[int, ...] | None:
    """Plain ints for sizes or strides, a symbolic one read at its hint (the size compiled for); None if one has none."""
    out = []
    for d in dims:
        if type(d) is not int:
            d = getattr(getattr(d, "node", None), "hint", None)
            if d is None:
                return None
        out.append(int(d))
    return tuple(out)


def available() -> bool:
    """Whether this torch can run the pass with inductor's graph cache (torch >= 2.5)."""
    return get_hash_for_files is not None


def _like(meta: torch.Tensor | _Layout) -> torch.Tensor:
    """A real CPU tensor of ``meta``'s shape, strides and dtype (an expanded view where a stride is 0)."""
    size = 1 + sum((n - 1) * s for n, s in zip(meta.shape, meta.stride()) if n > 0)
    return torch.randn(size, dtype=meta.dtype).as_strided(tuple(meta.shape), meta.stride())


def _seconds(fn: Any) -> float:
    fn()
    best = float("inf")
    for _ in range(_REPEATS):
        t0 = time.perf_counter()
        for _ in range(_CALLS):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best


def transposed_is_faster(a: torch.Tensor | _Layout, b: torch.Tensor | _Layout) -> bool:
    """Whether ``bmm(b^T, a^T)^T`` beats ``bmm(a, b)`` by :data:`MIN_GAIN` for tensors like ``a``, ``b`` (timed once
    per shapes, strides, dtype and thread count)."""
    key = (tuple(a.shape), a.stride(), tuple(b.shape), b.stride(), a.dtype, torch.get_num_threads())
    if key not in _verdicts:
        with unset_fake_temporarily(), torch.no_grad():
            x, y = _like(a), _like(b)
            plain = _seconds(lambda: torch.bmm(x, y))
            turned = _seconds(lambda: torch.bmm(y.mT, x.mT))
        _verdicts[key] = plain > MIN_GAIN * turned
    return _verdicts[key]


class BmmOrientationPass(CustomGraphPass):  # type: ignore[misc,valid-type]
    """Rewrites ``bmm(a, b)`` into ``bmm(b^T, a^T)^T`` where the output is taller than wide and timing says so."""

    def __init__(self) -> None:
        self.rewritten = 0  # nodes rewritten by the calls so far (tests, logs)

    def __call__(self, graph: torch.fx.Graph) -> None:
        aten = torch.ops.aten
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target is not aten.bmm.default:
                continue
            a, b = node.args[:2]
            if not isinstance(a, torch.fx.Node) or not isinstance(b, torch.fx.Node):
                continue
            va, vb = a.meta.get("val"), b.meta.get("val")
            if not isinstance(va, torch.Tensor) or not isinstance(vb, torch.Tensor):
                continue
            if va.device.type != "cpu" or not va.dtype.is_floating_point:
                continue
            # Symbolic sizes (dynamic_shots: one graph for every K) are judged at the sizes being compiled for.
            a_size, a_stride, b_size, b_stride = (_hints(x) for x in (va.shape, va.stride(), vb.shape, vb.stride()))
            if None in (a_size, a_stride, b_size, b_stride) or a_size[1] <= b_size[2]:
                continue  # only narrow outputs (rows > columns), at known sizes
            if not transposed_is_faster(_Layout(a_size, a_stride, va.dtype), _Layout(b_size, b_stride, vb.dtype)):
                continue
            with graph.inserting_before(node):
                bt = graph.call_function(aten.permute.default, (b, [0, 2, 1]))
                at = graph.call_function(aten.permute.default, (a, [0, 2, 1]))
                wide = graph.call_function(aten.bmm.default, (bt, at))
                out = graph.call_function(aten.permute.default, (wide, [0, 2, 1]))
            bt.meta["val"], at.meta["val"] = vb.permute(0, 2, 1), va.permute(0, 2, 1)
            wide.meta["val"] = torch.bmm(bt.meta["val"], at.meta["val"])
            out.meta["val"] = wide.meta["val"].permute(0, 2, 1)
            node.replace_all_uses_with(out)
            graph.erase_node(node)
            self.rewritten += 1

    def uuid(self) -> Any:
        # The code decides what the pass does; which nodes it rewrites also depends on timings, which change speed,
        # not results, so a graph cached on another machine is still a correct graph.
        return get_hash_for_files((__file__,)) if get_hash_for_files is not None else None


__all__ = ["BmmOrientationPass", "MIN_GAIN", "available", "transposed_is_faster"]
