"""Second-order MAML with memory that does not grow with the number of inner steps.

Plain reverse mode through S inner steps keeps every step's activations (each step's
support forward pass and the backward graph of its inner gradient) until the meta-backward
pass: memory grows with S. Here the inner loop is differentiated one step at a time:

1. run the inner loop without a graph, θ₀ → θ₁ → … → θ_S (the same values as the
   second-order pass), keeping only the parameters after every k-th step
   (:func:`keep_every`); the others are recomputed, a segment at a time, when the backward
   walk reaches them. Parameters are not always small next to one step's activations
   (Finn's Omniglot net on a 1-shot support set: 0.4 MB per task against 0.7 MB of
   activations), so keeping all S of them would make memory grow with S again;
2. backpropagate the query loss at θ_S (θ_S a fresh leaf) into θ_S and, directly, into the
   meta-parameters that enter the network without being adapted (per-step BatchNorm rows,
   the body under ANIL);
3. walk the steps backwards: rebuild step s, θ_s ↦ θ_{s+1}, with a graph (θ_s a fresh leaf;
   the non-adapted parameters and learned inner learning rates are the module's own) and
   backpropagate θ_{s+1}'s gradient through it; the step's graph is freed as its backward
   pass runs, before step s - 1 is rebuilt. θ₀ is the module's parameters themselves, so the
   last backward pass lands in their ``.grad``;
4. with MAML++'s multi-step loss, w_s L_query(θ_s) is backpropagated at θ_s as well.

This is ordinary autograd, one step's graph at a time, with the tasks vectorized inside each
step exactly as in the stored pass (``vmap``, or a loop): the meta-gradient is the same
numbers up to rounding. Peak memory: one inner step's graph (or the query pass's, whichever
is larger) plus O(√S) parameter copies. Compute: the graph-free inner loop plus the
recomputed segments, about S + S·(1 - 1/k) first-order steps on top of the stored pass.
"""

from __future__ import annotations

from typing import Protocol

import torch

from fastmaml.core.batch import TaskBatch, TaskBatching
from fastmaml.core.inner_loop import (InnerLoopLearner, Params, inner_step, meta_backward_in_chunks, over_tasks,
                                     query_loss)


class RecomputeLearner(InnerLoopLearner, Protocol):
    """What the recomputing backward reads from its learner beyond the inner loop's needs
    (:class:`fastmaml.core.maml.MAML` is one; a protocol, so this module need not import maml.py, which imports it)."""

    batching: TaskBatching
    recompute_keep_every: int | None
    training: bool

    def params(self) -> Params: ...

    def training_schedule(self) -> tuple[bool, torch.Tensor | None]: ...

    def record_running_stats(self, batch: TaskBatch) -> None: ...


