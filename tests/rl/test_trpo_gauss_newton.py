"""TRPO's fast path: Gauss-Newton HVPs and the CG's own ``A x`` give the same step as the exact reference."""

import pytest
import torch

from fastmaml.apps.rl.config import TRPOConfig
from fastmaml.apps.rl.losses import lvc_loss, mean_kl, reinforce_loss, surrogate_loss
from fastmaml.apps.rl.trpo import (TRPOStep, conjugate_gradient_with_product, flat, gauss_newton_hvp, kl_hvp,
                                   learned_step_sizes)

from .helpers import tiny_batch, tiny_learner

# (learner options, TRPO options): the paper's setup, the LVC inner loss, learned step sizes, two steps
# judged together (MAML++'s multi-step loss), and the HVPs on a subset of the tasks.
SETUPS = {
    "paper": ({}, {}),
    "lvc_relu": ({"loss": lvc_loss, "activation": "relu", "hidden": (6, 5)}, {}),
    "learned_rates": ({"step_size": "per_layer_step", "inner_lr": 0.3}, {}),
    "two_steps_all": ({"inner_steps": 2, "loss": reinforce_loss}, {"all_steps": True}),
    "hvp_subset": ({}, {"hvp_tasks": 2}),
}


def _setup(name: str, seed: int = 0, **trpo):
    learner_opts, trpo_opts = SETUPS[name]
    learner = tiny_learner(seed=seed, **learner_opts)
    batch = tiny_batch(learner, tasks=4, trajectories=5, seed=seed + 3)
    return learner, batch, TRPOStep(learner, TRPOConfig(**trpo_opts, **trpo))


def _both_hvps(step: TRPOStep, batch):
    """(exact HVP, Gauss-Newton HVP, the surrogate's gradient from each) at the learner's θ."""
    params = step.learner.params()
    plist = list(params.values()) + list(learned_step_sizes(step.learner).values())
    surr, kl = step.objectives(params, batch, graph=True)
    g = flat(torch.autograd.grad(surr, plist, retain_graph=True))
    exact = kl_hvp(kl, plist)
    outputs, targets = step.outputs(params, batch, graph=True)
    points = [o.detach().requires_grad_(True) for o in outputs]
    cot = list(torch.autograd.grad(step.weighted(surrogate_loss, points, targets), points))
    ggn, g_ggn = gauss_newton_hvp(outputs, lambda o: step.weighted(mean_kl, o, targets), plist, cotangents=cot)
    return exact, ggn, g_ggn, g


@pytest.mark.parametrize("name", ["paper", "lvc_relu", "learned_rates", "two_steps_all"])
def test_gauss_newton_hvp_is_the_exact_hessian_at_the_sampling_policy(name):
    learner, batch, step = _setup(name)
    exact, ggn, g_ggn, g = _both_hvps(step, batch)
    torch.testing.assert_close(g_ggn, g, rtol=1e-10, atol=1e-12)  # the gradient that rides along
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(g.shape, generator=gen, dtype=g.dtype)
        expected = exact(v)
        assert expected.abs().max() > 1e-4  # real curvature
        torch.testing.assert_close(ggn(v), expected, rtol=1e-8, atol=1e-10)
    # Away from the sampling policy ∇KL ≠ 0 and the two differ: the identity above is not vacuous.
    with torch.no_grad():
        for p in learner.params().values():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    exact, ggn, _, _ = _both_hvps(step, batch)
    v = torch.randn(g.shape, generator=gen, dtype=g.dtype)
    assert (ggn(v) - exact(v)).norm() > 1e-4 * exact(v).norm()


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_trpo_step_matches_the_exact_reference_step(name):
    """Same batch, same θ: the fast step (Gauss-Newton HVPs, xᵀHx from CG) lands where the reference
    (``exact_hvp``: HVPs by differentiating ∇KL·v, one more HVP for xᵀHx) does.

    4 CG iterations: on these ~24-parameter problems 10 iterations reach CG's rounding floor (residual
    ~1e-10), where each further iteration turns rounding-level differences of the HVPs into ~1e-8 relative
    differences of the step, for either implementation; before it the comparison can be tight.
    """
    fast_learner, batch, fast = _setup(name, cg_iters=4)
    ref_learner, _, ref = _setup(name, cg_iters=4)
    ref.exact_hvp = True
    before = flat(p.detach().clone() for p in fast_learner.params().values())
    out_fast, out_ref = fast(batch), ref(batch)
    assert out_ref["step_fraction"] > 0, "no step taken: nothing compared"
    assert out_fast["step_fraction"] == out_ref["step_fraction"]
    assert out_fast["loss"] == pytest.approx(out_ref["loss"], rel=1e-9)
    assert out_fast["kl"] == pytest.approx(out_ref["kl"], rel=1e-7)
    after_fast = flat(p.detach() for p in fast_learner.params().values())
    after_ref = flat(p.detach() for p in ref_learner.params().values())
    assert (after_ref - before).abs().max() > 1e-3  # the step moved θ
    torch.testing.assert_close(after_fast, after_ref, rtol=1e-8, atol=1e-10)
    for (k, a), (_, b) in zip(fast_learner.inner_lrs.items(), ref_learner.inner_lrs.items()):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=k)


def test_conjugate_gradient_product_is_a_times_x():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(8, 8, generator=g, dtype=torch.float64)
    a = m @ m.T + 1e-3 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    for iters in (1, 3, 8):
        x, ax = conjugate_gradient_with_product(lambda v: a @ v, b, iters=iters)
        torch.testing.assert_close(ax, a @ x, rtol=1e-9, atol=1e-12)
    x, ax = conjugate_gradient_with_product(lambda v: a @ v, torch.zeros(8, dtype=torch.float64))
    assert not x.any() and not ax.any()


def test_mask_relu_is_relu_to_the_second_derivative():
    from fastmaml.apps.rl.policy import MaskReLU

    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 4.0], dtype=torch.float64, requires_grad=True)
    for f in (MaskReLU(), torch.nn.ReLU()):
        y = f(x)
        (g,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), x)
        if isinstance(f, MaskReLU):
            mask_out = (y, g, h)
        else:
            for a, b in zip(mask_out, (y, g, h)):
                assert torch.equal(a.detach(), b.detach())
