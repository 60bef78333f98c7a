"""TRPO's pieces: exact Hessian-vector products through the inner step, CG, the KL-safe line search."""

import pytest
import torch

from fastmaml.apps.rl.config import TRPOConfig
from fastmaml.apps.rl.trpo import TRPOStep, conjugate_gradient, flat, kl_hvp, learned_step_sizes, line_search, unflat

from .helpers import tiny_batch, tiny_learner


def _kl_of(step: TRPOStep, batch, like):
    return lambda theta: step.objectives(unflat(theta, like), batch, graph=True)[1]


def test_hvp_equals_explicit_hessian_through_the_inner_step():
    learner = tiny_learner()
    batch = tiny_batch(learner)
    step = TRPOStep(learner, TRPOConfig())
    params = learner.params()
    theta = flat(p.detach() for p in params.values())
    # Away from the sampling policy too, where the KL's gradient (and the second-order term of the
    # inner step) is not zero.
    theta = theta + 0.05 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=theta.dtype)
    like = {k: v.detach() for k, v in params.items()}
    kl_fn = _kl_of(step, batch, like)
    hessian = torch.autograd.functional.hessian(kl_fn, theta)
    assert hessian.abs().max() > 1e-3  # a real curvature, not zeros

    point = {k: v.clone().requires_grad_(True) for k, v in unflat(theta, like).items()}
    _, kl = step.objectives(point, batch, graph=True)
    hvp = kl_hvp(kl, list(point.values()))
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(theta.shape, generator=g, dtype=theta.dtype)
        torch.testing.assert_close(hvp(v), hessian @ v, rtol=1e-8, atol=1e-10)
    # the inner step matters: without differentiating through it the Hessian differs
    first = tiny_learner()
    first.first_order = True
    h_first = torch.autograd.functional.hessian(_kl_of(TRPOStep(first, TRPOConfig()), batch, like), theta)
    assert (h_first - hessian).abs().max() > 1e-4


def test_hvp_matches_finite_differences_of_the_kl_gradient():
    learner = tiny_learner()
    batch = tiny_batch(learner, seed=3)
    step = TRPOStep(learner, TRPOConfig())
    params = learner.params()
    like = {k: v.detach() for k, v in params.items()}
    theta = flat(like.values())
    _, kl = step.objectives(params, batch, graph=True)
    hvp = kl_hvp(kl, list(params.values()), damping=0.0)

    def grad_at(t):
        point = {k: v.clone().requires_grad_(True) for k, v in unflat(t, like).items()}
        _, k = step.objectives(point, batch, graph=True)
        return flat(torch.autograd.grad(k, list(point.values())))

    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(4), dtype=theta.dtype)
    eps = 1e-5
    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    torch.testing.assert_close(hvp(v), fd, rtol=1e-5, atol=1e-8)


def test_conjugate_gradient_solves_a_known_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    x_true = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, a @ x_true, iters=6)  # exact in n steps (up to rounding)
    torch.testing.assert_close(x, x_true, rtol=1e-7, atol=1e-9)
    # fewer iterations: an approximation that still reduces the residual
    x3 = conjugate_gradient(lambda v: a @ v, a @ x_true, iters=3)
    assert (a @ x3 - a @ x_true).norm() < (a @ x_true).norm()


@pytest.mark.parametrize("curvature", [0.001, 0.05, 1.0, 100.0])
def test_line_search_never_accepts_a_step_above_the_kl_limit(curvature):
    theta = torch.zeros(3, dtype=torch.float64)
    full = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    seen = []

    def evaluate(t):
        kl = curvature * float(t @ t)  # grows with the step
        loss = -float(t @ full)  # improves along the step
        seen.append(kl)
        return loss, kl

    new, res = line_search(evaluate, theta, full, loss_before=0.0, max_kl=0.01, ratio=0.8, max_backtracks=15)
    if res.accepted:
        assert res.kl <= 0.01 and curvature * float(new @ new) <= 0.01
        assert res.fraction == pytest.approx(0.8 ** (res.tries - 1))
        assert all(k > 0.01 for k in seen[:-1])  # the first fraction within the limit was taken
    else:
        assert torch.equal(new, theta) and min(seen) > 0.01
    assert res.accepted == (curvature * float(full @ full) * 0.8 ** 28 <= 0.01)


def test_line_search_rejects_steps_that_do_not_improve_or_are_not_finite():
    theta = torch.zeros(2)
    new, res = line_search(lambda t: (1.0, 0.0), theta, torch.ones(2), loss_before=0.0, max_kl=0.01)
    assert not res.accepted and torch.equal(new, theta)
    new, res = line_search(lambda t: (float("nan"), 0.0), theta, torch.ones(2), loss_before=0.0, max_kl=0.01)
    assert not res.accepted and torch.equal(new, theta)


@pytest.mark.parametrize("hvp_tasks", [None, 2])
def test_trpo_step_improves_the_surrogate_within_the_kl_limit(hvp_tasks):
    learner = tiny_learner(hidden=(8,))
    batch = tiny_batch(learner, tasks=4, trajectories=6, seed=5)
    step = TRPOStep(learner, TRPOConfig(max_kl=0.01, hvp_tasks=hvp_tasks))
    before = {k: v.detach().clone() for k, v in learner.params().items()}
    with torch.no_grad():
        s0, k0 = step.objectives(before, batch, graph=False)
    out = step(batch)
    after = {k: v.detach() for k, v in learner.params().items()}
    with torch.no_grad():
        s1, k1 = step.objectives(after, batch, graph=False)
    assert float(k0) < 1e-12  # the sampling policies are reproduced exactly at the old parameters
    assert out["step_fraction"] > 0, "no step accepted on an easy problem"
    assert float(s1) < float(s0) and 0 < float(k1) <= 0.01
    assert out["kl"] == pytest.approx(float(k1))
    assert set(step.timings) == {"gradient", "kl_graph", "cg_hvp", "line_search"}


