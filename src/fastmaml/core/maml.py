"""MAML and its first-order variant, for any ``nn.Module`` and differentiable loss.

The algorithm (Finn, Abbeel & Levine, ICML 2017); the inner loop itself, shared with the compiled,
recomputing and TRPO paths, is :func:`fastmaml.core.inner_loop.task_loss`:

    inner loop   θ'ᵢ = θ − α ∇θ L(θ; support_i)        repeated S times
    outer loop   θ  ← θ − β ∇θ Σᵢ L(θ'ᵢ; query_i)       (done by any torch optimizer)

Parameters are plain dicts of tensors and the model is evaluated with
``torch.func.functional_call``; the inner gradient is ``torch.func.grad``. The
meta-gradient is ordinary autograd through those inner steps (second order), or
through ``θ' = θ − α·stop_grad(g)`` (first order, FOMAML, where ∂θ'/∂θ = I so
the meta-gradient is the query gradient at θ'). The task batch is processed by
``torch.func.vmap`` over the task dimension, or by a Python loop over tasks for
models vmap cannot handle; both run the same per-task function (:class:`TaskBatching`).

Relatives built on the same inner loop:
* learned inner learning rates, one per parameter tensor and step (MAML++ "LSLR",
  Antoniou et al. 2019) or one per parameter element (Meta-SGD, Li et al. 2017);
* adapting only some parameters in the inner loop (``inner_params``; e.g. the
  head only, as ANIL, Raghu et al. 2020);
* MAML++'s multi-step loss (the query loss after every inner step, weights annealed
  towards the last step) and derivative-order annealing (first order for the first
  iterations, then second order); both follow the training iteration given by
  :meth:`MAML.set_iteration`, which the training loop calls;
* MAML++'s per-step BatchNorm (weights and running statistics per inner step,
  :class:`~fastmaml.core.batchnorm.PerStepBatchNorm`): every call of the model says how
  many inner steps its parameters have taken.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Mapping, Union

import torch
from torch import nn
from torch.func import grad_and_value, vmap

from fastmaml.core.batchnorm import PerStepBatchNorm, convert_batchnorm
from fastmaml.core.inner_loop import (LossFn, Params, Rates, adapt, call_model, inner_step, meta_backward_in_chunks,
                                     over_tasks, task_loss)
from fastmaml.core.precision import FP32, Precision
from fastmaml.core.recompute import meta_backward_recompute
from fastmaml.core.step_size import Fixed, StepSizeRule, from_config, from_legacy
from fastmaml.errors import ConfigError, DataError
from fastmaml.core.batch import TaskBatch, TaskBatching

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: a step-size rule (core/step_size.py: Fixed, PerLayerStep, PerElement or your own), or a float: Fixed(α)
InnerLR = Union[float, StepSizeRule]
BNStats = Literal["batch", "running"]


@dataclass
class MetaOutput:
    """Result of one meta-batch: ``loss`` is differentiable w.r.t. the meta-parameters."""

    loss: torch.Tensor  # mean query loss over tasks, scalar
    task_losses: torch.Tensor  # [T], detached
    query_pred: torch.Tensor  # [T, n_query, ...] model outputs after adaptation, detached


@dataclass
class AdaptationCurve:
    """Query loss, predictions and metrics after 0, 1, ..., S inner steps, per task."""

    losses: torch.Tensor  # [T, S + 1]
    predictions: torch.Tensor  # [T, S + 1, n_query, ...]
    metrics: dict[str, torch.Tensor]  # name -> [T, S + 1]


@dataclass(frozen=True)
class MAMLPlusPlus:
    """MAML++'s training schedules and per-step BatchNorm (Antoniou et al. 2019; its learned per-layer,
    per-step step sizes are the step-size rule :class:`~fastmaml.core.step_size.PerLayerStep`).

    Args:
        multi_step_loss_iterations: the multi-step loss: for this many training iterations
            the meta-loss is Σ_s w_s L(θ_s; query) over inner steps s = 1..S, the weights
            starting equal and annealed linearly towards the last step (see
            :func:`multi_step_weights`); afterwards the last step's loss only. 0: off.
        first_order_iterations: derivative-order annealing: first order for this many
            training iterations, then second order (unless MAML's ``first_order``). 0: off.
        per_step_bn: BNWB + BNRS: each BatchNorm gets one row of weight, bias and
            running statistics per number of inner steps taken (0..S; more test-time steps
            reuse row S). Those weights are meta-learned but, as in MAML++, not adapted in the
            inner loop unless named in ``inner_params``. Running statistics are recorded on
            the first task of every meta-batch (of every chunk, with a :class:`TaskBatching` chunk size)
            (support set at step s, query set at step S).
        bn_eval_stats: with ``per_step_bn``, what BatchNorm normalizes with when adapting and
            evaluating without a meta-gradient (:meth:`MAML.adaptation_curve`, :meth:`MAML.adapt`,
            :meth:`MAML.predict`): ``"batch"`` (the MAML paper's protocol, transductive) or
            ``"running"`` (the step's running statistics; each test example is classified
            independently of the other queries).
    """

    multi_step_loss_iterations: int = 0
    first_order_iterations: int = 0
    per_step_bn: bool = False
    bn_eval_stats: BNStats = "batch"

    def __post_init__(self) -> None:
        if self.multi_step_loss_iterations < 0 or self.first_order_iterations < 0:
            raise ConfigError("multi_step_loss_iterations and first_order_iterations must be >= 0 (0: off)")
        if self.bn_eval_stats not in ("batch", "running"):
            raise ConfigError(f"unknown bn_eval_stats {self.bn_eval_stats!r}: use 'batch' or 'running'")
        if self.bn_eval_stats == "running" and not self.per_step_bn:
            raise ConfigError("bn_eval_stats='running' needs per_step_bn=True (only per-step BatchNorm keeps running statistics)")


@dataclass(frozen=True)
class Recompute:
    """Memory-bounded second order in :meth:`MAML.meta_backward`: instead of keeping every inner step's
    activations for the backward pass, run the inner loop without a graph (keeping only some steps'
    parameters), then walk the steps backwards, rebuilding one step's graph at a time and
    backpropagating through it (:mod:`fastmaml.core.recompute`). Peak activation memory is one inner
    step's instead of ``inner_steps``'; the meta-gradient is the same; costs the graph-free inner loop
    (and a partial second one for the parameters not kept). Used only when the step is second order;
    :meth:`MAML.forward` is unchanged.

    Args:
        keep_every: keep the parameters after every k-th inner step and recompute the others when
            the backward walk needs them (1: keep all, fastest). ``None``: the smallest k that keeps
            fewest alive at once (1 up to 3 steps, 2 up to 10, about √(2S) beyond;
            :func:`fastmaml.core.recompute.keep_every`).
    """

    keep_every: int | None = None

    def __post_init__(self) -> None:
        if self.keep_every is not None and self.keep_every < 1:
            raise ConfigError(f"recompute keep_every must be a positive number of steps or None, got {self.keep_every}")


class MAML(nn.Module):
    """Model-Agnostic Meta-Learning around ``model``.

    Args:
        model: any ``nn.Module``. BatchNorm layers are switched (in place) to
            batch-statistics normalization (:func:`convert_batchnorm`), as in the paper,
            or to per-step BatchNorm with ``MAMLPlusPlus(per_step_bn=True)``.
        loss_fn: ``loss_fn(prediction, target) -> scalar``, e.g. ``F.cross_entropy``.
        inner_lr: the inner step-size rule (:mod:`fastmaml.core.step_size`): a float α is
            ``Fixed(α)``; ``Fixed(α, later=0.5)`` takes α/2 after the first step (the original MAML-RL
            test script); ``PerLayerStep(α)`` (MAML++ LSLR: a learned α per parameter tensor and
            step); ``PerElement(α)`` (Meta-SGD: a learned α per element); or any object with the
            rule's ``init``/``rate`` methods. Learned step sizes live in :attr:`inner_lrs`.
        inner_steps: inner gradient steps during meta-training.
        first_order: FOMAML: ignore second derivatives in the meta-gradient.
        inner_params: names of the parameters adapted in the inner loop (default: all).
            The others are still meta-learned but stay fixed within a task.
        batching: how tasks go through the engine (:class:`~fastmaml.core.batch.TaskBatching`):
            ``TaskBatching("vmap")`` (default: all tasks in one vectorized call) or ``TaskBatching("loop")``
            (one by one, for models vmap cannot handle), and ``chunk_size`` tasks per pass
            (``None``: all at once; :meth:`meta_backward` frees each chunk's graph before the next).
        mamlpp: MAML++'s multi-step loss, derivative-order annealing and per-step BatchNorm
            (:class:`MAMLPlusPlus`); ``None``: none of them.
        recompute: memory-bounded second order (:class:`Recompute`); ``None``: every inner step's
            activations are kept for the backward pass.
        precision: where the model's matmuls and convolutions run (:mod:`fastmaml.core.precision`):
            :data:`~fastmaml.core.precision.FP32` (default) or ``BF16`` (autocast; master weights,
            losses, inner steps and BatchNorm stay float32). The training loop sets it from ``train.precision``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inner_lr: InnerLR = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        inner_params: Iterable[str] | None = None,
        batching: TaskBatching | None = None,
        mamlpp: MAMLPlusPlus | None = None,
        recompute: Recompute | None = None,
        precision: Precision = FP32,
    ) -> None:
        super().__init__()
        if isinstance(inner_lr, (int, float)) and not isinstance(inner_lr, bool):
            inner_lr = Fixed(float(inner_lr))
        if not isinstance(inner_lr, StepSizeRule):
            raise ConfigError(f"inner_lr must be a number or a step-size rule (Fixed, PerLayerStep, PerElement, or an "
                              f"object with init(params, steps) and rate(learned, name, step)), got {inner_lr!r}")
        mamlpp = mamlpp or MAMLPlusPlus()
        if inner_steps < 0:
            raise ConfigError(f"inner_steps must be >= 0, got {inner_steps}")
        batching = TaskBatching() if batching is None else batching
        if not isinstance(batching, TaskBatching):
            raise ConfigError(f"batching must be a TaskBatching, e.g. TaskBatching('loop') or "
                              f"TaskBatching('vmap', chunk_size=4), got {batching!r}")
        self.mamlpp, self.recompute = mamlpp, recompute
        self.model = convert_batchnorm(model, per_step=inner_steps + 1 if mamlpp.per_step_bn else None)
        self.step_norms = [m for m in self.model.modules() if isinstance(m, PerStepBatchNorm)]
        self.bn_eval_stats = mamlpp.bn_eval_stats
        self.loss_fn = loss_fn
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.inner_lr = inner_lr
        self.batching = batching
        self.multi_step_loss_iterations = mamlpp.multi_step_loss_iterations
        self.first_order_iterations = mamlpp.first_order_iterations
        self.recompute_inner_steps = recompute is not None
        self.recompute_keep_every = None if recompute is None else recompute.keep_every
        self.iteration = 0  # the training iteration the schedules above follow (set_iteration)
        self.precision = precision

        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        names = list(trainable)
        if inner_params is None:
            # MAML++: per-step BatchNorm weights are meta-learned only (a row is used at one step).
            per_step = {f"{mn}.{pn}" for mn, m in self.model.named_modules() if isinstance(m, PerStepBatchNorm)
                        for pn, _ in m.named_parameters(recurse=False)}
            self.inner_names = [n for n in names if n not in per_step]
        else:
            self.inner_names = list(inner_params)
            unknown = sorted(set(self.inner_names) - set(names))
            if unknown:
                raise ConfigError(f"inner_params {unknown} are not trainable parameters of the model; choose from {names}")

        # The rule's learned step sizes, meta-learned with θ (empty for a fixed α). ParameterDict keys
        # may not contain '.', so 'layer.weight' is stored as 'layer__weight'.
        self.inner_lrs = nn.ParameterDict()
        for name, rate in inner_lr.init({n: trainable[n] for n in self.inner_names}, inner_steps).items():
            self.inner_lrs[_key(name)] = nn.Parameter(rate)

    # ------------------------------------------------------------------ functional pieces
    def params(self) -> Params:
        """The model's trainable parameters as a dict (the meta-learned initialization θ)."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    @contextmanager
    def _norm_mode(self, record: bool = False, use_running_stats: bool = False) -> Iterator[None]:
        for norm in self.step_norms:
            norm.record, norm.use_running_stats = record, use_running_stats
        try:
            yield
        finally:
            for norm in self.step_norms:
                norm.record = norm.use_running_stats = False

    def _eval_norms(self):
        """Context for passes without a meta-gradient: BatchNorm as ``bn_eval_stats`` says."""
        return self._norm_mode(use_running_stats=self.bn_eval_stats == "running")

    def record_running_stats(self, batch: TaskBatch) -> None:
        """Fold the first task's per-step batch statistics into the per-step running statistics.

        Eager and outside ``vmap``/``grad`` (in-place buffer updates are not allowed there). The
        parameter values equal the meta-training pass's, so the statistics are the ones it saw.
        """
        xs, ys, xq = batch.support_x[0], batch.support_y[0], batch.query_x[0]
        params = {k: v.detach() for k, v in self.params().items()}
        with torch.no_grad():
            for step in range(self.inner_steps):
                with self._norm_mode(record=True):
                    call_model(self, params, xs, step)
                params = self.inner_step(params, xs, ys, step, first_order=True)
            with self._norm_mode(record=True):
                call_model(self, params, xq, self.inner_steps)

    def step_size(self, name: str, step: int, rates: Rates | None = None) -> torch.Tensor | float:
        """α of parameter ``name`` at inner step ``step`` by the :attr:`inner_lr` rule; ``rates`` (by
        :attr:`inner_lrs` key) replaces the learned step sizes (compiled graphs, TRPO's line search)."""
        return self.inner_lr.rate(_ByParameterName(self.inner_lrs if rates is None else rates), name, step)

    def inner_step(self, params: Params, x: torch.Tensor, y: torch.Tensor, step: int, first_order: bool) -> Params:
        """θ after inner step number ``step`` (0-based) on one task's ``(x, y)``; vmap it over tasks.

        ``first_order``: the inner gradient is a constant for autograd (FOMAML, or no meta-gradient wanted).
        (:func:`fastmaml.core.inner_loop.inner_step`.)
        """
        return inner_step(self, params, x, y, step, first_order)

    def adapt_params(
        self, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool | None = None
    ) -> Params:
        """θ' after ``steps`` inner steps on one task's support set (no task dimension)."""
        first_order = self.first_order if first_order is None else first_order
        return adapt(self, params, x, y, steps, first_order)

    def set_iteration(self, iteration: int) -> None:
        """Where training stands, for the multi-step-loss and derivative-order schedules."""
        self.iteration = int(iteration)

    def training_schedule(self) -> tuple[bool, torch.Tensor | None]:
        """(first order?, multi-step loss weights or None) of the current training iteration.

        MAML++'s derivative-order annealing and multi-step loss follow :meth:`set_iteration`; every
        meta-gradient path (eager, compiled, recomputing) asks here.
        """
        first_order = self.first_order or self.iteration < self.first_order_iterations
        if self.iteration >= self.multi_step_loss_iterations or self.inner_steps < 2:
            return first_order, None
        return first_order, multi_step_weights(self.inner_steps, self.iteration / self.multi_step_loss_iterations)

    def safe_inner_step(self, params: Params, x: torch.Tensor, y: torch.Tensor, step: int, backtracks: int) -> Params:
        """An inner step that never raises the support loss (test time only, no meta-gradient).

        Tries the step with α, α/2, …, α/2^backtracks and takes the first whose support loss is
        not above the current one; if none is (or the loss is not finite), the parameters stay.
        The paper's plain step can blow up on a task far from the meta-training distribution
        (a sinusoid of large amplitude after many steps); this cannot, and it is the plain step
        wherever the plain step helps. Works under ``vmap``: the choice is a per-task ``where``.
        """
        inner = {n: params[n] for n in self.inner_names}

        def support_loss(adapted: Params, row: int) -> torch.Tensor:
            return self.loss_fn(call_model(self, {**params, **adapted}, x, row), y)

        grads, current = grad_and_value(lambda a: support_loss(a, step))(inner)
        chosen, new, scale = torch.zeros((), dtype=torch.bool, device=current.device), dict(inner), 1.0
        for _ in range(backtracks + 1):
            candidate = {n: inner[n] - scale * self.step_size(n, step) * grads[n] for n in inner}
            take = (support_loss(candidate, step + 1) <= current) & ~chosen
            new = {n: torch.where(take, candidate[n], new[n]) for n in inner}
            chosen, scale = chosen | take, scale * 0.5
        return {**params, **new}

    def _task_curve(self, params: Params, xs, ys, xq, yq, steps: int, backtracks: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        losses, preds = [], []
        for step in range(steps + 1):
            pred = call_model(self, params, xq, step)
            losses.append(self.loss_fn(pred, yq))
            preds.append(pred)
            if step < steps:
                if backtracks is None:
                    params = self.inner_step(params, xs, ys, step, first_order=True)
                else:
                    params = self.safe_inner_step(params, xs, ys, step, backtracks)
        return torch.stack(losses), torch.stack(preds)

    def _over_tasks(self, fn: Callable, params: Params, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        return over_tasks(fn, self.batching.mode, params, False, args, self.batching.chunk_size)

    # ------------------------------------------------------------------ public API
    def forward(self, batch: TaskBatch) -> MetaOutput:
        """Meta-loss of a task batch: adapt to each support set, evaluate on its query set."""
        batch.validate()
        first_order, step_weights = self.training_schedule()

        def one_task(params: Params, xs, ys, xq, yq) -> tuple[torch.Tensor, torch.Tensor]:
            return task_loss(self, params, xs, ys, xq, yq, first_order=first_order, step_weights=step_weights)

        task_losses, preds = self._over_tasks(one_task, self.params(), batch)
        if self.step_norms and self.training:
            self.record_running_stats(batch)
        loss = task_losses.mean()
        return MetaOutput(loss=loss, task_losses=task_losses.detach(), query_pred=preds.detach())

    def meta_backward(self, batch: TaskBatch) -> MetaOutput:
        """``self(batch).loss.backward()``, done :attr:`TaskBatching.chunk_size` tasks at a time.

        The meta-gradient of the mean query loss accumulates into the parameters' ``.grad``
        exactly as from one backward pass, but each chunk's graph (every activation of its
        inner and outer passes) is freed before the next chunk starts: peak memory follows
        the chunk, not the meta-batch, and on a CPU the activations stay in cache. The
        training loop uses this. Returns the batch's :class:`MetaOutput` with a detached loss.
        With ``recompute_inner_steps`` a second-order step also frees each inner step's
        activations: they are recomputed step by step in the backward pass.
        """
        batch.validate()
        if self.recompute_inner_steps and self.inner_steps > 0 and not self.training_schedule()[0]:
            losses, preds = meta_backward_recompute(self, batch)
            return MetaOutput(loss=losses.mean(), task_losses=losses, query_pred=preds)

        def backward_chunk(chunk: TaskBatch, total: int) -> tuple[torch.Tensor, torch.Tensor]:
            out = self(chunk)
            (out.loss * (out.task_losses.shape[0] / total)).backward()  # chunk's share of the mean
            return out.task_losses, out.query_pred

        losses, preds = meta_backward_in_chunks(batch, self.batching.chunk_size, backward_chunk)
        return MetaOutput(loss=losses.mean(), task_losses=losses, query_pred=preds)

    def adaptation_curve(
        self,
        batch: TaskBatch,
        steps: int | None = None,
        metrics: Mapping[str, MetricFn] | None = None,
        params: Params | None = None,
        safe_backtracks: int | None = None,
    ) -> AdaptationCurve:
        """Query loss (and metrics) after 0..``steps`` inner steps for each task; no meta-gradient.

        ``params`` overrides the initialization, so baselines (a pretrained network,
        a random one) are fine-tuned by exactly the same inner loop. ``safe_backtracks=k``
        adapts with :meth:`safe_inner_step` (steps that never raise the support loss) instead of
        the paper's plain steps (``None``, the default).
        """
        batch.validate()
        steps = self.inner_steps if steps is None else steps
        params = {k: v.detach() for k, v in (params or self.params()).items()}
        with torch.no_grad(), self._eval_norms():
            if safe_backtracks is not None and safe_backtracks < 0:
                raise ConfigError(f"safe_backtracks must be >= 0 (or None for plain steps), got {safe_backtracks}")
            losses, preds = self._over_tasks(
                lambda p, xs, ys, xq, yq: self._task_curve(p, xs, ys, xq, yq, steps, safe_backtracks), params, batch)
            values = {}
            for name, fn in (metrics or {}).items():
                y = batch.query_y.unsqueeze(1).expand(-1, steps + 1, *batch.query_y.shape[1:])
                values[name] = vmap(vmap(fn))(preds, y)
        return AdaptationCurve(losses=losses, predictions=preds, metrics=values)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """Adapted parameters θ' for one task (tensors without a task dimension)."""
        if support_x.shape[0] == 0:
            raise DataError("the support set is empty: give at least one labelled example to adapt to")
        if support_x.shape[0] != support_y.shape[0]:
            raise DataError(
                f"support set has {support_x.shape[0]} inputs but {support_y.shape[0]} targets; they must match"
            )
        steps = self.inner_steps if steps is None else steps
        params = {k: v.detach() for k, v in self.params().items()}
        with torch.no_grad(), self._eval_norms():
            return self.adapt_params(params, support_x, support_y, steps, first_order=True)

    def with_inner_lr(self, lr: float) -> "MAML":
        """The same network (shared parameters) adapted by plain gradient descent with step size ``lr``.

        How baselines are fine-tuned: a pretrained or random network through the very same inner loop.
        """
        return MAML(self.model, self.loss_fn, inner_lr=lr, inner_steps=1, batching=self.batching,
                    precision=self.precision, mamlpp=MAMLPlusPlus(per_step_bn=bool(self.step_norms), bn_eval_stats=self.bn_eval_stats))

    def predict(self, params: Params, x: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """The model's output on ``x`` with the given parameters, adapted by ``step`` inner steps
        (default: ``inner_steps``; it only matters with per-step BatchNorm)."""
        with torch.no_grad(), self._eval_norms():
            return call_model(self, params, x, self.inner_steps if step is None else step)


def _key(name: str) -> str:
    return name.replace(".", "__")


class _ByParameterName(Mapping):
    """The learned step sizes stored by :attr:`MAML.inner_lrs` key, looked up by parameter name (as rules see them)."""

    def __init__(self, by_key: Mapping[str, torch.Tensor]) -> None:
        self.by_key = by_key

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.by_key[_key(name)]

    def __iter__(self) -> Iterator[str]:
        return (key.replace("__", ".") for key in self.by_key)

    def __len__(self) -> int:
        return len(self.by_key)


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of correct argmax predictions (a metric for :meth:`MAML.adaptation_curve`)."""
    return (logits.argmax(dim=-1) == target).float().mean()


def multi_step_weights(steps: int, progress: float, floor: float = 0.03) -> torch.Tensor:
    """MAML++ multi-step loss weights of the query losses after inner steps 1..``steps``.

    At ``progress`` 0 every step weighs 1/S; as progress goes to 1 the weights of steps
    1..S-1 fall linearly to ``floor``/S and the last step takes the rest, so the weights
    always sum to 1 and end on (nearly) the plain MAML loss.
    """
    progress = min(max(float(progress), 0.0), 1.0)
    early = max(1.0 / steps - progress * (1.0 - floor) / steps, floor / steps)
    w = torch.full((steps,), early)
    w[-1] = 1.0 - early * (steps - 1)
    return w


@dataclass
class MAMLConfig:
    """The meta-learner's settings, as they appear in experiment configs."""

    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_inner_steps: int = 10
    first_order: bool = False
    # The inner step-size rule with α = inner_lr (core/step_size.py): fixed, fixed(later=0.5) (α, then α/2),
    # per_layer_step (MAML++ LSLR), per_element (Meta-SGD).
    step_size: str = "fixed"
    vectorize: str = "vmap"  # how tasks are batched (TaskBatching.mode): "vmap" or "loop"
    chunk_size: int | None = None  # tasks per pass (TaskBatching.chunk_size); None: all at once
    # Parameters adapted in the inner loop (None: all). ANIL (Raghu et al. 2020): the head only.
    inner_params: list[str] | None = None
    multi_step_loss_iterations: int = 0  # MAML++ multi-step loss, annealed over this many iterations (0: off)
    first_order_iterations: int = 0  # MAML++ derivative-order annealing: first order this long (0: off)
    per_step_bn: bool = False  # MAML++ per-step BatchNorm weights and running statistics (BNWB + BNRS)
    bn_eval_stats: str = "batch"  # with per_step_bn: normalize adaptation/evaluation with "batch" or "running" stats
    recompute_inner_steps: bool = False  # second order with one inner step's activations in memory (recomputed)
    recompute_keep_every: int | None = None  # with recompute: keep every k-th step's parameters (None: automatic)

    # Keys of configs written before maml.step_size (presets, committed runs' config.json); read by
    # fastmaml.config and mapped to step_size by upgrade_config.
    LEGACY_KEYS = ("inner_lr_mode", "later_step_scale")

    @classmethod
    def upgrade_config(cls, data: dict) -> dict:
        """``data`` with the legacy keys ``inner_lr_mode`` / ``later_step_scale`` turned into ``step_size``."""
        if not any(k in data for k in cls.LEGACY_KEYS):
            return data
        data = dict(data)
        mode, later = data.pop("inner_lr_mode", None), data.pop("later_step_scale", None)
        if mode is not None or later not in (None, 1.0):  # else the old keys said nothing beyond step_size's default
            data["step_size"] = from_legacy(mode or data.get("step_size"), later)
        return data

    def step_size_rule(self) -> StepSizeRule:
        return from_config(self.step_size, self.inner_lr)

    def build(self, model: nn.Module, loss_fn: LossFn, inner_params: Iterable[str] | None = None) -> MAML:
        inner_params = self.inner_params if inner_params is None else inner_params
        return MAML(
            model,
            loss_fn,
            inner_lr=self.step_size_rule(),
            inner_steps=self.inner_steps,
            first_order=self.first_order,
            inner_params=inner_params,
            batching=TaskBatching(self.vectorize, self.chunk_size),  # type: ignore[arg-type]
            mamlpp=MAMLPlusPlus(self.multi_step_loss_iterations, self.first_order_iterations, self.per_step_bn,
                                self.bn_eval_stats),  # type: ignore[arg-type]
            recompute=Recompute(self.recompute_keep_every) if self.recompute_inner_steps else None,
        )
