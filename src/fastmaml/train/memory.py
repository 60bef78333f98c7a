"""Keep freed memory in the process heap instead of returning it to the OS (glibc only).

PyTorch's CPU allocator has no cache: it asks malloc for every tensor and frees it again.
glibc serves large requests (above its mmap threshold, at most 32 MB by default) with a
fresh ``mmap`` and unmaps them on free, so each big activation of every iteration is
page-faulted in and zeroed by the kernel anew. Meta-training allocates the same sizes
every iteration, so serving them from the heap and never trimming it removes that cost
(MAML on the paper's Omniglot conv net, 32 tasks, 2 CPU cores: about 7 -> 9 meta-iterations/s,
``benchmarks/bench_maml.py``). The price: the process keeps its peak heap size until it exits.
This is what LD_PRELOAD-ing jemalloc or tcmalloc achieves, without installing either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1  # mallopt takes a C int

_applied = False


def keep_freed_memory() -> bool:
    """Serve all allocations from the heap and never trim it. Returns whether it took effect.

    A no-op (returning False) off Linux/glibc. Larger requests than the heap can hold still
    fall back to mmap, so nothing fails that would otherwise succeed.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, _LARGEST),  # big tensors from the heap, not from fresh mmaps
        (_M_TRIM_THRESHOLD, _LARGEST),  # never hand the heap's top back to the OS
        (_M_TOP_PAD, 64 * 2**20),  # grow the heap in 64 MB steps (address space only until touched)
    ))
    return _applied


def peak_tensor_bytes(fn) -> int:
    """Peak bytes of CPU tensor memory live during ``fn()`` beyond what was live before.

    From the CPU allocator's own records of every allocation and free (the profiler's memory
    events, in order): deterministic for a given program, unlike the process's RSS, and it sees
    every tensor (saved-tensor hooks would not: torch.func transforms disable them). Used by the
    memory tests and ``benchmarks/bench_memory.py``.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if hasattr(node.extra_fields, "alloc_size"):
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(events, key=lambda e: e[0]):
        live += size
        peak = max(peak, live)
    return peak
