#!/usr/bin/env python3
"""Where the time of a query-heavy MAML meta-iteration goes, and which conv designs pay.

Companion of ``bench_maml.py`` (whose workloads, implementations and learn2learn loader it
imports). Three modes:

    python benchmarks/bench_conv_query.py time      # fastmaml vmap vs learn2learn, interleaved rounds
    python benchmarks/bench_conv_query.py segments  # full step vs query pass only (0 inner steps)
    python benchmarks/bench_conv_query.py layers    # one conv layer, fwd+bwd, four implementations
    python benchmarks/bench_conv_query.py profile --impl vmap   # torch.profiler table, support/query split
    python benchmarks/bench_conv_query.py ceiling   # each layer's grouped conv fwd+bwd, fp32 vs bf16 (GFLOP/s)
    python benchmarks/bench_conv_query.py fraction  # fastmaml's and learn2learn's rates as fractions of that ceiling

``--clock cpu`` times with the process's CPU time instead of the wall clock: on a machine
other jobs are loading, with ``--threads 1``, it measures the work done rather than the
share of the CPU obtained (stable to ~2% between rounds where wall time varies 2-3x).
Final figures come from ``--clock wall`` on a quiet machine, like ``bench_maml.py``.

Workloads: ``omniglot`` (bench_maml's: 32 tasks 5-way 1-shot, strided 64-filter net, 28x28x1,
``--q-query`` queries per class) and ``mini`` (MiniImagenet shapes: 4 tasks 5-way 1-shot 15
queries, 84x84x3, 32 filters, max-pooling, flattened head).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_maml as bm  # noqa: E402

from fastmaml.models.conv import ConvNet  # noqa: E402


def mini_workload(seed: int, tasks: int = 4, n_way: int = 5, k_shot: int = 1, k_query: int = 15, **model_kw):
    """bench_maml's MiniImagenet 5-way 1-shot workload (84×84 RGB, 32 filters, max-pooling)."""
    return bm.miniimagenet_workload(seed, tasks, n_way, k_shot, k_query, **model_kw)


def omniglot_workload(seed: int, k_query: int, **model_kw):
    _, loss_fn, lr, batches = bm.omniglot_workload(seed, k_query=k_query)

    def model():
        return ConvNet(in_channels=1, n_way=5, hidden=64, image_size=28, strided=True, global_pool=True, **model_kw)

    return model, loss_fn, lr, batches


def workload(args, **model_kw):
    if args.workload == "mini":
        return mini_workload(0, k_query=args.q_query, **model_kw)
    return omniglot_workload(0, args.q_query, **model_kw)


def variants(args) -> dict[str, dict]:
    """Model options to compare: name -> ConvNet keyword arguments."""
    out = {"fastmaml vmap": {}}
    for v in filter(None, args.variants.split(",")):
        key, _, value = v.partition("=")
        out[f"fastmaml vmap {v}"] = {key: value}
    return out