def _live_peak(steps: int, every: int) -> int:
    """Most parameter copies alive at once (θ₀, the module's own, not counted) when θ_s is kept for
    every s divisible by ``every`` and the others are recomputed segment by segment on the way back."""
    live = {s for s in range(1, steps) if s % every == 0}
    peak = len(live)
    for s in range(steps, 0, -1):
        if s - 1 not in live and s > 1:
            live |= set(range((s - 1) // every * every + 1, s))
            peak = max(peak, len(live))
        live.discard(s)
    return peak


def keep_every(steps: int) -> int:
    """The default spacing of kept inner-step parameters: the smallest with the fewest alive at once.

    1 (keep all) up to 3 steps; 2 for 4..10 steps (10 steps: 5 alive instead of 9); about √(2S) beyond.
    """
    return min(range(1, max(steps, 1) + 1), key=lambda k: (_live_peak(steps, k), k))


def meta_backward_recompute(maml: RecomputeLearner, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`MAML.meta_backward` (second order) with each inner step recomputed in the backward pass.

    Accumulates the meta-gradient of the batch's mean query loss into ``.grad`` of the model's
    trainable parameters and of :attr:`MAML.inner_lrs`, chunk by chunk, as
    ``self(batch).loss.backward()`` would (up to rounding), and records per-step BatchNorm
    running statistics once per chunk as :meth:`MAML.forward` does. Returns (per-task query losses, query predictions).
    """
    steps, names = maml.inner_steps, list(maml.inner_names)
    every = maml.recompute_keep_every or keep_every(steps)
    _, weights = maml.training_schedule()  # second order here (MAML.meta_backward checks)
    params = maml.params()  # the meta-parameters themselves: backward passes accumulate into their .grad
    theta0 = {n: params[n] for n in names}
    tasks = _TaskSteps(maml, params, names)

    def backward_chunk(chunk: TaskBatch, total: int) -> tuple[torch.Tensor, torch.Tensor]:
        args = (chunk.support_x, chunk.support_y, chunk.query_x, chunk.query_y)

        # 1. Forward without a graph, keeping θ_s for s divisible by `every` (θ₀: the parameters).
        kept: dict[int, Params] = {0: theta0}
        theta = theta0
        for step in range(steps):
            theta = tasks.values(theta, step > 0, step, args)
            if step + 1 < steps and (step + 1) % every == 0:
                kept[step + 1] = theta

        # 2. The query loss at θ_S, its chunk's share of the batch mean (times w_S with the multi-step loss).
        top = _leaf(theta)
        del theta
        losses, pred = tasks.query(top, steps, args)
        w = 1.0 if weights is None else weights[steps - 1]
        (losses.sum() * w / total).backward()
        chunk_losses, cotangent = w * losses.detach(), {n: top[n].grad for n in names}
        del top, losses

        # 3-4. Backwards through the steps, one rebuilt step's graph at a time.
        for s in range(steps, 0, -1):
            if s - 1 not in kept:  # recompute the segment below s from the nearest kept parameters
                base = (s - 1) // every * every
                theta = kept[base]
                for step in range(base, s - 1):
                    theta = tasks.values(theta, step > 0, step, args)
                    kept[step + 1] = theta
                del theta
            below = kept[s - 1] if s == 1 else _leaf(kept[s - 1])
            new = tasks.step(below, s > 1, s - 1, args)
            torch.autograd.backward([new[n] for n in names], [cotangent[n] for n in names])
            del new, cotangent
            kept.pop(s, None)
            if s > 1:
                if weights is not None:  # MAML++ multi-step loss: the query loss after step s - 1
                    losses, _ = tasks.query(below, s - 1, args)
                    w = weights[s - 2]
                    (losses.sum() * w / total).backward()
                    chunk_losses = chunk_losses + w * losses.detach()
                    del losses
                cotangent = {n: below[n].grad for n in names}
            del below

        if maml.step_norms and maml.training:
            maml.record_running_stats(chunk)
        return chunk_losses, pred.detach()

    return meta_backward_in_chunks(batch, maml.batching.chunk_size, backward_chunk)


class _TaskSteps:
    """The per-task pieces of the recomputing backward, run over a chunk's tasks: inner step s (second
    order) and the query loss after s steps, as functions of the adapted parameters θ_s alone (the
    others are ``params``, the module's own), with the tasks vectorized inside each step exactly as
    in the stored pass (:meth:`MAML.forward`: ``vmap`` or a loop), the whole chunk at once.
    ``batched``: θ_s has a task dimension (every step but the first, which starts from θ₀)."""

    def __init__(self, maml: RecomputeLearner, params: Params, names: list[str]) -> None:
        self.maml, self.params, self.names = maml, params, names

    def step(self, theta: Params, batched: bool, step: int, args: tuple) -> Params:
        """θ_{s+1} of every task from θ_s = ``theta`` (s = ``step``), with the step's graph."""
        maml, params, names = self.maml, self.params, self.names

        def fn(theta, xs, ys, xq, yq):
            new = inner_step(maml, {**params, **theta}, xs, ys, step, first_order=False)
            return ({n: new[n] for n in names},)
        return over_tasks(fn, maml.batching.mode, theta, batched, args)[0]

    def values(self, theta: Params, batched: bool, step: int, args: tuple) -> Params:
        """:meth:`step`'s values without its graph."""
        with torch.no_grad():
            return self.step(theta, batched, step, args)

    def query(self, theta: Params, step: int, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Every task's (query loss, query prediction) at its θ after ``step`` inner steps (``theta``, batched)."""
        maml, params = self.maml, self.params

        def fn(theta, xs, ys, xq, yq):
            return query_loss(maml, {**params, **theta}, xq, yq, step)
        return over_tasks(fn, maml.batching.mode, theta, True, args)


def _leaf(theta: Params) -> Params:
    """``theta``'s values as fresh leaves that collect their gradient in ``.grad``."""
    return {n: t.detach().requires_grad_() for n, t in theta.items()}
