"""The outer step of MAML-RL: TRPO on the post-update surrogate, through the inner step.

    maximise  mean_i  E[π_θ'ᵢ(a|s) / π_old,i(a|s) · A]      with θ'ᵢ = θ − α ∇θ L_inner,i(θ)
    s.t.      mean_i  E[KL(π_old,i ‖ π_θ'ᵢ)] ≤ δ

Direction: conjugate gradient on H x = g, with H the Hessian of the mean KL w.r.t. θ —
*through* the inner step — applied exactly by autograd, no finite differences. At the sampling
policy (where TRPO always evaluates it) the KL is at its minimum in the policy's outputs f, so
∇_f KL = 0 and the Hessian is exactly its Gauss-Newton form H = Jᵀ M J (J = ∂f/∂θ through the
inner step, M = ∇²_f KL): each CG iteration is one product with J and one with Jᵀ
(:func:`gauss_newton_hvp`), about half the work of differentiating ``∇KL · v`` again
(:func:`kl_hvp`, Pearlmutter's trick, kept as the reference). Step: the largest ``β x`` with ½ β² xᵀHx = δ,
shrunk by a backtracking line search until the surrogate improves *and* the KL — measured,
not predicted — is within δ; otherwise the parameters stay unchanged.

The per-task objective is built from the engine's pieces (:func:`fastmaml.core.inner_loop.inner_step` and
``call_model``, as :func:`~fastmaml.core.inner_loop.task_loss` with one set of rollouts per inner step), vmapped
over tasks, so the meta-gradient and the HVPs are second order exactly as MAML's supervised meta-gradient.
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
from fastmaml.core.inner_loop import Rates, adapted_steps, call_model
from fastmaml.core.maml import MAML, Params
from fastmaml.tasks.batch import TaskBatch


def conjugate_gradient(avp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       tol: float = 1e-10) -> torch.Tensor:
    """Approximate solution of ``A x = b`` for SPD ``A`` given only ``avp(v) = A v`` (x₀ = 0)."""
    return conjugate_gradient_with_product(avp, b, iters, tol)[0]


def conjugate_gradient_with_product(avp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                                    tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`conjugate_gradient`'s ``x`` and ``A x``.

    ``A x`` is accumulated from the products CG computes anyway (``A`` is linear, so
    ``A Σ αₖ pₖ = Σ αₖ A pₖ``): TRPO's step length needs ``xᵀ A x`` without one more product.
    """
    x = torch.zeros_like(b)
    ax = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        ap = avp(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        ax = ax + alpha * ap
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, ax


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


Outputs = list[torch.Tensor]  # the policy outputs the KL is measured on, one [T, n, 2A] tensor per judged step


def gauss_newton_hvp(outputs: Outputs, kl_of: Callable[[Outputs], torch.Tensor], params: list[torch.Tensor],
                     damping: float = 0.0, cotangents: Outputs | None = None
                     ) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor | None]:
    """``v -> (Jᵀ M J + damping·I) v``: J = ∂outputs/∂params (through the inner step), M = ∇²KL in outputs.

    This is the KL's exact Hessian wherever ∇_outputs KL = 0, i.e. at the policy that sampled the
    rollouts (the term Σ ∂KL/∂f · ∇²f vanishes), which is where TRPO takes it; :func:`kl_hvp` is the
    general form. Why: ``J v`` and ``Jᵀ u`` each cost about one backward pass through the inner step,
    while differentiating ``∇KL · v`` costs about two.

    ``J v`` comes from the backward graph of ``Jᵀ w``, built once with ``create_graph`` for a zero probe
    ``w`` (linear in ``w``, so differentiating it w.r.t. ``w`` gives ``J v`` for any ``v``). That graph
    can carry a gradient as well: with ``cotangents`` (∂loss/∂outputs) the second value returned is
    ``Jᵀ cotangents`` (the loss's gradient, flat), from the same backward pass; else ``None``.
    """
    # M: the KL's Hessian in the outputs only (elementwise per step, cheap); its graph is kept for all v.
    points = [o.detach().requires_grad_(True) for o in outputs]
    kl_grad = torch.autograd.grad(kl_of(points), points, create_graph=True)
    probes = [torch.zeros_like(o, requires_grad=True) for o in outputs]
    seeds = probes if cotangents is None else [w + c for w, c in zip(probes, cotangents)]
    jt_probe = flat(torch.autograd.grad(outputs, params, seeds, create_graph=True))
    gradient = None if cotangents is None else jt_probe.detach()

    def hvp(v: torch.Tensor) -> torch.Tensor:
        jv = torch.autograd.grad(jt_probe, probes, v, retain_graph=True)
        mjv = torch.autograd.grad(kl_grad, points, jv, retain_graph=True)
        return flat(torch.autograd.grad(outputs, params, mjv, retain_graph=True)) + damping * v

    return hvp, gradient


