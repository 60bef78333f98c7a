#!/usr/bin/env python3
"""Meta-iterations per second: fastmaml (vmap and per-task loop) against learn2learn, same run.

One meta-iteration = the inner loop on every task of the meta-batch, the meta-gradient
and the Adam step (fastmaml: ``MAML.meta_backward``, as in the training loop). Implementations are timed in interleaved rounds (A B C A B C ...)
so that machine noise hits all of them alike; the figure is the median over rounds and
ratios are taken against the per-task loop and against learn2learn measured in this run.

    python benchmarks/bench_maml.py                      # sinusoid, 2nd and 1st order
    python benchmarks/bench_maml.py --workload omniglot  # conv net, 5-way 1-shot, 32 tasks
    python benchmarks/bench_maml.py --json out.json

learn2learn is optional: where `import learn2learn` fails (its torchvision import does
on a CPU-only torch), its own algorithms/maml.py is loaded by file, unmodified.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.core.maml import MAML
from fastmaml.train.memory import keep_freed_memory
from fastmaml.tasks.batch import TaskBatch
from fastmaml.tasks.sinusoid import SinusoidTasks


# ------------------------------------------------------------------ workloads
def sinusoid_workload(seed: int):
    def model():
        return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))

    g = torch.Generator().manual_seed(seed)
    batches = [SinusoidTasks().sample(25, g, 10, 10)[0] for _ in range(8)]
    return model, F.mse_loss, 0.01, batches


def omniglot_workload(seed: int, tasks: int = 32, n_way: int = 5, k_shot: int = 1, k_query: int = 15):
    from fastmaml.models.conv import ConvNet

    def model():
        return ConvNet(in_channels=1, n_way=n_way, hidden=64, image_size=28, strided=True, global_pool=True)

    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(n_way).repeat(k_shot).expand(tasks, -1).contiguous()
    yq = torch.arange(n_way).repeat(k_query).expand(tasks, -1).contiguous()
    batches = [
        TaskBatch(torch.rand(tasks, n_way * k_shot, 1, 28, 28, generator=g), ys,
                  torch.rand(tasks, n_way * k_query, 1, 28, 28, generator=g), yq)
        for _ in range(2)
    ]
    return model, F.cross_entropy, 0.4, batches


# ------------------------------------------------------------------ implementations
def fastmaml_step(make_model, loss_fn, inner_lr, steps, first_order, vectorize, chunk_size=None,
                  bf16: bool = False, channels_last: bool = False) -> Callable:
    torch.manual_seed(0)
    learner = MAML(make_model(), loss_fn, inner_lr, steps, first_order=first_order, vectorize=vectorize,
                   chunk_size=chunk_size)
    if channels_last:
        learner.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(learner.parameters(), 1e-3)

    def step(batch: TaskBatch) -> None:
        if channels_last:  # per task [N, C, H, W] slices of a channels-last [T, N, C, H, W] batch
            batch = TaskBatch(*(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                                for t in (batch.support_x.flatten(0, 1), batch.support_y, batch.query_x.flatten(0, 1),
                                          batch.query_y)))
            batch = TaskBatch(batch.support_x.view(batch.support_y.shape + batch.support_x.shape[1:]), batch.support_y,
                              batch.query_x.view(batch.query_y.shape + batch.query_x.shape[1:]), batch.query_y)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            learner.meta_backward(batch)  # what the training loop runs: chunk by chunk when chunk_size is set
        opt.step()

    return step


def load_learn2learn_maml():
    try:
        import learn2learn

        return learn2learn.algorithms.MAML, "full import"
    except Exception as e:  # noqa: BLE001 - torchvision's import error varies
        reason = type(e).__name__
    for name in [m for m in sys.modules if m.split(".")[0] == "learn2learn"]:
        del sys.modules[name]
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        return None, "not installed"
    root = Path(list(spec.submodule_search_locations)[0])
    for name, path in (("learn2learn", root), ("learn2learn.algorithms", root / "algorithms")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        sys.modules[name] = pkg
    module = importlib.import_module("learn2learn.algorithms.maml")
    return module.MAML, f"algorithms/maml.py only (import learn2learn: {reason})"


def learn2learn_meta_backward(maml, batch: TaskBatch, loss_fn, steps: int) -> None:
    """learn2learn's documented pattern: clone, adapt, backward of the query loss, task by task."""
    t = batch.num_tasks
    for i in range(t):
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(loss_fn(learner(batch.support_x[i]), batch.support_y[i]))
        (loss_fn(learner(batch.query_x[i]), batch.query_y[i]) / t).backward()


