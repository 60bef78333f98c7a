"""The whole meta-iteration as one compiled graph: ``torch.compile`` of a functional MAML step.

On small models (the sinusoid MLP, a 4-layer conv net on 28×28 images) eager
:meth:`MAML.meta_backward` spends most of its time in Python and in per-op dispatch, not in
arithmetic. :class:`CompiledMetaStep` writes one meta-iteration as a pure function

    grads, loss = grad(θ, α ↦ mean_i L(θ'_i(θ, α); query_i))      (torch.func.grad of a vmap)
    θ, m, v     = Adam(θ, m, v, grads)                              (same formulas as torch.optim.Adam)

where ``L(θ'_i; query_i)`` is :func:`fastmaml.core.inner_loop.task_loss`, the per-task function
:meth:`MAML.forward` runs too (so the algorithm lives in one place), and hands it to ``torch.compile(fullgraph=True)``. The
Adam moments and step counters are the tensors of the ``torch.optim.Adam`` the caller owns,
updated in place, so ``optimizer.state_dict()`` / ``load_state_dict()`` (checkpoints, resume)
work exactly as with the eager loop. The update is skipped inside the graph when the meta-loss
is not finite (the training loop's "nothing is applied before the NaN check").

Two variants (``fuse_optimizer``):

* ``True`` (default): gradient and Adam update in one graph (one call per meta-iteration).
* ``False``: the compiled graph returns the meta-gradient, written to ``.grad``; the caller
  runs its optimizer as usual (any optimizer, gradient clipping, all-reduce in between).

Supported (compiled): ``TaskBatching("vmap")`` (config ``maml.vectorize: vmap``); 1..S inner steps;
second and first order (and MAML++'s derivative-order annealing: one graph per order); fixed inner
learning rate and learned ones (``per_layer_step``, ``per_element``: the rates are graph inputs too);
``inner_params`` (ANIL); MAML++'s multi-step loss (its weights are a graph input, so the annealing
does not recompile); models without per-step BatchNorm (``BatchStatNorm``/plain layers).
The fused Adam needs ``torch.optim.Adam`` with one parameter group, ``weight_decay=0``,
``amsgrad=False``, ``maximize=False``; otherwise the gradient-only variant is used.
A ``TaskBatching`` chunk size smaller than the batch: the gradient-only variant, one compiled call per chunk.

Falls back to eager (``learner.meta_backward`` + ``optimizer.step()``; a warning, once, or with
``on_fallback`` one call of it: ``train.compile=auto`` logs one line) for:
``TaskBatching("loop")``, per-step BatchNorm (``per_step_bn``: running statistics are recorded by
in-place buffer updates), ``recompute_inner_steps`` (a memory-bounded schedule the compiled
graph would undo), mixed precision (``train.precision`` resolving to bf16: autocast inside
``torch.func.grad`` under ``torch.compile`` is not verified, and inductor's float32 second-order
conv gradient is already off, see below), and any model or op ``torch.compile`` fails on (the error is in the warning).

Where it pays (2 CPU cores, loaded machine, 1 thread, ratios within one interleaved run;
``benchmarks/bench_maml.py``): the sinusoid MLP 5.4× eager for MAML (946 vs 176 it/s), 6.0× for FOMAML,
0.5–0.6× a hand-written ``jax.jit(vmap)`` MAML at 1 thread (0.71× / 0.76× with inductor's C++ wrapper, which
the first call of each graph now uses on a CPU: 1.11–1.12× the Python wrapper's speed); at 2 threads 5.5× / 7.3× eager and
1.11× / 1.17× JAX (1,947 vs 1,754 it/s; 3,210 vs 2,750). With narrow batched matmuls turned round
(:mod:`fastmaml.core.bmm_orientation`), second order 1.19–1.33× and first order 1.04–1.28× JAX in three runs at 2
threads on a quiet AVX2 EPYC (0.79× at 1 thread, 0.65× without the pass). Compiling the gradient alone and leaving
``torch.optim.Adam`` eager gives only 2.2× (the eager per-tensor Adam costs as much as the compiled
gradient), ``mode="max-autotune-no-cudagraphs"`` is no faster than the default. Finn's Omniglot conv
net: 1.02× eager (the time is in the convolutions, already library kernels), after ~35–80 s of compiling.

Numerics: the sinusoid MLP's compiled meta-gradient equals eager's to 6e-8 (float32); so do
FOMAML's on the conv net. The conv net's *second-order* float32 meta-gradient under inductor differs
from eager's by up to ~2% of its largest element (8.7e-3 on 0.48; eager float32 is within 1e-6 of
float64); in float64 inductor is exact (3e-15), and with ``backend="aot_eager_decomp_partition"`` (the
same decompositions, no inductor codegen) float32 is exact, with inductor's pattern matcher off or scalar
(``cpp.simdlen=1``) code it is not: something in inductor's float32 lowering of this graph, not found yet.
So for second-order conv nets keep eager (``train.compile=false``, the default).

Shapes are static (``dynamic=False``): one compile per configuration and task-batch shape; a
different batch shape (e.g. a smaller last shard) compiles once more, never every call. With
``dynamic_shots=True`` the points-per-task dimension (dim 1 of the support and query tensors) is
symbolic instead: one graph serves every K, so the sinusoid experiment's three MAML networks (K = 5,
10, 20) compile once, and inductor's on-disk FX graph cache (``TORCHINDUCTOR_CACHE_DIR``, by default
under the system temp folder) serves later processes with any K too. Why it matters: on 2 CPU cores
nearly all of a ~25-35 s compile is gcc building inductor's ~14 C++ kernels (Dynamo tracing ~5 s, no
graph breaks, no recompiles within a network); a new shape means building them all again.
``mode``: ``None`` (inductor default), ``"max-autotune-no-cudagraphs"``, or on CUDA
``"reduce-overhead"`` (CUDA graphs; parameters and optimizer state are marked as static
addresses). On a CPU inductor needs a C++ compiler; without one the first call falls back.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import warnings
from typing import Any, Callable

import torch
from torch.func import grad_and_value, vmap

from fastmaml.core.batch import TaskBatch
from fastmaml.core.bmm_orientation import BmmOrientationPass
from fastmaml.core.bmm_orientation import available as bmm_pass_available
from fastmaml.core.inner_loop import meta_backward_in_chunks, task_loss
from fastmaml.core.maml import MAML, MetaOutput


#: torch.compile backend when none is given ("inductor"; tests trace with "aot_eager", which skips C++ compilation)
DEFAULT_BACKEND = "inductor"


class CompileFallbackWarning(UserWarning):
    """The compiled meta-step is not used for this learner (the reason is in the message); eager runs instead."""


def compiler_unavailable(device: str | torch.device = "cpu", backend: str | None = None) -> str | None:
    """Why ``torch.compile`` cannot be tried here at all (``None``: it can): an old torch, or on a CPU no C++
    compiler for inductor. Checked up front so that ``train.compile=auto`` falls back without a failed attempt."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (needs torch >= 2.0)"
    if (backend or DEFAULT_BACKEND) == "inductor" and torch.device(device).type == "cpu":
        candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in candidates):
            return "no C++ compiler found (inductor builds C++ kernels on a CPU; install g++ or set CXX)"
    return None