@dataclass
class TRPOStep:
    """TRPO on a MAML learner whose model is a Gaussian policy; call it with a meta-batch (a
    :class:`fastmaml.train.loop.MetaStep`, which ``meta_train`` runs in place of Adam).

    ``timings`` accumulates seconds per phase (gradient, hvp/cg, line search) for benchmarks.
    """

    learner: MAML
    cfg: TRPOConfig
    timings: dict[str, float] = field(default_factory=dict)
    # The HVPs by differentiating ∇KL·v again (:func:`kl_hvp`) and one more product for xᵀHx: the
    # slower reference the Gauss-Newton products are tested and benchmarked against.
    exact_hvp: bool = False

    def judged_steps(self) -> list[int]:
        """The inner steps (1..S; 0 without inner steps) whose policies the surrogate and KL judge."""
        steps = self.learner.inner_steps
        # MAML++'s multi-step loss with equal weights: the mean over the policies after steps 1..S.
        return list(range(1, steps + 1)) if self.cfg.all_steps and steps >= 2 else [steps]

    def outputs(self, params: Params, batch: TaskBatch, graph: bool, rates: Rates | None = None
                ) -> tuple[Outputs, Outputs]:
        """(policy outputs ``[T, n, 2A]``, their targets) of every judged step, after the engine's inner steps.

        The policy after step s < S is judged on the rollouts it sampled (``support_x[:, s]``, the next
        step's support), step S on the query set. ``graph``/``rates``: see :meth:`objectives`.
        """
        learner, judged = self.learner, self.judged_steps()
        steps = learner.inner_steps
        first_order = learner.first_order or not graph

        def task(xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if not steps:
                return call_model(learner, params, xq, 0), yq
            walk = adapted_steps(learner, params, xs, ys, xq, yq, steps, first_order, rollouts_per_step=True,
                                rates=rates)
            pairs = [(call_model(learner, p, x, s), y) for s, p, x, y in walk if s in judged]
            return tuple(t for pair in pairs for t in pair)

        both = vmap(task)(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        return list(both[0::2]), list(both[1::2])

    def weighted(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], outputs: Outputs,
                 targets: Outputs) -> torch.Tensor:
        """Mean over tasks of ``loss_fn`` on the judged steps' outputs (their mean with ``cfg.all_steps``)."""
        weight = 1.0 / len(outputs)
        total = 0.0
        for pred, y in zip(outputs, targets):
            total = total + weight * vmap(loss_fn)(pred, y)
        return total.mean()  # type: ignore[union-attr]

    def objectives(self, params: Params, batch: TaskBatch, graph: bool, rates: Rates | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean surrogate, mean KL) over tasks, each after the engine's inner step(s) from ``params``.

        ``graph``: keep the second-order graph through the inner step (for gradients and HVPs).
        With ``cfg.all_steps`` both are means over the policies after steps 1..S, step s < S judged on
        the rollouts it sampled (``xs[s]``, the next step's support) and step S on the query set.
        ``rates``: learned step sizes to use instead of the learner's (the line search's candidates).
        """
        outputs, targets = self.outputs(params, batch, graph, rates)
        return self.weighted(surrogate_loss, outputs, targets), self.weighted(mean_kl, outputs, targets)

    def _tick(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - since
        return now

    def _direction(self, batch: TaskBatch, params: Params, plist: list[torch.Tensor], t: float
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(surrogate, CG's descent direction x, xᵀHx) with Gauss-Newton HVPs (:func:`gauss_newton_hvp`)."""
        cfg = self.cfg
        outputs, targets = self.outputs(params, batch, graph=True)
        surr = self.weighted(surrogate_loss, outputs, targets)
        t = self._tick("gradient", t)
        # ∂surrogate/∂outputs: the surrogate's gradient then rides on the backward pass that builds J's graph.
        points = [o.detach().requires_grad_(True) for o in outputs]
        cotangents = list(torch.autograd.grad(self.weighted(surrogate_loss, points, targets), points))
        subsample = self.cfg.hvp_tasks is not None and cfg.hvp_tasks < batch.num_tasks
        if subsample:  # the HVPs on the first tasks only: their own, smaller graph
            g = flat(torch.autograd.grad(outputs, plist, cotangents))
            outputs, targets = self.outputs(params, batch.tasks(0, cfg.hvp_tasks), graph=True)
            hvp, _ = gauss_newton_hvp(outputs, lambda o: self.weighted(mean_kl, o, targets), plist, cfg.cg_damping)
        else:
            hvp, g = gauss_newton_hvp(outputs, lambda o: self.weighted(mean_kl, o, targets), plist, cfg.cg_damping,
                                      cotangents)
        t = self._tick("kl_graph", t)
        direction, h_direction = conjugate_gradient_with_product(hvp, -g, cfg.cg_iters)  # descent on the loss
        self._tick("cg_hvp", t)
        return surr, direction, float(direction @ h_direction)

    def _exact_direction(self, batch: TaskBatch, params: Params, plist: list[torch.Tensor], t: float
                         ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """:meth:`_direction` with the exact HVPs of :func:`kl_hvp` (the reference)."""
        cfg = self.cfg
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
        self._tick("cg_hvp", t)
        return surr, direction, shs

    def __call__(self, batch: TaskBatch, iteration: int = 0) -> dict[str, float]:
        cfg = self.cfg
        params = self.learner.params()
        rates = learned_step_sizes(self.learner)
        plist = list(params.values()) + list(rates.values())
        like = {**params, **{f"inner_lr:{k}": v for k, v in rates.items()}}  # the layout of TRPO's flat vector
        t = time.perf_counter()
        if self.exact_hvp:
            surr, direction, shs = self._exact_direction(batch, params, plist, t)
        else:
            surr, direction, shs = self._direction(batch, params, plist, t)
        t = time.perf_counter()
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
