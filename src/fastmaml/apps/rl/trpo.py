"""The outer step of MAML-RL: TRPO on the post-update surrogate, through the inner step.

    maximise  mean_i  E[π_θ'ᵢ(a|s) / π_old,i(a|s) · A]      with θ'ᵢ = θ − α ∇θ L_inner,i(θ)
    s.t.      mean_i  E[KL(π_old,i ‖ π_θ'ᵢ)] ≤ δ

Direction: conjugate gradient on H x = g, with H the Hessian of the mean KL w.r.t. θ —
*through* the inner step — applied exactly by autograd: the KL's gradient is built once with
``create_graph=True`` per meta-step, and each CG iteration differentiates ``∇KL · v`` again
(Pearlmutter's trick; no finite differences). Step: the largest ``β x`` with ½ β² xᵀHx = δ,
shrunk by a backtracking line search until the surrogate improves *and* the KL — measured,
not predicted — is within δ; otherwise the parameters stay unchanged.

The per-task objective is the engine's (:func:`fastmaml.core.inner_loop.task_loss`, with one set of
rollouts per inner step), vmapped over tasks, so the meta-gradient and the HVPs are second order
exactly as MAML's supervised meta-gradient.
Learned inner step sizes (``maml.step_size``: MAML++'s per layer and step, Meta-SGD's per
element) are meta-parameters like θ: they join θ in TRPO's parameter vector, its natural gradient
and its KL limit, which bounds how far a change of α may move the adapted policies.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.func import vmap

from fastmaml.apps.rl.config import TRPOConfig
from fastmaml.apps.rl.losses import mean_kl, surrogate_loss
from fastmaml.core.inner_loop import Rates, task_loss
from fastmaml.core.maml import MAML, Params
from fastmaml.tasks.batch import TaskBatch


def conjugate_gradient(avp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       tol: float = 1e-10) -> torch.Tensor:
    """Approximate solution of ``A x = b`` for SPD ``A`` given only ``avp(v) = A v`` (x₀ = 0)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        ap = avp(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclass
class LineSearchResult:
    accepted: bool
    fraction: float  # of the full step taken (0 when rejected)
    loss: float
    kl: float
    tries: int


def line_search(evaluate: Callable[[torch.Tensor], tuple[float, float]], theta: torch.Tensor, full_step: torch.Tensor,
                loss_before: float, max_kl: float, ratio: float = 0.8, max_backtracks: int = 15
                ) -> tuple[torch.Tensor, LineSearchResult]:
    """Backtrack ``theta + ratio^k · full_step`` until the loss falls below ``loss_before`` and KL ≤ ``max_kl``.

    ``evaluate(theta) -> (loss, kl)``. Returns the accepted parameters, or ``theta`` unchanged
    when no fraction passes both tests (a step above the KL limit is never taken).
    """
    loss, kl = loss_before, 0.0
    for k in range(max_backtracks):
        frac = ratio ** k
        candidate = theta + frac * full_step
        loss, kl = evaluate(candidate)
        if math.isfinite(loss) and math.isfinite(kl) and loss < loss_before and kl <= max_kl:
            return candidate, LineSearchResult(True, frac, loss, kl, k + 1)
    return theta, LineSearchResult(False, 0.0, loss, kl, max_backtracks)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: torch.Tensor, like: Params) -> Params:
    out, offset = {}, 0
    for name, t in like.items():
        out[name] = vector[offset: offset + t.numel()].view_as(t)
        offset += t.numel()
    return out


def learned_step_sizes(learner: MAML) -> dict[str, torch.Tensor]:
    """The learner's learned inner step sizes by their ``inner_lrs`` key, which TRPO updates with θ (none for a
    fixed α, or without inner steps, where they take no part in the objective or the adaptation)."""
    if learner.inner_steps == 0:
        return {}
    return dict(learner.inner_lrs.items())