def unsupported_reason(learner: MAML) -> str | None:
    """Why ``learner`` cannot use the compiled step (``None``: it can)."""
    if learner.batching.mode != "vmap":
        return (f"task batching mode {learner.batching.mode!r} (maml.vectorize; the compiled step vectorizes "
                "tasks with vmap)")
    if learner.step_norms:
        return "per-step BatchNorm (per_step_bn records running statistics by in-place buffer updates)"
    if getattr(learner, "recompute_inner_steps", False):
        return "recompute_inner_steps (a memory-bounded eager schedule)"
    if not learner.precision.compiles:
        return (f"precision {learner.precision.name} (the compiled meta-iteration is float32 only; "
                "mixed precision runs eager)")
    return None


def _adam_fusable(optimizer: torch.optim.Optimizer | None) -> str | None:
    if optimizer is None:
        return "no optimizer"
    if type(optimizer) is not torch.optim.Adam:
        return f"{type(optimizer).__name__} is not torch.optim.Adam"
    if len(optimizer.param_groups) != 1:
        return "more than one parameter group"
    g = optimizer.param_groups[0]
    if g.get("weight_decay", 0) or g.get("amsgrad") or g.get("maximize") or g.get("differentiable"):
        return "weight_decay / amsgrad / maximize / differentiable Adam"
    if isinstance(g["betas"][0], torch.Tensor) or isinstance(g["betas"][1], torch.Tensor):
        return "tensor betas"
    return None


