"""keep_freed_memory: after it, re-allocating a big tensor no longer page-faults it in again."""

import subprocess
import sys

import pytest

SCRIPT = r"""
import resource, sys, torch
from fastmaml.train.memory import keep_freed_memory

def faults_per_cycle():
    def cycle():
        t = torch.empty(48 * 2**20 // 4)  # 48 MB: above glibc's largest default mmap threshold
        t.fill_(1.0)
        del t
    for _ in range(10):  # steady state, as after a training run's first iterations
        cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        cycle()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

default = faults_per_cycle()
applied = keep_freed_memory()
kept = faults_per_cycle()
print(applied, default, kept)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_keep_freed_memory_stops_page_faults_on_reallocation():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    applied, default, kept = out.stdout.split()
    if applied != "True":
        pytest.skip("not glibc: mallopt unavailable, keep_freed_memory is a documented no-op")
    pages = 48 * 2**20 / 4096
    assert float(default) > 0.5 * pages  # glibc's default: every cycle maps and faults the 48 MB in again
    assert float(kept) < 0.05 * pages  # kept in the heap: the same pages are reused
