#!/usr/bin/env python3
"""Meta-iterations per second: fastmaml (vmap, per-task loop, compiled) against learn2learn and JAX, same run.

One meta-iteration = the inner loop on every task of the meta-batch, the meta-gradient
and the Adam step (fastmaml: ``MAML.meta_backward``, as in the training loop; "fastmaml compiled":
:class:`fastmaml.core.compiled.CompiledMetaStep`, the whole iteration as one ``torch.compile`` graph,
as ``train.compile=true`` runs it). Implementations are timed in interleaved rounds (A B C A B C ...)
so that machine noise hits all of them alike; the figure is the median over rounds and
ratios are taken against the per-task loop, learn2learn and JAX measured in this run.

    python benchmarks/bench_maml.py                      # sinusoid, 2nd and 1st order
    python benchmarks/bench_maml.py --workload omniglot  # conv net, 5-way 1-shot, 32 tasks
    python benchmarks/bench_maml.py --json out.json

learn2learn is optional: where `import learn2learn` fails (its torchvision import does
on a CPU-only torch), its own algorithms/maml.py is loaded by file, unmodified.

JAX is optional (``pip install jax``; rows skipped with a note when ``import jax`` fails): a
hand-written MAML, ``jax.jit`` of one step = ``jax.value_and_grad`` of the mean query loss of
``jax.vmap`` over tasks of the inner ``jax.grad`` steps, then Adam in plain jnp (torch.optim.Adam's
formulas). Same network, same initial weights (copied from the torch model), same batches; its
meta-gradient is checked against fastmaml's before timing (max abs difference printed) and its
compile time (ahead-of-time ``lower().compile()``) is reported apart from the rates. Omniglot runs
two JAX variants: XLA's convolution (``lax.conv_general_dilated``; per-task weights under vmap make
it a batch-grouped convolution) and an im2col convolution (9 strided slices and one matmul).

Threads: ``--threads N`` (default: every core this process may use). torch: ``torch.set_num_threads(N)``.
XLA's CPU backend (jaxlib 0.10) sizes its intra-op thread pool by the CPUs the process may run on;
the often-quoted ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=N"``
is accepted but does not change that pool (measured: its threads still all ran). So with
``--threads N`` below the number of cores the script restricts the process to N cores
(``os.sched_setaffinity``) before importing jax, which bounds both libraries alike; on the
2-core benchmark machine the default is 2 threads for both. The thread count and the CPU set
are printed and stored in the JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.core import precision as P
from fastmaml.core.batch import TaskBatching
from fastmaml.core.compiled import CompiledMetaStep
from fastmaml.core.maml import MAML
from fastmaml.train.batching import candidates as batching_candidates
from fastmaml.train.batching import describe as describe_batching
from fastmaml.train.batching import time_batchings
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


def miniimagenet_workload(seed: int, tasks: int = 4, n_way: int = 5, k_shot: int = 1, k_query: int = 15, **model_kw):
    """MiniImagenet 5-way 1-shot as in the paper: 84×84 RGB, 32 filters, max-pooling, meta-batch 4 (``model_kw``:
    other ConvNet options)."""
    from fastmaml.models.conv import ConvNet

    def model():
        return ConvNet(in_channels=3, n_way=n_way, hidden=32, image_size=84, **model_kw)

    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(n_way).repeat(k_shot).expand(tasks, -1).contiguous()
    yq = torch.arange(n_way).repeat(k_query).expand(tasks, -1).contiguous()
    batches = [TaskBatch(torch.rand(tasks, n_way * k_shot, 3, 84, 84, generator=g), ys,
                         torch.rand(tasks, n_way * k_query, 3, 84, 84, generator=g), yq) for _ in range(2)]
    return model, F.cross_entropy, 0.01, batches


def precision_rows(args) -> dict:
    """``--precision-rows``: fp32 against bf16 (``train.precision``'s engine path, core/precision.py), interleaved
    in one run, on Omniglot 5-way 1-shot (1 and 15 queries per class) and MiniImagenet 5-way 1-shot, second order."""
    from fastmaml.eval.environment import environment

    env = environment()
    pays, why = P.bf16_pays(args.device)
    where = env["cuda"] if args.device.startswith("cuda") else env["processor"]
    print(f"# fp32 vs bf16 (train.precision), MAML second order, {args.steps} inner step(s), meta-iterations/s; "
          f"{where}, torch CPU capability {env['cpu_capability']}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"bf16_pays: {pays} ({why})")
    workloads = {
        "Omniglot 5-way 1-shot, 1 query/class": lambda: omniglot_workload(0, tasks=args.tasks or 32, k_query=1),
        "Omniglot 5-way 1-shot, 15 queries/class": lambda: omniglot_workload(0, tasks=args.tasks or 32, k_query=15),
        "MiniImagenet 5-way 1-shot, 15 queries/class": lambda: miniimagenet_workload(0, tasks=args.tasks or 4),
    }
    impls, batches_of, tuned_of = {}, {}, {}
    for label, make in workloads.items():
        make_model, loss_fn, inner_lr, batches = make()
        if args.device != "cpu":
            base = make_model
            make_model = lambda base=base: base().to(args.device)  # noqa: E731
            batches = [b.to(args.device) for b in batches]
        for prec in ("fp32", "bf16"):
            impls[f"{label} | {prec}"] = fastmaml_step(make_model, loss_fn, inner_lr, args.steps, False, "vmap",
                                                       bf16=prec == "bf16")
            batches_of[f"{label} | {prec}"] = batches
        # bf16 with the batching train.tune_batching would pick here (vmap, chunks or the loop: train/batching.py)
        tuned = _tuned_bf16_batching(make_model, loss_fn, inner_lr, args.steps, batches[0])
        tuned_of[label] = tuned
        impls[f"{label} | bf16 tuned"] = fastmaml_step(make_model, loss_fn, inner_lr, args.steps, False, tuned.mode,
                                                       tuned.chunk_size, bf16=True)
        batches_of[f"{label} | bf16 tuned"] = batches
    # one interleaved schedule over all rows: each gets its own workload's batches
    rates = time_interleaved({k: (lambda b, k=k, f=f: f(batches_of[k][b])) for k, f in impls.items()},
                             [0, 1], args.rounds, args.min_seconds, args.device)
    print("\n| workload | fp32 vmap it/s | bf16 vmap it/s | bf16 / fp32 | bf16, tuned batching | it/s | tuned bf16 / fp32 vmap |"
          "\n|---|---:|---:|---:|---|---:|---:|")
    out = {"environment": env, "bf16_pays": [pays, why], "rows": {}}
    for label in workloads:
        f32, b16, b16t = (statistics.median(rates[f"{label} | {p}"]) for p in ("fp32", "bf16", "bf16 tuned"))
        print(f"| {label} | {f32:.3g} | {b16:.3g} | {b16 / f32:.2f}× | {describe_batching(tuned_of[label])} | "
              f"{b16t:.3g} | {b16t / f32:.2f}× |")
        out["rows"][label] = {"fp32": rates[f"{label} | fp32"], "bf16": rates[f"{label} | bf16"],
                              "bf16_tuned": rates[f"{label} | bf16 tuned"],
                              "bf16_tuned_batching": describe_batching(tuned_of[label])}
    return out


def _tuned_bf16_batching(make_model, loss_fn, inner_lr, steps, batch: TaskBatch) -> TaskBatching:
    """The batching ``train.tune_batching`` picks for a bf16 run of this workload (timed on ``batch``)."""
    torch.manual_seed(0)
    learner = MAML(make_model(), loss_fn, inner_lr, steps, precision=P.BF16)
    times = time_batchings(learner, batch, batching_candidates(batch.num_tasks, learner.batching))
    return min(times, key=times.__getitem__)


# ------------------------------------------------------------------ implementations
def fastmaml_step(make_model, loss_fn, inner_lr, steps, first_order, vectorize, chunk_size=None,
                  bf16: bool = False, channels_last: bool = False) -> Callable:
    torch.manual_seed(0)
    learner = MAML(make_model(), loss_fn, inner_lr, steps, first_order=first_order,
                   batching=TaskBatching(vectorize, chunk_size), precision=P.BF16 if bf16 else P.FP32)  # train.precision's engine path
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
        learner.meta_backward(batch)  # what the training loop runs: chunk by chunk when chunk_size is set
        opt.step()

    return step


def fastmaml_compiled_step(make_model, loss_fn, inner_lr, steps, first_order, fuse_optimizer: bool = True,
                           mode: str | None = None):
    """``CompiledMetaStep``: the meta-iteration as one compiled graph (what ``train.compile=true`` runs);
    ``fuse_optimizer=False``: compiled meta-gradient, eager ``torch.optim.Adam`` step."""
    torch.manual_seed(0)
    learner = MAML(make_model(), loss_fn, inner_lr, steps, first_order=first_order)
    opt = torch.optim.Adam(learner.parameters(), 1e-3)
    return CompiledMetaStep(learner, opt, fuse_optimizer=fuse_optimizer, mode=mode)


def compiled_grad_diff(make_model, loss_fn, inner_lr, steps, first_order, compiled: CompiledMetaStep,
                       batch: TaskBatch) -> tuple[float, float]:
    """(max abs difference, max abs value) of the compiled meta-gradient against eager ``meta_backward``,
    at the initial weights (``compiled`` must be the gradient-only variant, not yet stepped)."""
    torch.manual_seed(0)
    ref = MAML(make_model(), loss_fn, inner_lr, steps, first_order=first_order)
    ref.meta_backward(batch)
    compiled.learner.zero_grad(set_to_none=True)
    compiled.backward(batch)
    pairs = list(zip(ref.parameters(), compiled.learner.parameters()))
    return (max(float((a.grad - b.grad).abs().max()) for a, b in pairs), max(float(a.grad.abs().max()) for a, _ in pairs))


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


# ------------------------------------------------------------------ JAX (optional): a hand-written MAML, jit(vmap)
def jax_available() -> tuple[object | None, str]:
    try:
        import jax  # noqa: F401

        return jax, f"jax {jax.__version__}"
    except Exception as e:  # noqa: BLE001
        return None, f"skipped (import jax: {type(e).__name__})"


def _torch_to_jax_params(model: nn.Module, workload: str):
    """The torch model's initial weights as JAX arrays: Linear [out, in] kept (x @ W.T + b); conv
    weights OIHW -> HWIO (the JAX side runs NHWC, as flax does)."""
    import jax.numpy as jnp

    params = {}
    for name, p in model.named_parameters():
        a = p.detach().cpu().numpy()
        if workload == "omniglot" and a.ndim == 4:
            a = a.transpose(2, 3, 1, 0)
        params[name] = jnp.asarray(a)
    return params


def _jax_batches(batches, workload: str):
    import jax.numpy as jnp

    out = []
    for b in batches:
        xs, xq = b.support_x.numpy(), b.query_x.numpy()
        if workload == "omniglot":  # [T, N, C, H, W] -> [T, N, H, W, C]
            xs, xq = xs.transpose(0, 1, 3, 4, 2), xq.transpose(0, 1, 3, 4, 2)
        out.append(tuple(jnp.asarray(a) for a in (xs, b.support_y.numpy(), xq, b.query_y.numpy())))
    return out


def jax_maml(workload: str, inner_lr: float, steps: int, first_order: bool, conv: str = "xla",
             meta_lr: float = 1e-3):
    """(step, meta_grad) for a JAX MAML written the way a researcher writes one.

    ``meta_grad(params, batch)``: the meta-gradient (for the check against fastmaml);
    ``step(state, batch) -> (state, loss)``: ``jax.jit`` of value_and_grad of the mean query loss of
    ``jax.vmap`` over tasks of the inner ``jax.grad`` steps, then Adam in plain jnp (torch.optim.Adam's formulas).
    ``conv``: ``"xla"`` (``lax.conv_general_dilated``, NHWC/HWIO) or ``"im2col"`` (9 strided slices and a matmul).
    """
    import jax
    import jax.numpy as jnp

    if workload == "sinusoid":
        def net(p, x):
            h = jax.nn.relu(x @ p["0.weight"].T + p["0.bias"])
            h = jax.nn.relu(h @ p["2.weight"].T + p["2.bias"])
            return h @ p["4.weight"].T + p["4.bias"]

        def loss_fn(p, x, y):
            return jnp.mean((net(p, x) - y) ** 2)
    else:
        def conv3x3_s2(x, w):  # x [N, H, W, C], w [3, 3, C, O], stride 2, padding 1
            if conv == "xla":
                return jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
            n, h, wd, c = x.shape
            ho, wo = (h - 1) // 2 + 1, (wd - 1) // 2 + 1
            xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            patches = jnp.stack([xp[:, i:i + 2 * ho - 1:2, j:j + 2 * wo - 1:2, :] for i in range(3) for j in range(3)],
                                axis=3)  # [N, Ho, Wo, 9, C]
            return patches.reshape(n, ho, wo, 9 * c) @ w.reshape(9 * c, -1)

        def net(p, x):
            h = x
            for i in range(4):
                h = conv3x3_s2(h, p[f"features.{3 * i}.weight"]) + p[f"features.{3 * i}.bias"]
                mean = h.mean(axis=(0, 1, 2))
                var = ((h - mean) ** 2).mean(axis=(0, 1, 2))
                h = (h - mean) * jax.lax.rsqrt(var + 1e-5) * p[f"features.{3 * i + 1}.weight"] + p[f"features.{3 * i + 1}.bias"]
                h = jax.nn.relu(h)
            return h.mean(axis=(1, 2)) @ p["head.weight"].T + p["head.bias"]

        def loss_fn(p, x, y):
            logp = jax.nn.log_softmax(net(p, x))
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def task_loss(p, xs, ys, xq, yq):
        for _ in range(steps):
            g = jax.grad(loss_fn)(p, xs, ys)
            if first_order:
                g = jax.lax.stop_gradient(g)
            p = jax.tree_util.tree_map(lambda a, b: a - inner_lr * b, p, g)
        return loss_fn(p, xq, yq)

    def meta_loss(p, batch):
        return jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(p, *batch))

    b1, b2, eps = 0.9, 0.999, 1e-8

    @jax.jit
    def step(state, batch):
        p, m, v, t = state
        loss, g = jax.value_and_grad(meta_loss)(p, batch)
        t = t + 1
        m = jax.tree_util.tree_map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree_util.tree_map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
        step_size = meta_lr / (1 - b1 ** t)
        bc2 = jnp.sqrt(1 - b2 ** t)
        p = jax.tree_util.tree_map(lambda p_, m_, v_: p_ - step_size * m_ / (jnp.sqrt(v_) / bc2 + eps), p, m, v)
        return (p, m, v, t), loss

    return step, jax.jit(jax.grad(meta_loss))


def jax_step(make_model, workload: str, inner_lr, steps, first_order, batches, conv: str = "xla"):
    """A timed callable over the same batches (indexed like the torch ones), the meta-gradient check
    against fastmaml's eager ``MAML.meta_backward`` and the compile time."""
    import jax
    import jax.numpy as jnp

    torch.manual_seed(0)
    model = make_model()  # the very weights fastmaml_step starts from
    params = _torch_to_jax_params(model, workload)
    jbatches = _jax_batches(batches, workload)
    step, meta_grad = jax_maml(workload, inner_lr, steps, first_order, conv)

    # Meta-gradient check against fastmaml (eager) on the first batch, before any timing.
    torch.manual_seed(0)
    ref = MAML(make_model(), {"sinusoid": F.mse_loss, "omniglot": F.cross_entropy}[workload], inner_lr, steps,
               first_order=first_order)
    ref.meta_backward(batches[0])
    g = meta_grad(params, jbatches[0])
    diff, scale = 0.0, 0.0
    for name, p in ref.model.named_parameters():
        a = np.asarray(g[name])
        if workload == "omniglot" and a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)
        diff = max(diff, float(np.abs(a - p.grad.numpy()).max()))
        scale = max(scale, float(p.grad.abs().max()))

    state = (params, jax.tree_util.tree_map(jnp.zeros_like, params), jax.tree_util.tree_map(jnp.zeros_like, params),
             jnp.zeros((), jnp.float32))
    t0 = time.perf_counter()
    compiled = step.lower(state, jbatches[0]).compile()  # ahead of time: the timed calls never compile
    compile_s = time.perf_counter() - t0
    holder = {"state": state}
    index = {id(b): i for i, b in enumerate(batches)}  # the torch batch -> the same data as JAX arrays (untimed)

    def run(batch: TaskBatch) -> None:
        holder["state"], _ = compiled(holder["state"], jbatches[index[id(batch)]])
        jax.block_until_ready(holder["state"])  # synchronous, like a torch step on a CPU

    return run, {"max_abs_grad_diff": diff, "max_abs_grad": scale, "compile_s": compile_s}


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
        model = MAML(make_model(), loss_fn, inner_lr, steps, first_order=first_order,
                     batching=TaskBatching(chunk_size=chunk_size))
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
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(impls: dict[str, Callable], batches, rounds: int, min_seconds: float, device: str = "cpu",
                     peaks: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Median-ready rates per implementation; on CUDA each timed block ends with a synchronize, and
    ``peaks`` receives each implementation's peak allocated memory (MiB) over its warm-up iteration."""
    rates: dict[str, list[float]] = {k: [] for k in impls}
    for name, fn in impls.items():  # warm-up (first-call overheads, allocator)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        fn(batches[0])
        _sync(device)
        if device.startswith("cuda") and peaks is not None:
            peaks[name] = torch.cuda.max_memory_allocated() / 2**20
    for _ in range(rounds):
        for name, fn in impls.items():
            n, t0 = 0, time.perf_counter()
            while True:
                fn(batches[n % len(batches)])
                n += 1
                if n % 5 == 0 or device == "cpu":
                    _sync(device)
                    if time.perf_counter() - t0 >= min_seconds:
                        break
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def set_inductor_options(pairs: list[str]) -> dict:
    """Apply ``KEY=VALUE`` settings (VALUE as JSON, else a string) to ``torch._inductor.config``; what was set."""
    import torch._inductor.config as inductor_config

    done = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--inductor {pair!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *path, leaf = key.split(".")
        obj = inductor_config
        for part in path:
            obj = getattr(obj, part)
        if not hasattr(obj, leaf):
            raise SystemExit(f"--inductor {key}: torch._inductor.config has no such setting")
        setattr(obj, leaf, value)
        done[key] = value
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["sinusoid", "omniglot"], default="sinusoid")
    ap.add_argument("--order", choices=["2", "1", "both"], default="both")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for torch and JAX alike (below the core count: the process is also restricted to "
                         "that many cores, which is what bounds XLA's pool); default: all cores")
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
    ap.add_argument("--no-jax", action="store_true")
    ap.add_argument("--no-compiled", action="store_true", help="skip the fastmaml compiled (torch.compile) row")
    ap.add_argument("--compile-variants", action="store_true",
                    help="also time the compiled meta-gradient with an eager Adam step (and check it equals eager "
                         "meta_backward's) and the fused step compiled with mode=max-autotune-no-cudagraphs")
    ap.add_argument("--no-loop", action="store_true", help="skip fastmaml's per-task loop row")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: models and batches live there (JAX rows: CPU only, "
                    "skipped on cuda); on cuda the table also gives each row's peak allocated memory")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--precision-rows", action="store_true",
                    help="only fp32 vs bf16 (train.precision), interleaved: Omniglot 5w1s with 1 and 15 queries/class "
                         "and MiniImagenet 5w1s, each row with the CPU model (or GPU) and its bf16 capability")
    ap.add_argument("--tasks", type=int, default=None, help="--precision-rows: tasks per meta-batch (default: the paper's)")
    ap.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                    help="set torch._inductor.config KEY (dotted, e.g. cpp_wrapper=true, max_autotune=true, "
                         "max_autotune_gemm_backends='\"CPP,ATEN\"') before the compiled rows compile; repeatable")
    args = ap.parse_args()
    inductor = set_inductor_options(args.inductor)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if args.threads:
        if cpus and args.threads < len(cpus):  # bounds XLA's intra-op pool (and torch) to these cores
            cpus = cpus[:args.threads]
            os.sched_setaffinity(0, cpus)
        torch.set_num_threads(args.threads)
    malloc = "glibc default" if args.default_malloc else (
        "freed memory kept in the heap" if keep_freed_memory() else "default (no glibc)")
    if args.precision_rows:
        out = precision_rows(args)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2) + "\n")
        return
    if args.workload == "sinusoid":
        make_model, loss_fn, inner_lr, batches = sinusoid_workload(0)
    else:
        make_model, loss_fn, inner_lr, batches = omniglot_workload(0, k_query=args.q_query)
    if args.device != "cpu":
        base_model = make_model
        make_model = lambda: base_model().to(args.device)  # noqa: E731 - every row builds its network through this
        batches = [b.to(args.device) for b in batches]
        args.no_jax, args.processes = True, 0
    l2l_maml, l2l_how = (None, "skipped") if args.no_l2l else load_learn2learn_maml()
    jax_mod, jax_how = (None, "skipped" if args.device == "cpu" else f"skipped on {args.device}") if args.no_jax \
        else jax_available()
    orders = {"2": [False], "1": [True], "both": [False, True]}[args.order]
    report = {"workload": args.workload, "device": args.device, "steps": args.steps, "q_query": args.q_query, "threads": torch.get_num_threads(),
              "cpus": cpus, "torch": torch.__version__, "learn2learn": l2l_how, "jax": jax_how, "malloc": malloc,
              "inductor": inductor,
              "results": {}}
    shape = f", 32 tasks 5-way 1-shot {args.q_query}-query" if args.workload == "omniglot" else ", 25 tasks K=10"
    print(f"# {args.workload}{shape}: meta-iterations/s, {args.steps} inner step(s), {torch.get_num_threads()} torch threads, "
          f"CPUs {cpus}, torch {torch.__version__}; malloc: {malloc}; learn2learn: {l2l_how}; JAX: {jax_how}"
          + (f"; inductor: {inductor}" if inductor else ""))
    for first_order in orders:
        label = "FOMAML" if first_order else "MAML (2nd order)"
        notes: dict[str, dict] = {}
        impls = {"fastmaml vmap": fastmaml_step(make_model, loss_fn, inner_lr, args.steps, first_order, "vmap")}
        if not args.no_compiled:
            variants = {"fastmaml compiled": (True, None)}
            if args.compile_variants:
                variants["fastmaml compiled grad + eager Adam"] = (False, None)
                variants["fastmaml compiled, max-autotune-no-cudagraphs"] = (True, "max-autotune-no-cudagraphs")
            for name, (fuse, mode) in variants.items():
                compiled = fastmaml_compiled_step(make_model, loss_fn, inner_lr, args.steps, first_order, fuse, mode)
                info = {}
                if not fuse:  # its first call compiles the gradient graph; check it against eager on the way
                    t0 = time.perf_counter()
                    info["max_abs_grad_diff_vs_eager"], info["max_abs_grad"] = compiled_grad_diff(
                        make_model, loss_fn, inner_lr, args.steps, first_order, compiled, batches[0])
                    info["compile_s"] = time.perf_counter() - t0
                else:
                    t0 = time.perf_counter()
                    compiled.step(batches[0])
                    info["compile_s"] = time.perf_counter() - t0
                if not compiled.compiled:
                    info["fallback"] = compiled.fallback_reason
                notes[name] = info
                impls[name] = compiled.step
        if args.workload == "omniglot":
            for c in [int(c) for c in args.chunk_sizes.split(",") if c]:
                impls[f"fastmaml vmap, chunks of {c}"] = fastmaml_step(make_model, loss_fn, inner_lr, args.steps, first_order,
                                                                  "vmap", chunk_size=c)
            if args.cpu_options:
                impls["fastmaml vmap + bf16"] = fastmaml_step(make_model, loss_fn, inner_lr, args.steps,
                                                                       first_order, "vmap", bf16=True)
                impls["fastmaml loop + channels-last"] = fastmaml_step(make_model, loss_fn, inner_lr, args.steps,
                                                                       first_order, "loop", channels_last=True)
        if not args.no_loop:
            impls["fastmaml loop"] = fastmaml_step(make_model, loss_fn, inner_lr, args.steps, first_order, "loop")
        if l2l_maml is not None:
            impls["learn2learn"] = learn2learn_step(l2l_maml, make_model, loss_fn, inner_lr, args.steps, first_order)
        jax_rows = []
        if jax_mod is not None:
            for conv in (["xla", "im2col"] if args.workload == "omniglot" else ["xla"]):
                name = "JAX jit(vmap)" + (f", {'XLA conv' if conv == 'xla' else 'im2col-matmul conv'}"
                                          if args.workload == "omniglot" else "")
                impls[name], notes[name] = jax_step(make_model, args.workload, inner_lr, args.steps, first_order,
                                                    batches, conv)
                jax_rows.append(name)
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
        peaks: dict[str, float] = {}
        rates = time_interleaved(impls, batches, args.rounds, args.min_seconds, args.device, peaks)
        for p in parallel:
            p.close()
        med = {k: statistics.median(v) for k, v in rates.items()}
        base = "fastmaml loop" if "fastmaml loop" in med else "fastmaml vmap"
        jax_ref = max(jax_rows, key=lambda k: med[k]) if jax_rows else None
        print(f"\n## {label}\n")
        for name, info in notes.items():
            bits = [f"compile {info['compile_s']:.1f} s"]
            if "max_abs_grad_diff" in info:
                bits.append(f"meta-gradient max |JAX - fastmaml eager| = {info['max_abs_grad_diff']:.2e} "
                            f"(max |g| {info['max_abs_grad']:.2e})")
            if "max_abs_grad_diff_vs_eager" in info:
                bits.append(f"meta-gradient max |compiled - eager| = {info['max_abs_grad_diff_vs_eager']:.2e} "
                            f"(max |g| {info['max_abs_grad']:.2e})")
            if "fallback" in info:
                bits.append(f"FELL BACK TO EAGER: {info['fallback']}")
            print(f"- {name}: " + "; ".join(bits))
        ref_note = f" (× JAX: against {jax_ref})" if jax_ref and len(jax_rows) > 1 else ""
        print(f"\n| implementation | it/s (median) | [min-max] | × {base.split()[-1]} | × learn2learn | × JAX |\n"
              f"|---|---:|---:|---:|---:|---:|")
        for name, r in med.items():
            vs_l2l = f"{r / med['learn2learn']:.2f}" if "learn2learn" in med else "-"
            vs_jax = f"{r / med[jax_ref]:.2f}" if jax_ref else "-"
            print(f"| {name} | {r:.3g} | [{min(rates[name]):.3g}-{max(rates[name]):.3g}] | "
                  f"{r / med[base]:.2f} | {vs_l2l} | {vs_jax} |")
        if ref_note:
            print(ref_note.strip())
        if peaks:
            print("\nPeak allocated memory (MiB, one meta-iteration): "
                  + "; ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
        report["results"][label] = {"median_it_per_s": med, "rounds": rates, "notes": notes, "jax_reference": jax_ref,
                                    "peak_mib": peaks}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