class CompiledMetaStep:
    """One compiled meta-iteration for ``learner`` (and, fused, its ``torch.optim.Adam``).

    Args:
        learner: the :class:`MAML` to train (its parameters are updated in place).
        optimizer: the outer optimizer over ``learner.parameters()``; its state is used and kept.
        fuse_optimizer: put the Adam update in the same graph (see module docstring).
        mode: ``torch.compile`` mode (``None``, ``"max-autotune-no-cudagraphs"``, ``"reduce-overhead"``).
        grad_clip: clamp each meta-gradient element to ``[-c, c]`` before the update (fused variant).
        backend: ``torch.compile`` backend (default :data:`DEFAULT_BACKEND`; ``"aot_eager"`` for debugging).
        compile: ``False`` runs the same functional step without ``torch.compile`` (for tests).
        dynamic_shots: one graph for every number of points per task (see module docstring).
        log: receives one line per compiled graph: its first call's wall time (compilation included).
        on_fallback: receives the reason, once, when the step falls back to eager (default: a
            :class:`CompileFallbackWarning`).
        cpp_wrapper: compile with inductor's C++ wrapper (``None``: on a CPU with inductor; it falls back to the
            Python wrapper where it fails).
        bmm_orientation: on a CPU with inductor, compute narrow batched matmuls transposed where that times faster
            (:mod:`fastmaml.core.bmm_orientation`).

    Call :meth:`step` (gradient + update; the optimizer is not needed by the caller) or
    :meth:`backward` (gradient into ``.grad`` only, like ``MAML.meta_backward``).
    """

    def __init__(
        self,
        learner: MAML,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        fuse_optimizer: bool = True,
        mode: str | None = None,
        grad_clip: float | None = None,
        backend: str | None = None,
        compile: bool = True,
        dynamic_shots: bool = False,
        log: Callable[[str], None] | None = None,
        on_fallback: Callable[[str], None] | None = None,
        cpp_wrapper: bool | None = None,
        bmm_orientation: bool = True,
    ) -> None:
        self.learner, self.optimizer = learner, optimizer
        self.mode, self.backend, self.compile = mode, backend or DEFAULT_BACKEND, compile
        self.dynamic_shots, self.log, self.on_fallback = dynamic_shots, log, on_fallback
        self.compile_seconds = 0.0  # first calls of each graph (compilation included), summed
        self._timed: set[tuple] = set()
        self.grad_clip = float(grad_clip) if grad_clip else None
        self.fallback_reason = unsupported_reason(learner)
        self.fuse_reason = _adam_fusable(optimizer) if fuse_optimizer else "fuse_optimizer=False"
        self._fns: dict[tuple, Callable] = {}
        self._warned = False
        names = list(learner.params())
        self._names = names
        self._lr_keys = list(learner.inner_lrs.keys())
        self._tensors = [learner.params()[n] for n in names] + [learner.inner_lrs[k] for k in self._lr_keys]
        # inductor's C++ wrapper on a CPU (see _first_call); None: wherever inductor compiles for a CPU
        on_cpu_inductor = compile and self.backend == "inductor" and self._tensors[0].device.type == "cpu"
        self.cpp_wrapper = on_cpu_inductor if cpp_wrapper is None else bool(cpp_wrapper)
        # narrow batched matmuls turned round where the CPU's kernel runs them faster (bmm_orientation)
        self.bmm_pass = BmmOrientationPass() if on_cpu_inductor and bmm_orientation and bmm_pass_available() else None

    # ------------------------------------------------------------------ state
    @property
    def compiled(self) -> bool:
        """Whether calls run the compiled graph (False once it has fallen back to eager)."""
        return self.fallback_reason is None

    @property
    def fused(self) -> bool:
        return self.compiled and self.fuse_reason is None

    def _warn(self, reason: str) -> None:
        if self._warned:
            return
        self._warned = True
        if self.on_fallback is not None:
            self.on_fallback(reason)
        else:
            warnings.warn(f"fastmaml: compiled meta-step not used ({reason}); running eager MAML.meta_backward",
                          CompileFallbackWarning, stacklevel=3)

    # ------------------------------------------------------------------ the functional step
    def _meta_loss_fn(self, first_order: bool, multi_step: bool) -> Callable:
        learner, names, lr_keys = self.learner, self._names, self._lr_keys
        n_params = len(names)

        def one_task(params, lrs, weights, xs, ys, xq, yq):
            # The learned rates are graph inputs like θ (`rates`); `weights` is MAML++'s multi-step loss.
            return task_loss(learner, params, xs, ys, xq, yq, first_order=first_order,
                             step_weights=weights if multi_step else None, rates=lrs)

        def meta_loss(tensors, weights, sx, sy, qx, qy, scale):
            params = dict(zip(names, tensors[:n_params]))
            lrs = dict(zip(lr_keys, tensors[n_params:]))
            losses, preds = vmap(one_task, in_dims=(None, None, None, 0, 0, 0, 0))(params, lrs, weights, sx, sy, qx, qy)
            return losses.sum() * scale, (losses, preds)

        return grad_and_value(meta_loss, has_aux=True)

    def _grad_fn(self, first_order: bool, multi_step: bool) -> Callable:
        meta_grad = self._meta_loss_fn(first_order, multi_step)

        def fn(tensors, weights, sx, sy, qx, qy, scale):
            grads, (_, (losses, preds)) = meta_grad(list(tensors), weights, sx, sy, qx, qy, scale)
            return grads, losses, preds

        return fn

    def _step_fn(self, first_order: bool, multi_step: bool) -> Callable:
        meta_grad = self._meta_loss_fn(first_order, multi_step)
        beta1, beta2 = (float(b) for b in self.optimizer.param_groups[0]["betas"])
        eps, clip = float(self.optimizer.param_groups[0]["eps"]), self.grad_clip

        def fn(tensors, exp_avgs, exp_avg_sqs, step_ts, lr, weights, sx, sy, qx, qy, scale):
            grads, (_, (losses, preds)) = meta_grad([t.detach() for t in tensors], weights, sx, sy, qx, qy, scale)
            loss = losses.mean()
            ok = torch.isfinite(loss)  # nothing is applied when the meta-loss is not finite
            with torch.no_grad():
                for p, g, m, v, t in zip(tensors, grads, exp_avgs, exp_avg_sqs, step_ts):
                    if clip is not None:
                        g = g.clamp(-clip, clip)
                    t_new = t + 1
                    m_new = m.lerp(g, 1 - beta1)
                    v_new = v * beta2 + (1 - beta2) * g * g
                    # torch.optim.Adam (single tensor / foreach, not capturable) in double precision scalars
                    step = t_new.to(torch.float64)
                    bc1 = 1 - torch.pow(beta1, step)
                    bc2_sqrt = torch.sqrt(1 - torch.pow(beta2, step))
                    denom = (v_new.sqrt() / bc2_sqrt.to(v_new.dtype)) + eps
                    p_new = p - (lr / bc1).to(p.dtype) * m_new / denom
                    p.copy_(torch.where(ok, p_new, p))
                    m.copy_(torch.where(ok, m_new, m))
                    v.copy_(torch.where(ok, v_new, v))
                    t.copy_(torch.where(ok, t_new, t))
            return loss, losses, preds

        return fn

    def _get(self, kind: str, first_order: bool, multi_step: bool) -> Callable:
        key = (kind, first_order, multi_step)
        if key not in self._fns:
            fn = (self._step_fn if kind == "step" else self._grad_fn)(first_order, multi_step)
            if self.compile:
                # dynamic=None (not True): only the dimension _mark_shots marks is symbolic, the rest stays static.
                fn = torch.compile(fn, fullgraph=True, dynamic=None if self.dynamic_shots else False,
                                   mode=self.mode, backend=self.backend)
            self._fns[key] = fn
        return self._fns[key]

    def _mark_shots(self, batch: TaskBatch) -> None:
        if self.dynamic_shots and self.compile:
            for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y):
                if t.dim() > 1:
                    torch._dynamo.maybe_mark_dynamic(t, 1)  # "maybe": no error where a graph needs it static

    def _call(self, key: tuple, fn: Callable, *args: Any) -> Any:
        """``fn(*args)``; the first call of each graph is timed and logged (that is when it compiles)."""
        if key in self._timed:
            return fn(*args)
        t0 = time.perf_counter()
        out = self._first_call(fn, args)
        seconds = time.perf_counter() - t0
        self._timed.add(key)
        self.compile_seconds += seconds
        if self.log is not None and self.compile:
            shots = ", any K" if self.dynamic_shots else ""
            self.log(f"compiled meta-iteration ({key[0]}{shots}, {self.backend}): first call {seconds:.1f} s "
                     "(compiling, or reusing a graph compiled before)")
        return out

    def _first_call(self, fn: Callable, args: tuple) -> Any:
        """The call that compiles ``fn``: on a CPU, with inductor's C++ wrapper (the kernels called from generated
        C++ instead of Python: 1.11-1.12x the meta-iterations per second on the sinusoid MLP, second and first order,
        and no slower to compile; ``benchmarks/bench_maml.py``; where that fails, the Python wrapper, as before) and
        with :class:`~fastmaml.core.bmm_orientation.BmmOrientationPass` (narrow batched matmuls computed
        transposed where that times faster)."""
        import torch._inductor.config as inductor_config

        passes = {}
        if self.bmm_pass is not None and inductor_config.post_grad_custom_post_pass is None:  # a user's own wins
            passes["post_grad_custom_post_pass"] = self.bmm_pass
        if not self.cpp_wrapper:
            with inductor_config.patch(passes):
                return fn(*args)
        try:
            with inductor_config.patch(cpp_wrapper=True, **passes):
                return fn(*args)
        except Exception as e:  # noqa: BLE001 - the compile with the Python wrapper below is the fallback
            self.cpp_wrapper = False
            if self.log is not None:
                self.log(f"compiled meta-iteration: inductor's C++ wrapper failed ({type(e).__name__}); compiling "
                         "with its Python wrapper")
            with inductor_config.patch(passes):
                return fn(*args)

    def _schedule(self) -> tuple[bool, bool, torch.Tensor]:
        learner = self.learner
        first_order, weights = learner.training_schedule()
        multi_step = weights is not None
        device, dtype = self._tensors[0].device, self._tensors[0].dtype
        w = torch.zeros(max(learner.inner_steps, 1), device=device, dtype=dtype) if weights is None else weights.to(
            device=device, dtype=dtype)
        return first_order, multi_step, w

    def _adam_state(self) -> tuple[list, list, list]:
        opt = self.optimizer
        group = opt.param_groups[0]
        by_id = {id(p) for p in group["params"]}
        if any(id(t) not in by_id for t in self._tensors):
            raise ValueError("the optimizer does not hold every trainable parameter of the learner")
        ms, vs, ts = [], [], []
        for p in self._tensors:
            st = opt.state[p]
            if not st:  # as torch.optim.Adam initializes it on the first step (not capturable, not fused)
                st["step"] = torch.tensor(0.0, dtype=torch.float32)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            ms.append(st["exp_avg"])
            vs.append(st["exp_avg_sq"])
            ts.append(st["step"])
        if self.mode == "reduce-overhead":
            for t in [*self._tensors, *ms, *vs, *ts]:
                torch._dynamo.mark_static_address(t)
        return ms, vs, ts

    # ------------------------------------------------------------------ public API
    def backward(self, batch: TaskBatch) -> MetaOutput:
        """The meta-gradient of the mean query loss into ``.grad`` (like :meth:`MAML.meta_backward`)."""
        if not self.compiled:
            self._warn(self.fallback_reason)
            return self.learner.meta_backward(batch)
        batch.validate()
        first_order, multi_step, w = self._schedule()
        key = ("grad", first_order, multi_step)
        chunks_done = 0

        def backward_chunk(chunk: TaskBatch, total: int) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal chunks_done
            self._mark_shots(chunk)
            fn = self._get(*key)  # in the try below: torch.compile itself may raise (e.g. an unsupported Python)
            grads, task_losses, pred = self._call(key, fn, self._tensors, w, chunk.support_x, chunk.support_y,
                                                  chunk.query_x, chunk.query_y, 1.0 / total)
            for p, g in zip(self._tensors, grads):
                if p.grad is None:
                    p.grad = g.detach().clone() if chunks_done else g.detach()
                else:
                    p.grad.add_(g)
            chunks_done += 1
            return task_losses.detach(), pred.detach()

        try:
            task_losses, preds = meta_backward_in_chunks(batch, self.learner.batching.chunk_size, backward_chunk)
        except Exception as e:  # noqa: BLE001 - any compile failure: eager from now on
            if chunks_done:  # a later chunk failed (a new shape): the earlier chunks' gradients are already in .grad
                raise
            self._fail(e)
            return self.learner.meta_backward(batch)
        return MetaOutput(loss=task_losses.mean(), task_losses=task_losses, query_pred=preds)

    def step(self, batch: TaskBatch, lr: float | None = None) -> MetaOutput:
        """One meta-iteration: meta-gradient and Adam update (``lr``: this iteration's outer rate;
        default the optimizer's). Applies nothing when the meta-loss is not finite."""
        opt = self.optimizer
        if opt is None:
            raise ValueError("CompiledMetaStep.step needs the optimizer")
        if lr is not None:
            for g in opt.param_groups:
                g["lr"] = lr
        if not self.fused:
            opt.zero_grad(set_to_none=True)
            out = self.backward(batch)
            if math.isfinite(float(out.loss)):
                if self.grad_clip:
                    torch.nn.utils.clip_grad_value_(self.learner.parameters(), self.grad_clip)
                opt.step()
            return out
        batch.validate()
        first_order, multi_step, w = self._schedule()
        ms, vs, ts = self._adam_state()
        lr_t = torch.tensor(float(opt.param_groups[0]["lr"]), dtype=torch.float64, device=ts[0].device)
        key = ("step", first_order, multi_step)
        self._mark_shots(batch)
        try:
            fn = self._get(*key)  # inside the try: torch.compile itself may raise (e.g. an unsupported Python)
            loss, losses, preds = self._call(key, fn, self._tensors, ms, vs, ts, lr_t, w, batch.support_x,
                                             batch.support_y, batch.query_x, batch.query_y, 1.0 / batch.num_tasks)
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return self.step(batch)
        return MetaOutput(loss=loss.detach(), task_losses=losses.detach(), query_pred=preds.detach())

    def _fail(self, e: BaseException) -> None:
        self.fallback_reason = f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self._warn(self.fallback_reason)
        self._fns.clear()


def compile_counters() -> dict[str, Any]:
    """``torch._dynamo`` counters of interest: frames compiled, recompiles, graph breaks."""
    from torch._dynamo.utils import counters

    return {"frames_ok": int(counters["frames"]["ok"]), "frames_total": int(counters["frames"]["total"]),
            "recompiles": int(sum(counters["recompiles"].values())) if "recompiles" in counters else 0,
            "graph_breaks": int(sum(counters["graph_break"].values()))}