def learn2learn_step(l2l_maml, make_model, loss_fn, inner_lr, steps, first_order) -> Callable:
    torch.manual_seed(0)
    maml = l2l_maml(make_model(), lr=inner_lr, first_order=first_order)
    opt = torch.optim.Adam(maml.parameters(), 1e-3)

    def step(batch: TaskBatch) -> None:
        opt.zero_grad(set_to_none=True)
        learn2learn_meta_backward(maml, batch, loss_fn, steps)
        opt.step()

    return step


# ------------------------------------------------------------------ data parallel (torchrun-style, in this run)
def _parallel_worker(rank: int, world: int, init_file: str, impl: str, workload: dict, steps: int, first_order: bool,
                     chunk_size: int | None, keep_memory: bool, conn) -> None:
    """One rank: 1 thread, its slice of every meta-batch, gradients averaged with gloo all-reduce
    (the same helpers as the training loop under torchrun)."""
    import torch.distributed as dist

    from fastmaml.train import distributed as D

    torch.set_num_threads(1)
    if keep_memory:
        keep_freed_memory()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ctx = D.DistContext(rank=rank, world_size=world)
    make_model, loss_fn, inner_lr, batches = omniglot_workload(0, **workload)
    torch.manual_seed(0)
    if impl == "fastmaml":
        model = MAML(make_model(), loss_fn, inner_lr, steps, first_order=first_order, chunk_size=chunk_size)
        run = model.meta_backward
    else:
        l2l_maml, _ = load_learn2learn_maml()
        model = l2l_maml(make_model(), lr=inner_lr, first_order=first_order)

        def run(batch: TaskBatch) -> None:
            learn2learn_meta_backward(model, batch, loss_fn, steps)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    shards = [D.shard(b, ctx) for b in batches]
    while (i := conn.recv()) is not None:
        opt.zero_grad(set_to_none=True)
        run(shards[i % len(shards)])
        D.average_gradients(model.parameters(), ctx)
        opt.step()
        conn.send(i)
    dist.destroy_process_group()


class ParallelStep:
    """A meta-iteration split over ``world`` worker processes of 1 thread each (call ``close()`` at the end)."""

    def __init__(self, world: int, impl: str, workload: dict, steps: int, first_order: bool,
                 chunk_size: int | None = None, keep_memory: bool = True) -> None:
        import tempfile

        import torch.multiprocessing as mp

        self._dir = tempfile.TemporaryDirectory()
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for rank in range(world):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_parallel_worker, daemon=True,
                               args=(rank, world, f"{self._dir.name}/init", impl, workload, steps, first_order,
                                     chunk_size, keep_memory, child))
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        self.i = 0

    def __call__(self, batch: TaskBatch) -> None:  # the workers hold the same batches; only the index travels
        for c in self.conns:
            c.send(self.i)
        for c in self.conns:
            c.recv()
        self.i += 1

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(timeout=30)
        self._dir.cleanup()


