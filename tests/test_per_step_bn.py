"""MAML++ per-step BatchNorm: each inner step normalizes with its own row of weights and statistics."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.core.batchnorm import PerStepBatchNorm
from fastmaml.core.batch import TaskBatching
from fastmaml.core.maml import MAML, MAMLConfig, MAMLPlusPlus
from fastmaml.errors import ConfigError
from fastmaml.tasks.batch import TaskBatch

STEPS, ALPHA, EPS = 2, 0.3, 1e-5


def tasks(t=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.randn(t, 6, 4, generator=g, dtype=torch.float64), torch.randn(t, 9, 4, generator=g, dtype=torch.float64)
    ys, yq = torch.randint(0, 3, (t, 6), generator=g), torch.randint(0, 3, (t, 9), generator=g)
    return TaskBatch(xs * 2 + 1, ys, xq * 2 + 1, yq)


def learner(bn_eval_stats="batch", **kw) -> MAML:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double()
    maml = MAML(net, F.cross_entropy, inner_lr=ALPHA, inner_steps=STEPS, mamlpp=MAMLPlusPlus(per_step_bn=True, bn_eval_stats=bn_eval_stats), **kw)
    with torch.no_grad():  # distinct rows, so a wrong row changes every number below
        maml.model[1].weight.uniform_(0.5, 2.0)
        maml.model[1].bias.normal_()
    return maml


def reference(p, x, row, mean=None, var=None):
    """The network written out by hand, normalizing with BatchNorm row ``row``."""
    h = x @ p["0.weight"].T + p["0.bias"]
    if mean is None:
        mean, var = h.mean(0), h.var(0, unbiased=False)
    h = (h - mean) / torch.sqrt(var + EPS) * p["1.weight"][row] + p["1.bias"][row]
    return torch.relu(h) @ p["3.weight"].T + p["3.bias"]


def test_per_step_rows_replace_batchnorm_and_are_not_adapted_by_default():
    maml = learner()
    norm = maml.model[1]
    assert isinstance(norm, PerStepBatchNorm) and norm.weight.shape == (STEPS + 1, 5)
    assert "1.weight" not in maml.inner_names and "0.weight" in maml.inner_names
    assert MAML(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)), F.mse_loss, inner_steps=2, mamlpp=MAMLPlusPlus(per_step_bn=True),
                inner_params=["1.weight", "0.weight"]).inner_names == ["1.weight", "0.weight"]
    with pytest.raises(ConfigError, match="per_step_bn"):
        MAMLPlusPlus(bn_eval_stats="running")
    assert MAMLConfig(per_step_bn=True, inner_steps=3).build(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)),
                                                             F.mse_loss).model[1].weight.shape == (4, 2)


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_meta_gradient_uses_row_s_after_s_inner_steps(vectorize):
    """Second-order meta-gradient against a hand-written network that uses row s at step s and row S
    for the query: support at θ₀ with row 0, at θ₁ with row 1, query at θ₂ with row 2."""
    maml = learner(batching=TaskBatching(vectorize))
    batch = tasks()
    maml.zero_grad()
    maml(batch).loss.backward()
    got = {n.removeprefix("model."): p.grad for n, p in maml.named_parameters()}

    params = {k: v.detach().clone().requires_grad_() for k, v in maml.model.named_parameters()}
    total = 0.0
    for i in range(batch.num_tasks):
        p = dict(params)
        for step in range(STEPS):
            loss = F.cross_entropy(reference(p, batch.support_x[i], step), batch.support_y[i])
            names = [n for n in p if not n.startswith("1.")]  # per-step BN rows stay out of the inner loop
            grads = torch.autograd.grad(loss, [p[n] for n in names], create_graph=True)
            p = {**p, **{n: p[n] - ALPHA * g for n, g in zip(names, grads)}}
        total = total + F.cross_entropy(reference(p, batch.query_x[i], STEPS), batch.query_y[i])
    expected = torch.autograd.grad(total / batch.num_tasks, list(params.values()))
    for (name, _), e in zip(params.items(), expected):
        torch.testing.assert_close(got[name], e, rtol=1e-9, atol=1e-12)
    # Every row got its own gradient (row s is used at step s only).
    assert (got["1.weight"].abs().sum(1) > 0).all()


def test_running_statistics_recorded_per_step_and_used_at_that_step():
    """A training pass folds task 0's statistics at step s into row s (support) and row S (query);
    with bn_eval_stats='running' evaluation normalizes step s with row s's running statistics."""
    maml = learner(bn_eval_stats="running")
    norm, batch = maml.model[1], tasks()
    maml.train()
    maml(batch)

    p = {k: v.detach().clone() for k, v in maml.model.named_parameters()}
    xs, ys, xq = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    expected_mean, expected_var = [], []
    for step in range(STEPS + 1):
        x = xs if step < STEPS else xq
        h = x @ p["0.weight"].T + p["0.bias"]
        expected_mean.append(0.1 * h.mean(0))
        expected_var.append(0.9 + 0.1 * h.var(0, unbiased=True))
        if step < STEPS:
            q = {k: v.clone().requires_grad_() for k, v in p.items()}
            loss = F.cross_entropy(reference(q, xs, step), ys)
            grads = torch.autograd.grad(loss, [q[n] for n in ("0.weight", "0.bias", "3.weight", "3.bias")])
            p = {**p, **{n: p[n] - ALPHA * g for n, g in zip(("0.weight", "0.bias", "3.weight", "3.bias"), grads)}}
    torch.testing.assert_close(norm.running_mean, torch.stack(expected_mean), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(norm.running_var, torch.stack(expected_var), rtol=1e-9, atol=1e-12)
    assert not norm.record and not norm.use_running_stats  # modes never leak out of a pass

    # Evaluation with running statistics: the curve's step-s query loss uses row s's statistics.
    maml.eval()
    with torch.no_grad():
        norm.running_mean.normal_()  # make the rows clearly different
        norm.running_var.uniform_(0.5, 3.0)
    curve = maml.adaptation_curve(tasks(t=1, seed=5), steps=3)
    one = tasks(t=1, seed=5)
    p = {k: v.detach().clone() for k, v in maml.model.named_parameters()}
    for step in range(4):
        row = min(step, STEPS)
        stats = norm.running_mean[row], norm.running_var[row]
        q_loss = F.cross_entropy(reference(p, one.query_x[0], row, *stats), one.query_y[0])
        torch.testing.assert_close(curve.losses[0, step], q_loss, rtol=1e-9, atol=1e-12)
        q = {k: v.clone().requires_grad_() for k, v in p.items()}
        loss = F.cross_entropy(reference(q, one.support_x[0], row, *stats), one.support_y[0])
        names = ("0.weight", "0.bias", "3.weight", "3.bias")
        grads = torch.autograd.grad(loss, [q[n] for n in names])
        p = {**p, **{n: p[n] - ALPHA * g for n, g in zip(names, grads)}}


def test_batch_statistics_at_evaluation_by_default_and_buffers_checkpointed():
    maml = learner()
    maml(tasks())
    before = maml.model[1].running_mean.clone()
    maml.eval()
    maml(tasks(seed=1))  # no recording outside training
    torch.testing.assert_close(maml.model[1].running_mean, before)
    one = tasks(t=1, seed=2)
    curve = maml.adaptation_curve(one, steps=0)
    p = {k: v.detach() for k, v in maml.model.named_parameters()}
    expected = F.cross_entropy(reference(p, one.query_x[0], 0), one.query_y[0])
    torch.testing.assert_close(curve.losses[0, 0], expected, rtol=1e-9, atol=1e-12)
    state = maml.state_dict()
    assert "model.1.running_mean" in state and state["model.1.running_mean"].shape == (STEPS + 1, 5)
