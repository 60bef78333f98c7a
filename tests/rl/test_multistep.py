"""Meta-training with several inner policy-gradient steps, each on rollouts of the policy it starts from."""

import torch
from torch.func import functional_call

from fastmaml.apps.rl.config import TRPOConfig
from fastmaml.apps.rl.losses import lvc_loss, reinforce_loss, surrogate_loss, unpack
from fastmaml.apps.rl.trpo import TRPOStep

from .helpers import tiny_batch, tiny_learner


def _hand_step(model, params, x, y, lr, loss_fn=reinforce_loss):
    """θ − α ∇ REINFORCE loss, by plain autograd (independent of the engine), graph kept."""
    loss = loss_fn(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    return {k: v - lr * g for (k, v), g in zip(params.items(), grads)}


def test_every_inner_step_samples_from_the_policy_it_starts_from():
    learner = tiny_learner(inner_steps=2)
    batch = tiny_batch(learner, tasks=3, trajectories=4, horizon=10, seed=5)
    assert batch.support_x.shape[:2] == (3, 2) and batch.step_returns.shape == (3, 3)
    assert not torch.equal(batch.support_x[:, 0], batch.support_x[:, 1])
    model, theta = learner.model, {k: v.detach().requires_grad_() for k, v in learner.params().items()}
    for t in range(3):
        params = theta
        for step in range(2):
            # The recorded sampling distribution of step s's rollouts is the policy after s steps.
            recorded = unpack(batch.support_y[t, step], 2)[3]
            torch.testing.assert_close(functional_call(model, params, (batch.support_x[t, step],)).detach(), recorded)
            params = _hand_step(model, params, batch.support_x[t, step], batch.support_y[t, step], learner.inner_lr.alpha)
        torch.testing.assert_close(functional_call(model, params, (batch.query_x[t],)).detach(), unpack(batch.query_y[t], 2)[3])
    torch.testing.assert_close(batch.pre_return, batch.step_returns[:, 0])
    torch.testing.assert_close(batch.post_return, batch.step_returns[:, 2])


def test_meta_gradient_runs_through_both_inner_steps():
    learner = tiny_learner(inner_steps=2)
    batch = tiny_batch(learner, tasks=2, trajectories=3, horizon=8, seed=6)
    step = TRPOStep(learner, TRPOConfig())
    params = learner.params()
    surr, _ = step.objectives(params, batch, graph=True)
    got = torch.autograd.grad(surr, list(params.values()))

    total = 0.0
    for t in range(batch.num_tasks):
        p = dict(params)
        for s in range(2):
            p = _hand_step(learner.model, p, batch.support_x[t, s], batch.support_y[t, s], learner.inner_lr.alpha)
        total = total + surrogate_loss(functional_call(learner.model, p, (batch.query_x[t],)), batch.query_y[t])
    want = torch.autograd.grad(total / batch.num_tasks, list(params.values()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)

    # Differentiating through only the first step (or neither) gives another gradient.
    learner.first_order = True
    surr_fo, _ = step.objectives(params, batch, graph=True)
    fo = torch.autograd.grad(surr_fo, list(params.values()))
    assert max((a - b).abs().max() for a, b in zip(fo, want)) > 1e-6


def test_all_steps_objective_averages_every_step_on_its_own_rollouts():
    """trpo.all_steps: mean over s = 1..S of the surrogate (and KL) of θ_s, step s < S judged on the
    rollouts it sampled (the next step's support), step S on the query set; gradient through every step."""
    from fastmaml.apps.rl.losses import mean_kl

    learner = tiny_learner(inner_steps=2)
    batch = tiny_batch(learner, tasks=2, trajectories=3, horizon=8, seed=7)
    params = learner.params()
    surr, kl = TRPOStep(learner, TRPOConfig(all_steps=True)).objectives(params, batch, graph=True)
    got = torch.autograd.grad(surr, list(params.values()))

    total_surr, total_kl = 0.0, 0.0
    for t in range(batch.num_tasks):
        p1 = _hand_step(learner.model, dict(params), batch.support_x[t, 0], batch.support_y[t, 0], learner.inner_lr.alpha)
        p2 = _hand_step(learner.model, p1, batch.support_x[t, 1], batch.support_y[t, 1], learner.inner_lr.alpha)
        out1 = functional_call(learner.model, p1, (batch.support_x[t, 1],))
        out2 = functional_call(learner.model, p2, (batch.query_x[t],))
        total_surr = total_surr + (surrogate_loss(out1, batch.support_y[t, 1]) + surrogate_loss(out2, batch.query_y[t])) / 2
        total_kl = total_kl + (mean_kl(out1, batch.support_y[t, 1]) + mean_kl(out2, batch.query_y[t])) / 2
    want = torch.autograd.grad(total_surr / batch.num_tasks, list(params.values()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(kl, total_kl / batch.num_tasks, rtol=1e-9, atol=1e-12)

    # It is a different objective from the last step's alone (whose gradient the test above pins down).
    last, _ = TRPOStep(learner, TRPOConfig()).objectives(params, batch, graph=True)
    last_grad = torch.autograd.grad(last, list(params.values()))
    assert max((a - b).abs().max() for a, b in zip(last_grad, want)) > 1e-6
    # With one inner step the flag changes nothing.
    one = tiny_learner(inner_steps=1)
    b1 = tiny_batch(one, tasks=2, trajectories=3, horizon=8, seed=7)
    a = TRPOStep(one, TRPOConfig(all_steps=True)).objectives(one.params(), b1, graph=False)
    b = TRPOStep(one, TRPOConfig()).objectives(one.params(), b1, graph=False)
    torch.testing.assert_close(a, b)


def test_lvc_samples_the_same_rollouts_and_differentiates_its_own_chain():
    """pg.inner_loss=lvc: the inner steps (so the rollouts) are REINFORCE's, the meta-gradient is the LVC chain's."""
    reinforce, lvc = tiny_learner(inner_steps=2), tiny_learner(inner_steps=2, loss=lvc_loss)
    batch = tiny_batch(reinforce, tasks=2, trajectories=3, horizon=8, seed=7)
    batch_lvc = tiny_batch(lvc, tasks=2, trajectories=3, horizon=8, seed=7)
    torch.testing.assert_close(batch_lvc.query_y, batch.query_y)  # same adapted policies sampled the same episodes

    grads = {}
    for name, learner in (("reinforce", reinforce), ("lvc", lvc)):
        params = learner.params()
        surr, _ = TRPOStep(learner, TRPOConfig()).objectives(params, batch, graph=True)
        grads[name] = torch.autograd.grad(surr, list(params.values()))
    params = lvc.params()
    total = 0.0
    for t in range(batch.num_tasks):
        p = dict(params)
        for s in range(2):
            p = _hand_step(lvc.model, p, batch.support_x[t, s], batch.support_y[t, s], lvc.inner_lr.alpha, lvc_loss)
        total = total + surrogate_loss(functional_call(lvc.model, p, (batch.query_x[t],)), batch.query_y[t])
    want = torch.autograd.grad(total / batch.num_tasks, list(params.values()))
    for g, w in zip(grads["lvc"], want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    # the exploration term: the two estimators' meta-gradients differ
    assert max(float((a - b).abs().max()) for a, b in zip(grads["lvc"], grads["reinforce"])) > 1e-4