# ------------------------------------------------------------------ timing
def time_interleaved(impls: dict[str, Callable], batches, rounds: int, min_seconds: float) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {k: [] for k in impls}
    for fn in impls.values():  # warm-up (first-call overheads, allocator)
        fn(batches[0])
    for _ in range(rounds):
        for name, fn in impls.items():
            n, t0 = 0, time.perf_counter()
            while True:
                fn(batches[n % len(batches)])
                n += 1
                if time.perf_counter() - t0 >= min_seconds:
                    break
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["sinusoid", "omniglot"], default="sinusoid")
    ap.add_argument("--order", choices=["2", "1", "both"], default="both")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--chunk-sizes", default="16", help="omniglot: chunk sizes (tasks per forward+backward pass) to time, comma-separated")
    ap.add_argument("--q-query", type=int, default=15, help="omniglot: query images per class (Finn's code: 1)")
    ap.add_argument("--cpu-options", action="store_true",
                    help="omniglot: also time bf16 autocast and channels-last (the CPU speed options examined)")
    ap.add_argument("--processes", type=int, default=0,
                    help="omniglot: also time fastmaml and learn2learn data-parallel over this many processes of 1 "
                         "thread each (gloo all-reduce, as under torchrun), same meta-batch")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is (by default the whole process, learn2learn included, keeps "
                         "freed memory in the heap, as fastmaml's training loop does)")
    ap.add_argument("--no-l2l", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = "glibc default" if args.default_malloc else (
        "freed memory kept in the heap" if keep_freed_memory() else "default (no glibc)")
    if args.workload == "sinusoid":
        make_model, loss_fn, inner_lr, batches = sinusoid_workload(0)
    else:
        make_model, loss_fn, inner_lr, batches = omniglot_workload(0, k_query=args.q_query)
    l2l_maml, l2l_how = (None, "skipped") if args.no_l2l else load_learn2learn_maml()
    orders = {"2": [False], "1": [True], "both": [False, True]}[args.order]
    report = {"workload": args.workload, "steps": args.steps, "q_query": args.q_query, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "learn2learn": l2l_how, "malloc": malloc, "results": {}}
    shape = f", 32 tasks 5-way 1-shot {args.q_query}-query" if args.workload == "omniglot" else ", 25 tasks K=10"
    print(f"# {args.workload}{shape}: meta-iterations/s, {args.steps} inner step(s), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; malloc: {malloc}; learn2learn: {l2l_how}")
    for first_order in orders:
        impls = {"fastmaml vmap": fastmaml_step(make_model, loss_fn, inner_lr, args.steps, first_order, "vmap")}
        if args.workload == "omniglot":
            for c in [int(c) for c in args.chunk_sizes.split(",") if c]:
                impls[f"fastmaml vmap, chunks of {c}"] = fastmaml_step(make_model, loss_fn, inner_lr, args.steps, first_order,
                                                                  "vmap", chunk_size=c)
            if args.cpu_options:
                impls["fastmaml vmap + bf16 autocast"] = fastmaml_step(make_model, loss_fn, inner_lr, args.steps,
                                                                       first_order, "vmap", bf16=True)
                impls["fastmaml loop + channels-last"] = fastmaml_step(make_model, loss_fn, inner_lr, args.steps,
                                                                       first_order, "loop", channels_last=True)
        impls["fastmaml loop"] = fastmaml_step(make_model, loss_fn, inner_lr, args.steps, first_order, "loop")
        if l2l_maml is not None:
            impls["learn2learn"] = learn2learn_step(l2l_maml, make_model, loss_fn, inner_lr, args.steps, first_order)
        parallel = []
        if args.workload == "omniglot" and args.processes > 1:
            chunk = max(int(c) for c in args.chunk_sizes.split(",") if c) if args.chunk_sizes else None
            per_rank = min(chunk, 32 // args.processes) if chunk else None
            workload = {"k_query": args.q_query}
            keep = not args.default_malloc
            parallel.append(ParallelStep(args.processes, "fastmaml", workload, args.steps, first_order, per_rank, keep))
            impls[f"fastmaml, {args.processes} processes x 1 thread"] = parallel[-1]
            if l2l_maml is not None:
                parallel.append(ParallelStep(args.processes, "learn2learn", workload, args.steps, first_order,
                                             keep_memory=keep))
                impls[f"learn2learn, {args.processes} processes x 1 thread"] = parallel[-1]
        rates = time_interleaved(impls, batches, args.rounds, args.min_seconds)
        for p in parallel:
            p.close()
        med = {k: statistics.median(v) for k, v in rates.items()}
        label = "FOMAML" if first_order else "MAML (2nd order)"
        print(f"\n## {label}\n\n| implementation | it/s (median) | [min-max] | × loop | × learn2learn |\n|---|---:|---:|---:|---:|")
        for name, r in med.items():
            vs_l2l = f"{r / med['learn2learn']:.2f}" if "learn2learn" in med else "-"
            print(f"| {name} | {r:.3g} | [{min(rates[name]):.3g}-{max(rates[name]):.3g}] | "
                  f"{r / med['fastmaml loop']:.2f} | {vs_l2l} |")
        report["results"][label] = {"median_it_per_s": med, "rounds": rates}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