def test_hvp_tasks_beyond_the_meta_batch_means_every_task():
    """A preset's trpo.hvp_tasks (5 of 20) stays valid when a smoke run cuts the meta-batch below it: all tasks."""
    results = []
    for hvp_tasks in (None, 50):
        learner = tiny_learner(hidden=(8,))
        batch = tiny_batch(learner, tasks=4, trajectories=6, seed=5)
        TRPOStep(learner, TRPOConfig(max_kl=0.01, hvp_tasks=hvp_tasks))(batch)
        results.append(torch.cat([v.detach().flatten() for v in learner.params().values()]))
    assert torch.equal(results[0], results[1])


def _with_rates(step: TRPOStep, theta: torch.Tensor, like: dict) -> dict:
    """Write the step-size part of TRPO's flat vector into the learner; return θ's part as fresh leaves."""
    values = unflat(theta, like)
    with torch.no_grad():
        for name, rate in learned_step_sizes(step.learner).items():
            rate.copy_(values[f"inner_lr:{name}"])
    return {k: v.clone().requires_grad_(True) for k, v in values.items() if not k.startswith("inner_lr:")}


@pytest.mark.parametrize("mode", ["per_layer_step", "per_element"])
def test_learned_step_sizes_are_in_the_gradient_and_the_exact_hvp(mode):
    """Meta-SGD / MAML++ step sizes are TRPO parameters: the surrogate's gradient and the KL's Hessian-vector
    products with respect to them match finite differences."""
    learner = tiny_learner(inner_lr=0.3, step_size=mode)
    batch = tiny_batch(learner, seed=7)
    step = TRPOStep(learner, TRPOConfig())
    rates = learned_step_sizes(step.learner)
    assert set(rates) == {k for k, _ in learner.inner_lrs.items()} and rates
    params = learner.params()
    like = {**{k: v.detach() for k, v in params.items()}, **{f"inner_lr:{k}": v.detach() for k, v in rates.items()}}
    theta = flat(v.clone() for v in like.values())
    theta = theta + 0.05 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(8), dtype=theta.dtype)

    def grads_at(t):
        point = _with_rates(step, t, like)
        surr, kl = step.objectives(point, batch, graph=True)
        wrt = list(point.values()) + list(rates.values())
        return surr, kl, wrt

    surr, kl, wrt = grads_at(theta)
    g = flat(torch.autograd.grad(surr, wrt, retain_graph=True))
    hvp = kl_hvp(kl, wrt)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(9), dtype=theta.dtype)
    n_theta = sum(x.numel() for x in params.values())
    v_rates = torch.zeros_like(v)
    v_rates[n_theta:] = v[n_theta:]  # a direction along the step sizes only
    assert v_rates.abs().sum() > 0
    exact = {"v": hvp(v), "rates": hvp(v_rates)}  # before the finite differences rewrite the learner's rates
    eps = 1e-5

    def surr_at(t):
        with torch.no_grad():
            return float(step.objectives(_with_rates(step, t, like), batch, graph=False)[0])

    fd_surr = (surr_at(theta + eps * v_rates) - surr_at(theta - eps * v_rates)) / (2 * eps)
    assert g @ v_rates == pytest.approx(fd_surr, rel=1e-5, abs=1e-9)
    assert abs(fd_surr) > 1e-6, "the step sizes do not move the objective"

    def kl_grad_at(t):
        _, k, w = grads_at(t)
        return flat(torch.autograd.grad(k, w))

    for key, direction in (("v", v), ("rates", v_rates)):
        expected = (kl_grad_at(theta + eps * direction) - kl_grad_at(theta - eps * direction)) / (2 * eps)
        torch.testing.assert_close(exact[key], expected, rtol=1e-5, atol=1e-8)
    assert exact["rates"][n_theta:].abs().max() > 1e-6  # the KL bends along the step sizes


def test_trpo_step_updates_learned_step_sizes_within_the_kl_limit():
    learner = tiny_learner(hidden=(8,), inner_lr=0.3, step_size="per_layer_step")
    batch = tiny_batch(learner, tasks=4, trajectories=6, seed=5)
    step = TRPOStep(learner, TRPOConfig(max_kl=0.01))
    rates_before = {k: v.detach().clone() for k, v in learner.inner_lrs.items()}
    theta_before = {k: v.detach().clone() for k, v in learner.params().items()}
    with torch.no_grad():
        s0, _ = step.objectives(theta_before, batch, graph=False)
    out = step(batch)
    assert out["step_fraction"] > 0
    assert any(not torch.equal(rates_before[k], v) for k, v in learner.inner_lrs.items()), "the step sizes did not move"
    with torch.no_grad():  # measured with the new θ *and* the new step sizes now in the learner
        s1, k1 = step.objectives({k: v.detach() for k, v in learner.params().items()}, batch, graph=False)
    assert float(s1) < float(s0) and 0 < float(k1) <= 0.01
    assert out["kl"] == pytest.approx(float(k1))
    # a rejected step leaves the step sizes as they were (the line search wrote candidates into them)
    rates_now = {k: v.detach().clone() for k, v in learner.inner_lrs.items()}
    theta_now = {k: v.detach().clone() for k, v in learner.params().items()}
    step.cfg = TRPOConfig(max_kl=1e-30, max_backtracks=2)
    assert step(batch)["step_fraction"] == 0
    for k, v in learner.inner_lrs.items():
        assert torch.equal(v, rates_now[k])
    for k, v in learner.params().items():
        assert torch.equal(v, theta_now[k])
