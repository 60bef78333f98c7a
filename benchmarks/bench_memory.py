#!/usr/bin/env python3
"""Peak memory of one second-order meta-iteration against the number of inner steps.

fastmaml with the stored graph (every inner step's activations kept for the backward pass),
fastmaml with ``recompute=Recompute()`` (each step recomputed in the backward pass, one
step's activations alive at a time) and learn2learn's ``MAML`` (task by task: clone, adapt,
backward), on Finn's Omniglot conv net and on ResNet-12 (MiniImagenet, 84x84).

One meta-iteration = ``meta_backward`` of the task batch (learn2learn: its documented per-task
loop), from freshly zeroed gradients; no optimizer step. Every configuration runs in a fresh
subprocess, so nothing of one run's peak leaks into the next. Measured there:

* CPU, ``tensor peak``: peak bytes of live tensor memory during the iteration beyond what was
  live before it, from the CPU allocator's records of each allocation and free (the profiler's
  memory events; deterministic for a given program). Taken on a second iteration.
* CPU, ``ΔmaxRSS``: the process's peak resident memory (``getrusage`` ``ru_maxrss``) after the
  measured iteration minus its resident memory just before it (allocator overheads included).
  A warm-up iteration on a one-task, one-example batch runs first, so that one-time costs of a
  first call (lazily initialized libraries) are not counted. ``--no-rss`` skips this iteration.
* CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` during the iteration minus
  the memory allocated before it.
* seconds per iteration (median of ``--time-iters`` iterations after the two measured ones; with
  ``--time-iters 0`` the first measured one): sensitive to machine load; memory is not.

    python benchmarks/bench_memory.py --workload omniglot_q15 --workload omniglot_q1 \
        --json results/benchmarks/memory.json --md results/benchmarks/memory.md
    python benchmarks/bench_memory.py --workload resnet12 --steps 1 2 5 10 --merge \
        --json results/benchmarks/memory.json --md results/benchmarks/memory.md

    python benchmarks/bench_memory.py --workload omniglot_q1 --steps 1 10 --time-rounds 5 --merge \
        --json results/benchmarks/memory.json --md results/benchmarks/memory.md   # time overhead

``--merge`` adds the rows to an existing JSON file (replacing rows of the same workload,
implementation and step count) and rewrites the Markdown table from all rows. learn2learn is
loaded as ``benchmarks/bench_maml.py`` does; where it is not installed its rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastmaml.core.batch import TaskBatching  # noqa: E402
from fastmaml.core.maml import MAML, Recompute  # noqa: E402
from fastmaml.tasks.batch import TaskBatch  # noqa: E402
from fastmaml.train.memory import peak_tensor_bytes  # noqa: E402

IMPLS = ("stored", "recompute", "learn2learn")
WORKLOADS = {
    # name: (description, default steps, tasks, queries per class)
    "omniglot_q15": ("Omniglot conv net (Finn: 64 filters, strided, global pool), 5-way 1-shot, 15 queries/class",
                     (1, 2, 5, 10), 4, 15),
    "omniglot_q1": ("Omniglot conv net, 5-way 1-shot, 1 query/class (the omniglot_5w1s preset's meta-training)",
                    (1, 2, 5, 10), 4, 1),
    "resnet12": ("ResNet-12 (64-160-320-640, 12.4M parameters), MiniImagenet 84x84, 5-way 1-shot, 1 query/class",
                 (1, 2, 5), 1, 1),
}


# ------------------------------------------------------------------ one configuration (child process)
def make_workload(name: str, tasks: int, q_query: int, device: str):
    n_way, k_shot = 5, 1
    if name.startswith("omniglot"):
        from fastmaml.models.conv import ConvNet

        def model():
            return ConvNet(in_channels=1, n_way=n_way, hidden=64, image_size=28, strided=True, global_pool=True)

        shape, inner_lr = (1, 28, 28), 0.4
    elif name == "resnet12":
        from fastmaml.models.resnet12 import ResNet12

        def model():
            return ResNet12(3, n_way)

        shape, inner_lr = (3, 84, 84), 0.01
    else:
        raise SystemExit(f"unknown workload {name!r}; choose from {sorted(WORKLOADS)}")
    g = torch.Generator().manual_seed(0)
    ys = torch.arange(n_way).repeat(k_shot).expand(tasks, -1).contiguous()
    yq = torch.arange(n_way).repeat(q_query).expand(tasks, -1).contiguous()
    batch = TaskBatch(torch.rand(tasks, n_way * k_shot, *shape, generator=g), ys,
                      torch.rand(tasks, n_way * q_query, *shape, generator=g), yq).to(device)
    return model, inner_lr, batch


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(spec: dict) -> dict:
    device = spec["device"]
    torch.manual_seed(0)
    make_model, inner_lr, batch = make_workload(spec["workload"], spec["tasks"], spec["q_query"], device)
    steps = spec["steps"]
    if spec["impl"] == "learn2learn":
        from bench_maml import learn2learn_meta_backward, load_learn2learn_maml

        l2l_maml, how = load_learn2learn_maml()
        if l2l_maml is None:
            return {"skipped": f"learn2learn {how}"}
        learner = l2l_maml(make_model().to(device), lr=inner_lr, first_order=False)

        def iteration(b: TaskBatch = batch):
            learner.zero_grad(set_to_none=True)
            learn2learn_meta_backward(learner, b, F.cross_entropy, steps)
    else:
        learner = MAML(make_model().to(device), F.cross_entropy, inner_lr, steps,
                       batching=TaskBatching(chunk_size=spec["chunk_size"]),
                       recompute=Recompute() if spec["impl"] == "recompute" else None)

        def iteration(b: TaskBatch = batch):
            learner.zero_grad(set_to_none=True)
            learner.meta_backward(b)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    # Warm-up on one task with one support and one query example: the same code path (libraries and
    # kernels initialized lazily on a first call) with next to no activations, so the peak RSS it
    # leaves behind stays below the measured iteration's.
    iteration(TaskBatch(batch.support_x[:1, :1], batch.support_y[:1, :1], batch.query_x[:1, :1], batch.query_y[:1, :1]))
    learner.zero_grad(set_to_none=True)
    sync()
    out = {"params": sum(p.numel() for p in learner.parameters())}
    rss0, maxrss0 = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        allocated0 = torch.cuda.memory_allocated()
    if spec["rss"] or device.startswith("cuda"):
        first = timed(iteration)
        maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out["delta_maxrss"] = maxrss1 - rss0
        out["maxrss_grew"] = maxrss1 > maxrss0  # False: the peak was not above the warm-up's (then an upper bound)
    if device.startswith("cuda"):
        out["cuda_peak"] = torch.cuda.max_memory_allocated() - allocated0
    else:  # an iteration under the profiler (after the RSS one: its event records would inflate the RSS)
        start = time.perf_counter()
        out["tensor_peak"] = peak_tensor_bytes(iteration)
        if not spec["rss"]:
            first = time.perf_counter() - start
    times = [timed(iteration) for _ in range(spec["time_iters"])]
    out["seconds"] = statistics.median(times) if times else first
    out["seconds_first"] = first
    return out


def time_interleaved(spec: dict) -> dict:
    """Seconds per ``meta_backward``: stored, recompute (automatic k) and recompute keeping every step's
    parameters (k = 1), timed in interleaved rounds in one process (load hits all three alike)."""
    torch.manual_seed(0)
    make_model, inner_lr, batch = make_workload(spec["workload"], spec["tasks"], spec["q_query"], spec["device"])
    variants = {"stored": {}, "recompute": {"recompute": Recompute()},
                "recompute, k=1": {"recompute": Recompute(keep_every=1)}}
    learners = {}
    for name, kw in variants.items():
        torch.manual_seed(0)
        learners[name] = MAML(make_model().to(spec["device"]), F.cross_entropy, inner_lr, spec["steps"],
                              batching=TaskBatching(chunk_size=spec["chunk_size"]), **kw)
    times: dict[str, list[float]] = {name: [] for name in learners}
    for _ in range(spec["rounds"] + 1):  # the first round warms up
        for name, learner in learners.items():
            learner.zero_grad(set_to_none=True)
            start = time.perf_counter()
            learner.meta_backward(batch)
            if spec["device"].startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


# ------------------------------------------------------------------ driver
def fmt_mb(x) -> str:
    return "-" if x is None else f"{x / 2**20:.1f}"


def label(row: dict) -> str:
    if row["impl"] == "learn2learn":
        return "learn2learn (task by task)"
    return f"fastmaml {row['impl']}" + (f", chunk_size {row['chunk_size']}" if row["chunk_size"] else ", all tasks at once")


def markdown(doc: dict) -> str:
    lines = ["# Peak memory of one second-order meta-iteration against inner steps", "",
             "Written by `benchmarks/bench_memory.py`. One meta-iteration = `meta_backward` of the task batch "
             "(learn2learn: its per-task clone/adapt/backward loop), no optimizer step, each configuration in a "
             "fresh process. *tensor peak*: peak live tensor bytes beyond those live before the iteration, from "
             "the CPU allocator's records (deterministic); *ΔmaxRSS*: peak resident memory minus resident memory "
             "before the iteration; *CUDA peak*: `max_memory_allocated` minus allocated before. "
             "*× 1 step*: the memory (tensor peak on CPU) against the same implementation's 1-step figure. "
             "Seconds per iteration depend on machine load (memory does not); in these tables they come from separate "
             "processes run at different times and are not comparable across rows on a shared machine: the "
             "interleaved table at the end measures the time overhead of recompute.", ""]
    for key, meta in doc["meta"].items():
        lines.append(f"- {key}: {meta}")
    by_workload: dict[str, list[dict]] = {}
    for row in doc["rows"]:
        by_workload.setdefault(row["workload"], []).append(row)
    for workload, rows in by_workload.items():
        r0 = rows[0]
        timing = f"median of {r0['time_iters']} further iterations" if r0["time_iters"] else "the first measured iteration"
        lines += ["", f"## {workload}", "", f"{WORKLOADS.get(workload, ('',))[0]}; {r0['tasks']} task(s), "
                      f"{r0['q_query']} query image(s) per class, device {r0['device']}; "
                      f"seconds: {timing}.", ""]
        cuda = any("cuda_peak" in r for r in rows)
        mem_key = "cuda_peak" if cuda else "tensor_peak"
        lines += [f"| implementation | inner steps | {'CUDA peak' if cuda else 'tensor peak'} (MiB) | × 1 step | "
                  "ΔmaxRSS (MiB) | s/iteration |", "|---|---:|---:|---:|---:|---:|"]
        ones = {label(r): r.get(mem_key) for r in rows if r["steps"] == 1}
        for r in sorted(rows, key=lambda r: (IMPLS.index(r["impl"]), r["chunk_size"] or 0, r["steps"])):
            if "skipped" in r:
                lines.append(f"| {label(r)} | {r['steps']} | skipped: {r['skipped']} | | | |")
                continue
            base = ones.get(label(r))
            ratio = f"{r[mem_key] / base:.2f}" if base else "-"
            lines.append(f"| {label(r)} | {r['steps']} | {fmt_mb(r.get(mem_key))} | {ratio} | "
                         f"{fmt_mb(r.get('delta_maxrss'))} | {r['seconds']:.3f} |")
    if doc.get("timing"):
        lines += ["", "## Time overhead of recompute (interleaved rounds in one process)", "",
                  "Median seconds per `meta_backward` over `rounds` rounds of stored / recompute / recompute keeping "
                  "every step's parameters (`Recompute(keep_every=1)`), timed one after the other in each round so "
                  "that machine load hits all three alike; still load-sensitive.", "",
                  "| workload | tasks (chunk_size) | inner steps | rounds | stored (s) | recompute (s) | × stored | "
                  "recompute, k=1 (s) | × stored |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for t in doc["timing"]:
            st, rc, r1 = t["stored"], t["recompute"], t["recompute, k=1"]
            lines.append(f"| {t['workload']} | {t['tasks']} ({t['chunk_size'] or 'all'}) | {t['steps']} | {t['rounds']} | "
                         f"{st:.3f} | {rc:.3f} | {rc / st:.2f} | {r1:.3f} | {r1 / st:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", action="append", choices=sorted(WORKLOADS), help="repeatable (default: omniglot_q15)")
    ap.add_argument("--steps", type=int, nargs="+", help="inner steps (default: the workload's)")
    ap.add_argument("--impl", action="append", choices=IMPLS, help="repeatable (default: all)")
    ap.add_argument("--tasks", type=int, help="tasks per meta-batch (default: the workload's)")
    ap.add_argument("--q-query", type=int, help="query images per class (default: the workload's)")
    ap.add_argument("--chunk-size", type=int, default=None, help="fastmaml chunk_size (default: all tasks at once)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--time-iters", type=int, default=2,
                    help="timed iterations after the measured ones (0: time the first)")
    ap.add_argument("--no-rss", action="store_true",
                    help="CPU: skip the un-profiled iteration that measures ΔmaxRSS (one iteration instead of two)")
    ap.add_argument("--time-rounds", type=int, default=0,
                    help="instead of memory: time stored vs recompute in this many interleaved rounds per step count")
    ap.add_argument("--json")
    ap.add_argument("--md")
    ap.add_argument("--merge", action="store_true", help="add to the rows already in --json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print("RESULT " + json.dumps(time_interleaved(spec) if spec.get("rounds") else run_one(spec)), flush=True)
        return

    doc = {"meta": {}, "rows": []}
    if args.merge and args.json and Path(args.json).exists():
        doc = json.loads(Path(args.json).read_text())
    doc["meta"].update({"torch": torch.__version__, "python": platform.python_version(),
                        "threads": os.environ.get("OMP_NUM_THREADS", "default"), "machine": platform.machine()})
    if not args.time_rounds and "learn2learn" in (args.impl or IMPLS):
        from bench_maml import load_learn2learn_maml

        l2l, how = load_learn2learn_maml()
        version = getattr(sys.modules.get(l2l.__module__.split(".")[0]), "__version__", None) if l2l else None
        if version is None and l2l is not None:
            init = Path(sys.modules[l2l.__module__].__file__).parents[1] / "_version.py"
            version = init.read_text().split("=")[-1].strip().strip("'\"") if init.exists() else "?"
        doc["meta"]["learn2learn"] = f"{version} ({how})" if l2l else how
    for workload in args.workload or ["omniglot_q15"]:
        _, default_steps, default_tasks, default_q = WORKLOADS[workload]
        if args.time_rounds:
            for steps in args.steps or default_steps:
                spec = {"workload": workload, "steps": steps, "device": args.device, "tasks": args.tasks or default_tasks,
                        "q_query": args.q_query or default_q, "chunk_size": args.chunk_size, "rounds": args.time_rounds}
                row = {**spec, **child(spec)}
                key = ("workload", "steps", "device", "chunk_size", "tasks", "q_query")
                doc["timing"] = [t for t in doc.get("timing", []) if any(t[k] != spec[k] for k in key)] + [row]
                write(doc, args)
                print(f"{workload:13s} S={steps:2d}  stored {row['stored']:.3f} s  recompute {row['recompute']:.3f} s "
                      f"({row['recompute'] / row['stored']:.2f}x)  k=1 {row['recompute, k=1']:.3f} s", flush=True)
            continue
        for impl in args.impl or IMPLS:
            for steps in args.steps or default_steps:
                spec = {"workload": workload, "impl": impl, "steps": steps, "device": args.device,
                        "tasks": args.tasks or default_tasks, "q_query": args.q_query or default_q,
                        "chunk_size": None if impl == "learn2learn" else args.chunk_size,
                        "time_iters": args.time_iters, "rss": not args.no_rss}
                row = {**spec, **child(spec)}
                key = ("workload", "impl", "steps", "device", "chunk_size")
                doc["rows"] = [r for r in doc["rows"] if any(r[k] != spec[k] for k in key)] + [row]
                write(doc, args)  # after every row: an interrupted run keeps what it measured
                mem = row.get("cuda_peak", row.get("tensor_peak"))
                print(f"{workload:13s} {impl:11s} S={steps:2d}  peak {fmt_mb(mem):>8s} MiB  "
                      f"ΔmaxRSS {fmt_mb(row.get('delta_maxrss')):>8s} MiB  {row.get('seconds', float('nan')):.3f} s"
                      + (f"  ({row['skipped']})" if "skipped" in row else ""), flush=True)
    print("\n" + write(doc, args))


def child(spec: dict) -> dict:
    """Run one configuration in a fresh process; its result."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def write(doc: dict, args) -> str:
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    text = markdown(doc)
    if args.md:
        Path(args.md).write_text(text)
    return text


if __name__ == "__main__":
    main()