def timed_rounds(impls: dict, batches, rounds: int, clock: str) -> dict[str, list[float]]:
    """Seconds per meta-iteration, one iteration per implementation per round, interleaved."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    for fn in impls.values():
        fn(batches[0])
    out: dict[str, list[float]] = {k: [] for k in impls}
    for r in range(rounds):
        for name, fn in impls.items():
            t0 = now()
            fn(batches[r % len(batches)])
            out[name].append(now() - t0)
    return out


def report(secs: dict[str, list[float]], clock: str, ref: str = "learn2learn") -> None:
    med = {k: statistics.median(v) for k, v in secs.items()}
    unit = "it per CPU-s" if clock == "cpu" else "it/s"
    print(f"| implementation | {unit} (median) | [min-max] | x {ref} |\n|---|---:|---:|---:|")
    for k, s in med.items():
        ratio = f"{med[ref] / s:.2f}" if ref in med else "-"
        print(f"| {k} | {1 / s:.3g} | [{1 / max(secs[k]):.3g}-{1 / min(secs[k]):.3g}] | {ratio} |")


def cmd_time(args) -> None:
    impls = {}
    batches = None
    for name, kw in variants(args).items():
        make_model, loss_fn, lr, batches = workload(args, **kw)
        impls[name] = bm.fastmaml_step(make_model, loss_fn, lr, args.steps, args.first_order, "vmap",
                                       chunk_size=args.chunk_size)
    make_model, loss_fn, lr, batches = workload(args)
    l2l, how = bm.load_learn2learn_maml()
    if l2l is not None:
        impls["learn2learn"] = bm.learn2learn_step(l2l, make_model, loss_fn, lr, args.steps, args.first_order)
    print(f"# {args.workload}, {args.q_query} queries/class, {args.steps} step(s), "
          f"{'FOMAML' if args.first_order else 'MAML 2nd order'}, {torch.get_num_threads()} thread(s), "
          f"clock {args.clock}, learn2learn: {how}\n")
    report(timed_rounds(impls, batches, args.rounds, args.clock), args.clock)


def cmd_segments(args) -> None:
    """Full step vs the query pass alone (0 inner steps: forward + backward at theta, no support pass)."""
    make_model, loss_fn, lr, batches = workload(args)
    l2l, _ = bm.load_learn2learn_maml()
    impls = {}
    for steps in (args.steps, 0):
        impls[f"fastmaml vmap, {steps} step(s)"] = bm.fastmaml_step(make_model, loss_fn, lr, steps, False, "vmap")
        if l2l is not None:
            impls[f"learn2learn, {steps} step(s)"] = bm.learn2learn_step(l2l, make_model, loss_fn, lr, steps, False)
    secs = timed_rounds(impls, batches, args.rounds, args.clock)
    for k, v in secs.items():
        print(f"{k:32s} {statistics.median(v) * 1e3:8.1f} ms ({args.clock})")


# ------------------------------------------------------------------ one conv layer, per-task weights
def _grouped(x, w, b, stride):
    return vmap(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=1))(x, w, b)


def _unfold_bmm(x, w, b, stride):
    """im2col + matmul: under vmap one batched matmul per layer instead of a grouped convolution."""
    def one(x, w, b):
        n, _, h, _ = x.shape
        ho = (h - 1) // stride + 1
        cols = F.unfold(x, 3, padding=1, stride=stride)  # [n, C*9, L]
        return (torch.matmul(w.flatten(1), cols) + b[:, None]).view(n, -1, ho, ho)
    return vmap(one)(x, w, b)


def _nhwc_bmm(x, w, b, stride):
    """Channels-last im2col from 9 strided slices, one [n*L, 9C] x [9C, O] matmul per task."""
    def one(x, w, b):
        x = x.permute(0, 2, 3, 1)
        n, h, _, _ = x.shape
        ho = (h - 1) // stride + 1
        xp = F.pad(x, (0, 0, 1, 1, 1, 1))
        cols = torch.cat([xp[:, i:i + stride * ho:stride, j:j + stride * ho:stride] for i in range(3) for j in range(3)], -1)
        out = torch.addmm(b, cols.reshape(n * ho * ho, -1), w.permute(0, 2, 3, 1).flatten(1).t())
        return out.view(n, ho, ho, -1).permute(0, 3, 1, 2)
    return vmap(one)(x, w, b)


def _loop(x, w, b, stride):
    return torch.stack([F.conv2d(xi, wi, bi, stride=stride, padding=1) for xi, wi, bi in zip(x.unbind(), w.unbind(), b.unbind())])


def cmd_layers(args) -> None:
    if args.workload == "mini":
        shapes = [(3, 32, 84, 1), (32, 32, 42, 1), (32, 32, 21, 1), (32, 32, 10, 1)]
        tasks = 4
    else:
        shapes = [(1, 64, 28, 2), (64, 64, 14, 2), (64, 64, 7, 2), (64, 64, 4, 2)]
        tasks = 32
    n = 5 * args.q_query
    impls = {"grouped conv (vmap)": _grouped, "unfold + bmm": _unfold_bmm, "NHWC im2col + bmm": _nhwc_bmm,
             "per-task loop": _loop}
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"# one layer, {tasks} tasks x {n} images, forward + backward (weights; inputs after layer 1), "
          f"ms ({args.clock}), median of {args.rounds}\n")
    print("| layer (C->O, HxW, stride) | " + " | ".join(impls) + " |\n|---|" + "---:|" * len(impls))
    for c, o, h, s in shapes:
        x = torch.randn(tasks, n, c, h, h, requires_grad=c > 3)
        w = torch.randn(tasks, o, c, 3, 3, requires_grad=True)
        b = torch.randn(tasks, o, requires_grad=True)
        inputs = (x, w, b) if c > 3 else (w, b)
        ref = _grouped(x, w, b, s)
        g = torch.randn_like(ref)
        times = {}
        for name, f in impls.items():
            out = f(x, w, b, s)
            assert torch.allclose(out, ref, atol=1e-3, rtol=1e-4), name
            ts = []
            for _ in range(args.rounds):
                t0 = now()
                torch.autograd.grad(f(x, w, b, s), inputs, g)
                ts.append(now() - t0)
            times[name] = statistics.median(ts)
        print(f"| {c}->{o}, {h}x{h}, s{s} | " + " | ".join(f"{t * 1e3:.0f}" for t in times.values()) + " |")


def _layer_shapes(workload: str) -> tuple[list[tuple[int, int, int, int]], int]:
    """(C_in, C_out, H, stride) of each conv layer, and the tasks per meta-batch."""
    if workload == "mini":
        return [(3, 32, 84, 1), (32, 32, 42, 1), (32, 32, 21, 1), (32, 32, 10, 1)], 4
    return [(1, 64, 28, 2), (64, 64, 14, 2), (64, 64, 7, 2), (64, 64, 4, 2)], 32


def _dense_loop(x, w, b, stride):
    """One dense convolution per task (learn2learn's form)."""
    return torch.stack([F.conv2d(x[t], w[t], b[t], stride=stride, padding=1) for t in range(x.shape[0])])


def _layer_seconds(c: int, o: int, h: int, s: int, tasks: int, n: int, rounds: int, now,
                   conv=None) -> tuple[float, dict]:
    """(the layer's forward + backward GFLOP, {dtype: median seconds}) of the grouped (vmapped) convolution, or of
    ``conv`` (e.g. :func:`_dense_loop`)."""
    conv = conv or _grouped
    out_hw = (h - 1) // s + 1
    flops = 3 * 2 * tasks * n * o * c * 9 * out_hw * out_hw  # forward + the two backward convolutions
    made = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(tasks, n, c, h, h, dtype=dtype, requires_grad=c > 3)
        w = torch.randn(tasks, o, c, 3, 3, dtype=dtype, requires_grad=True)
        b = torch.randn(tasks, o, dtype=dtype, requires_grad=True)
        made[dtype] = ((x, w, b) if c > 3 else (w, b), x, w, b, torch.randn_like(conv(x, w, b, s)))
    ts = {d: [] for d in made}
    for inputs, x, w, b, g in made.values():  # warm-up (oneDNN primitive creation)
        torch.autograd.grad(conv(x, w, b, s), inputs, g)
    for _ in range(rounds):  # interleaved: fp32, bf16, fp32, ...
        for d, (inputs, x, w, b, g) in made.items():
            t0 = now()
            torch.autograd.grad(conv(x, w, b, s), inputs, g)
            ts[d].append(now() - t0)
    return flops / 1e9, {d: statistics.median(v) for d, v in ts.items()}


def ceiling_rates(args) -> dict[torch.dtype, float]:
    """GFLOP/s of the workload's conv layers, forward + backward at the query batch, each layer as the faster of
    the grouped (vmapped) convolution and a loop of dense ones, fp32 and bf16: the convolution ceiling."""
    shapes, tasks = _layer_shapes(args.workload)
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    flops, secs = 0.0, {torch.float32: 0.0, torch.bfloat16: 0.0}
    for c, o, h, s in shapes:
        f, grouped = _layer_seconds(c, o, h, s, tasks, 5 * args.q_query, args.rounds, now)
        dense = _layer_seconds(c, o, h, s, tasks, 5 * args.q_query, args.rounds, now, _dense_loop)[1]
        flops += f
        for d in secs:
            secs[d] += min(grouped[d], dense[d])
    return {d: flops / t for d, t in secs.items()}


def cmd_ceiling(args) -> None:
    """The conv ceiling of ``train.precision``: each layer's grouped (vmapped) convolution, forward + backward, in
    fp32 and in bf16 (inputs and weights bf16, as core/precision.py runs them), ms and GFLOP/s, interleaved."""
    from fastmaml.core.precision import bf16_pays
    from fastmaml.eval.environment import environment

    shapes, tasks = _layer_shapes(args.workload)
    n = 5 * args.q_query
    env, now = environment(), (time.process_time if args.clock == "cpu" else time.perf_counter)
    print(f"# conv ceiling, {args.workload}: {tasks} tasks x {n} images, grouped conv fwd + bwd, ms ({args.clock}) / "
          f"GFLOP/s, median of {args.rounds}; {env['processor']}, torch CPU capability {env['cpu_capability']}, "
          f"bf16_pays: {bf16_pays('cpu')}\n")
    print("| layer (C->O, HxW, stride) | fp32 ms | bf16 ms | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |\n|---|---:|---:|---:|---:|---:|")
    for c, o, h, s in shapes:
        gflop, t = _layer_seconds(c, o, h, s, tasks, n, args.rounds, now)
        f32, b16 = t[torch.float32], t[torch.bfloat16]
        print(f"| {c}->{o}, {h}x{h}, s{s} | {f32 * 1e3:.1f} | {b16 * 1e3:.1f} | {gflop / f32:.1f} | "
              f"{gflop / b16:.1f} | {f32 / b16:.2f}x |")


def conv_gflop_per_iteration(args) -> float:
    """Convolution GFLOP of one meta-iteration (support forward, backward and double backward; query forward and
    backward), counted by torch's FlopCounterMode on the per-task loop: the same work as vmap's grouped
    convolutions, whose backward the counter overcounts by the number of groups."""
    from torch.utils.flop_counter import FlopCounterMode

    make_model, loss_fn, lr, batches = workload(args)
    step = bm.fastmaml_step(make_model, loss_fn, lr, args.steps, args.first_order, "loop")
    with FlopCounterMode(display=False) as counter:
        step(batches[0])
    counts = counter.get_flop_counts()["Global"]
    return sum(float(v) for k, v in counts.items() if "convolution" in str(k)) / 1e9


def cmd_fraction(args) -> None:
    """Each implementation's rate as a fraction of the conv ceiling: (conv GFLOP per meta-iteration / the ceiling's
    GFLOP/s) is the most meta-iterations per second convolutions alone allow; the rest of the gap is everything
    else (element-wise ops, BatchNorm, dispatch)."""
    from fastmaml.eval.environment import environment

    bf16 = args.precision == "bf16"
    gflop = conv_gflop_per_iteration(args)
    rate = ceiling_rates(args)[torch.bfloat16 if bf16 else torch.float32]
    ceiling = rate / gflop
    make_model, loss_fn, lr, batches = workload(args)
    impls = {"fastmaml vmap": bm.fastmaml_step(make_model, loss_fn, lr, args.steps, args.first_order, "vmap",
                                               bf16=bf16)}
    if args.chunk_size:
        impls[f"fastmaml vmap, chunks of {args.chunk_size}"] = bm.fastmaml_step(
            make_model, loss_fn, lr, args.steps, args.first_order, "vmap", chunk_size=args.chunk_size, bf16=bf16)
    impls["fastmaml loop"] = bm.fastmaml_step(make_model, loss_fn, lr, args.steps, args.first_order, "loop", bf16=bf16)
    l2l, how = bm.load_learn2learn_maml()
    if l2l is not None and not bf16:
        impls["learn2learn"] = bm.learn2learn_step(l2l, make_model, loss_fn, lr, args.steps, args.first_order)
    secs = timed_rounds(impls, batches, args.rounds, args.clock)
    env = environment()
    unit = "it per CPU-s" if args.clock == "cpu" else "it/s"
    print(f"# {args.workload}, {args.q_query} queries/class, {args.precision}, {args.steps} step(s), "
          f"{'FOMAML' if args.first_order else 'MAML 2nd order'}, {torch.get_num_threads()} thread(s), clock "
          f"{args.clock}; {env['processor']}, torch {torch.__version__}; learn2learn: {how}")
    print(f"# conv work {gflop:.1f} GFLOP per meta-iteration; ceiling {rate:.1f} GFLOP/s ({args.precision} conv "
          f"fwd + bwd of these layers, grouped or dense, the faster) -> at most {ceiling:.3g} {unit}\n")
    print(f"| implementation | {unit} (median) | fraction of the conv ceiling |\n|---|---:|---:|")
    for name, s in secs.items():
        r = 1 / statistics.median(s)
        print(f"| {name} | {r:.3g} | {r / ceiling:.0%} |")


# ------------------------------------------------------------------ profile
def cmd_profile(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    make_model, loss_fn, lr, batches = workload(args)
    if args.impl == "learn2learn":
        l2l, _ = bm.load_learn2learn_maml()
        step = bm.learn2learn_step(l2l, make_model, loss_fn, lr, args.steps, False)
    else:
        step = bm.fastmaml_step(make_model, loss_fn, lr, args.steps, False, args.impl, chunk_size=args.chunk_size)
    for i in range(2):
        step(batches[i % 2])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step(batches[0])
    table = prof.key_averages(group_by_input_shape=True)
    n_query, n_support = 5 * args.q_query, 5
    n_tasks = batches[0].num_tasks
    groups: collections.Counter = collections.Counter()
    for e in table:
        if e.key.startswith(("autograd::", "ProfilerStep", "Optimizer")):
            continue
        leading = {d for s in (e.input_shapes or []) if s for d in s[:2]}
        where = ("query" if n_query in leading or n_query * n_tasks in leading else
                 "support" if n_support in leading or n_support * n_tasks in leading else "other")
        kind = "convolution" if "conv" in e.key else e.key
        groups[(where, kind)] += e.self_cpu_time_total
    total = sum(groups.values())
    print(f"# {args.impl}: {total / 1e3:.0f} ms of op self time in one meta-iteration (wall clock)\n")
    print("| pass | op | ms | share |\n|---|---|---:|---:|")
    for (where, kind), t in groups.most_common(args.top):
        print(f"| {where} | {kind} | {t / 1e3:.1f} | {100 * t / total:.1f}% |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["time", "segments", "layers", "profile", "ceiling", "fraction"])
    ap.add_argument("--workload", choices=["omniglot", "mini"], default="omniglot")
    ap.add_argument("--q-query", type=int, default=15)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--first-order", action="store_true")
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--variants", default="", help="time: ConvNet options to compare, e.g. 'block_order=pool_first'")
    ap.add_argument("--impl", default="vmap", help="profile: vmap | loop | learn2learn")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="fraction: the precision of the steps and the ceiling")
    ap.add_argument("--default-malloc", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.default_malloc:
        bm.keep_freed_memory()
    {"time": cmd_time, "segments": cmd_segments, "layers": cmd_layers, "profile": cmd_profile,
     "ceiling": cmd_ceiling, "fraction": cmd_fraction}[args.mode](args)


if __name__ == "__main__":
    main()
