"""MAML's inner loop, written once: adapt to a task's support set, then its query loss.

Every meta-gradient in the library goes through :func:`task_loss` (or, where the steps must be
taken one at a time, its two pieces :func:`inner_step` and :func:`query_loss`):

* :meth:`MAML.forward <fastmaml.core.maml.MAML.forward>` (eager, vmapped or looped over tasks);
* the compiled meta-iteration (:mod:`fastmaml.core.compiled`);
* the recomputing second-order path (:mod:`fastmaml.core.recompute`), step by step;
* meta-RL's TRPO (:mod:`fastmaml.apps.rl.trpo`), whose support set is one set of rollouts per step: it walks
  :func:`adapted_steps` (the walk :func:`task_loss` sums over) for the policy outputs its Hessian products need.

The functions take one task (no task dimension) and are vmapped over tasks by the caller
(:func:`over_tasks`). They read the learner only through :class:`InnerLoopLearner`, so this module
imports nothing from :mod:`fastmaml.core.maml` (which imports it).
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fastmaml.core.batch import TaskBatch
from fastmaml.core.batchnorm import PerStepBatchNorm
from fastmaml.core.precision import Precision

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: the learned inner step sizes by their key in :attr:`MAML.inner_lrs` (empty for a fixed α)
Rates = Mapping[str, torch.Tensor]


class InnerLoopLearner(Protocol):
    """What the inner loop reads from its learner (:class:`fastmaml.core.maml.MAML` is one)."""

    model: nn.Module
    loss_fn: LossFn
    inner_names: list[str]  # the parameters adapted in the inner loop
    inner_steps: int  # inner steps during meta-training
    step_norms: list[PerStepBatchNorm]  # the model's per-step BatchNorm layers (empty without)
    precision: Precision  # where the model's matmuls and convolutions run (core/precision.py)

    def step_size(self, name: str, step: int, rates: Rates | None = None) -> torch.Tensor | float:
        """α of parameter ``name`` at inner step ``step``; ``rates`` replaces the learned rates."""
        ...


def call_model(learner: InnerLoopLearner, params: Params, x: torch.Tensor, step: int) -> torch.Tensor:
    """The model's output on ``x`` with parameters ``params`` that have taken ``step`` inner steps.

    ``step`` selects the per-step BatchNorm rows (MAML++); without per-step BatchNorm it changes nothing.
    The one place the model runs: under the learner's precision (:mod:`fastmaml.core.precision`; bf16
    matmuls and convolutions, float32 outputs), so every path (second and first order, vmap or loop,
    recomputed steps, evaluation) takes it.
    """
    for norm in learner.step_norms:
        norm.step = step
    # Frozen parameters and buffers come from the module; trainable ones from `params`.
    with learner.precision.compute(x.device.type):
        out = functional_call(learner.model, params, (x,), strict=False)
    return learner.precision.output(out)


def inner_step(learner: InnerLoopLearner, params: Params, x: torch.Tensor, y: torch.Tensor, step: int,
               first_order: bool, rates: Rates | None = None) -> Params:
    """θ after inner step number ``step`` (0-based) on one task's support set ``(x, y)``.

    ``first_order``: the inner gradient is a constant for autograd (FOMAML, or no meta-gradient wanted).
    ``rates``: learned step sizes given as function inputs (compiled graphs, TRPO's line search)
    instead of the learner's own.
    """
    inner = {n: params[n] for n in learner.inner_names}

    def support_loss(adapted: Params) -> torch.Tensor:
        return learner.loss_fn(call_model(learner, {**params, **adapted}, x, step), y)

    if first_order:
        # Outside autograd's view: the inner gradient is a constant, so ∂θ'/∂θ = I (FOMAML).
        with torch.no_grad():
            grads = grad(support_loss)(inner)
    else:
        grads = grad(support_loss)(inner)
    new = dict(params)
    for n, g in grads.items():
        new[n] = params[n] - learner.step_size(n, step, rates) * g
    return new


def adapt(learner: InnerLoopLearner, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int,
          first_order: bool, *, rollouts_per_step: bool = False, rates: Rates | None = None) -> Params:
    """θ' after ``steps`` inner steps on one task's support set (``rollouts_per_step``: see :func:`task_loss`)."""
    for step in range(steps):
        x, y = (support_x[step], support_y[step]) if rollouts_per_step else (support_x, support_y)
        params = inner_step(learner, params, x, y, step, first_order, rates)
    return params


def query_loss(learner: InnerLoopLearner, params: Params, x: torch.Tensor, y: torch.Tensor, step: int,
               loss_fn: LossFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, prediction) on ``(x, y)`` of parameters that have taken ``step`` inner steps."""
    pred = call_model(learner, params, x, step)
    return (loss_fn or learner.loss_fn)(pred, y), pred


def task_loss(
    learner: InnerLoopLearner,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    *,
    first_order: bool,
    step_weights: torch.Tensor | Sequence[float] | None = None,
    steps: int | None = None,
    rollouts_per_step: bool = False,
    loss_fn: LossFn | None = None,
    rates: Rates | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's meta-loss: ``steps`` inner steps from ``params`` on the support set, then the query loss.

    Returns (loss, the query predictions after the last step).

    Args:
        first_order: FOMAML (no second derivatives through the inner steps).
        step_weights: MAML++'s multi-step loss: Σ_s w_s · query loss after step s (s = 1..S)
            instead of the last step's loss alone (``None``).
        steps: inner steps (default ``learner.inner_steps``).
        rollouts_per_step: meta-RL: ``support_x[s], support_y[s]`` are step s's own support set (the
            rollouts of the policy after s steps), and with ``step_weights`` the policy after step
            s < S is judged on the rollouts it sampled, ``support_x[s]`` for step s + 1.
        loss_fn: the query loss (default ``learner.loss_fn``; TRPO: surrogate and KL stacked).
        rates: learned step sizes as function inputs (see :func:`inner_step`).
    """
    steps = learner.inner_steps if steps is None else steps

    if step_weights is None:
        adapted = adapt(learner, params, support_x, support_y, steps, first_order,
                        rollouts_per_step=rollouts_per_step, rates=rates)
        return query_loss(learner, adapted, query_x, query_y, steps, loss_fn)

    loss = 0.0
    for step, adapted, x, y in adapted_steps(learner, params, support_x, support_y, query_x, query_y, steps,
                                             first_order, rollouts_per_step=rollouts_per_step, rates=rates):
        step_loss, pred = query_loss(learner, adapted, x, y, step, loss_fn)
        loss = loss + step_weights[step - 1] * step_loss
    return loss, pred


def adapted_steps(learner: InnerLoopLearner, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                  query_x: torch.Tensor, query_y: torch.Tensor, steps: int, first_order: bool, *,
                  rollouts_per_step: bool = False, rates: Rates | None = None
                  ) -> Iterator[tuple[int, Params, torch.Tensor, torch.Tensor]]:
    """After each inner step s = 1..``steps``: (s, the parameters after it, the inputs and targets it is judged on).

    Those are the query set, or with ``rollouts_per_step`` (meta-RL), for s < ``steps``, the rollouts the policy
    after s steps sampled (``support_x[s]``, the next step's support set). MAML++'s multi-step loss
    (:func:`task_loss`) and TRPO's surrogate and KL over every step (``fastmaml.apps.rl.trpo``) walk it.
    """
    def support(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (support_x[step], support_y[step]) if rollouts_per_step else (support_x, support_y)

    for step in range(steps):
        params = inner_step(learner, params, *support(step), step, first_order, rates)
        x, y = support(step + 1) if rollouts_per_step and step + 1 < steps else (query_x, query_y)
        yield step + 1, params, x, y


def meta_backward_in_chunks(batch: TaskBatch, chunk_size: int | None,
                            backward_chunk: Callable[[TaskBatch, int], tuple[torch.Tensor, torch.Tensor]]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The meta-backward of a batch, ``chunk_size`` tasks at a time (``None``: all at once).

    ``backward_chunk(chunk, total)`` backpropagates the chunk's share of the batch's mean query loss
    (its tasks' losses summed, divided by ``total``, the batch's number of tasks) into ``.grad`` and
    returns the chunk's (detached per-task losses, query predictions). Each chunk's graph is freed
    before the next one is built, so peak memory follows the chunk, not the batch. Returns the per-task
    losses and predictions of the whole batch. Used by the eager, compiled and recomputing paths.
    """
    total = batch.num_tasks
    size = chunk_size or total
    losses, preds = [], []
    for start in range(0, total, size):
        chunk_losses, chunk_preds = backward_chunk(batch.tasks(start, start + size), total)
        losses.append(chunk_losses)
        preds.append(chunk_preds)
    return torch.cat(losses), torch.cat(preds)


def over_tasks(fn: Callable, vectorize: str, params, batched: bool, task_args: Sequence[torch.Tensor],
               chunk_size: int | None = None) -> tuple:
    """``fn(params_i, *task_args_i)`` for every task, each output stacked along a new task dimension.

    ``vectorize``: ``"vmap"`` (one vectorized call; ``chunk_size`` tasks at a time) or ``"loop"`` (a
    Python loop, for models vmap cannot handle). ``batched``: ``params`` (a dict of tensors) has a task
    dimension too, else every task starts from the same parameters. Outputs may be tensors or dicts of them.
    """
    if vectorize == "vmap":
        in_dims = (0 if batched else None,) + (0,) * len(task_args)
        return vmap(fn, in_dims=in_dims, chunk_size=chunk_size)(params, *task_args)
    outs = [fn({n: t[i] for n, t in params.items()} if batched else params, *(a[i] for a in task_args))
            for i in range(task_args[0].shape[0])]
    return tuple({n: torch.stack([o[j][n] for o in outs]) for n in outs[0][j]} if isinstance(outs[0][j], dict)
                 else torch.stack([o[j] for o in outs]) for j in range(len(outs[0])))