def kl_hvp(kl: torch.Tensor, params: list[torch.Tensor], damping: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (∇²KL + damping·I) v``, exact: ∇KL is built once with ``create_graph`` and each call
    differentiates ``∇KL · v`` through that graph (and so through the inner step) again."""
    grad_kl = flat(torch.autograd.grad(kl, params, create_graph=True))

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return flat(torch.autograd.grad(grad_kl @ v, params, retain_graph=True)) + damping * v

    return hvp


@dataclass
class TRPOStep:
    """TRPO on a MAML learner whose model is a Gaussian policy; call it with a meta-batch (a
    :class:`fastmaml.train.loop.MetaStep`, which ``meta_train`` runs in place of Adam).

    ``timings`` accumulates seconds per phase (gradient, hvp/cg, line search) for benchmarks.
    """

    learner: MAML
    cfg: TRPOConfig
    timings: dict[str, float] = field(default_factory=dict)

    def objectives(self, params: Params, batch: TaskBatch, graph: bool, rates: Rates | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean surrogate, mean KL) over tasks, each after the engine's inner step(s) from ``params``.

        ``graph``: keep the second-order graph through the inner step (for gradients and HVPs).
        With ``cfg.all_steps`` both are means over the policies after steps 1..S, step s < S judged on
        the rollouts it sampled (``xs[s]``, the next step's support) and step S on the query set.
        ``rates``: learned step sizes to use instead of the learner's (the line search's candidates).
        """
        learner = self.learner
        steps = learner.inner_steps
        first_order = learner.first_order or not graph
        # MAML++'s multi-step loss with equal weights: the mean over the policies after steps 1..S.
        weights = [1.0 / steps] * steps if self.cfg.all_steps and steps >= 2 else None

        def surrogate_and_kl(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.stack([surrogate_loss(pred, y), mean_kl(pred, y)])

        def task(xs, ys, xq, yq):
            both, _ = task_loss(learner, params, xs, ys, xq, yq, first_order=first_order, step_weights=weights,
                                rollouts_per_step=True, loss_fn=surrogate_and_kl, rates=rates)
            return both

        both = vmap(task)(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        return both[:, 0].mean(), both[:, 1].mean()

    def _tick(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - since
        return now

    def __call__(self, batch: TaskBatch, iteration: int = 0) -> dict[str, float]:
        cfg = self.cfg
        params = self.learner.params()
        rates = learned_step_sizes(self.learner)
        plist = list(params.values()) + list(rates.values())
        like = {**params, **{f"inner_lr:{k}": v for k, v in rates.items()}}  # the layout of TRPO's flat vector
        t = time.perf_counter()
        # One pass through the inner step serves the surrogate's gradient and the KL's (unless the
        # HVPs use a subset of tasks, which then gets its own, smaller graph).
        surr, kl = self.objectives(params, batch, graph=True)
        subsample = cfg.hvp_tasks is not None and cfg.hvp_tasks < batch.num_tasks
        g = flat(torch.autograd.grad(surr, plist, retain_graph=not subsample))
        t = self._tick("gradient", t)
        if subsample:
            _, kl = self.objectives(params, batch.tasks(0, cfg.hvp_tasks), graph=True)
        hvp = kl_hvp(kl, plist, cfg.cg_damping)
        t = self._tick("kl_graph", t)
        direction = conjugate_gradient(hvp, -g, cfg.cg_iters)  # descent direction on the loss
        shs = float(direction @ hvp(direction))
        t = self._tick("cg_hvp", t)
        del hvp
        scale = math.sqrt(2 * cfg.max_kl / (shs + 1e-8)) if shs > 0 else 0.0
        theta = flat(p.detach() for p in plist)
        loss_before = float(surr.detach())

        def evaluate(candidate: torch.Tensor) -> tuple[float, float]:
            values = unflat(candidate, like)
            candidate_rates = {name: values[f"inner_lr:{name}"] for name in rates}
            with torch.no_grad():  # θ and the step sizes are both passed functionally
                s, k = self.objectives({n: values[n] for n in params}, batch, graph=False, rates=candidate_rates)
            return float(s), float(k)

        new_theta, result = line_search(evaluate, theta, scale * direction, loss_before, cfg.max_kl,
                                        cfg.backtrack_ratio, cfg.max_backtracks)
        with torch.no_grad():
            for p, v in zip(plist, unflat(new_theta, like).values()):
                p.copy_(v)
        self._tick("line_search", t)
        return {"loss": result.loss if result.accepted else loss_before, "kl": result.kl if result.accepted else 0.0,
                "step_fraction": result.fraction}
