"""MAML++ pieces on the one engine: multi-step loss, derivative-order annealing, cosine meta learning rate."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.core.batch import TaskBatching
from fastmaml.core.maml import MAML, MAMLConfig, MAMLPlusPlus, multi_step_weights
from fastmaml.errors import ConfigError
from fastmaml.tasks.batch import TaskBatch
from fastmaml.train.loop import TrainConfig, meta_lr_at


def test_multi_step_weights_anneal_towards_the_last_step():
    w0 = multi_step_weights(4, 0.0)
    assert torch.allclose(w0, torch.full((4,), 0.25))
    half = multi_step_weights(4, 0.5)
    assert half[:3].tolist() == pytest.approx([0.25 - 0.5 * 0.97 / 4] * 3) and half.sum().item() == pytest.approx(1.0)
    end = multi_step_weights(4, 1.0)
    assert end[:3].tolist() == pytest.approx([0.03 / 4] * 3) and end[-1].item() == pytest.approx(1 - 3 * 0.03 / 4)
    assert torch.equal(multi_step_weights(4, 7.0), end)  # progress is clamped


def _batch(tasks=3, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, 2 * n, 2, generator=g, dtype=torch.float64)
    y = (x @ torch.tensor([[1.5], [-0.5]], dtype=torch.float64)) + 0.1 * torch.randn(tasks, 2 * n, 1, generator=g,
                                                                                    dtype=torch.float64)
    return TaskBatch(x[:, :n], y[:, :n], x[:, n:], y[:, n:])


def _hand_meta_grad(model, batch, alpha, steps, weights, first_order=False):
    """The weighted multi-step meta-loss's gradient by plain autograd, task by task, without fastmaml."""
    w0, b0 = model.weight, model.bias
    total_w, total_b = torch.zeros_like(w0), torch.zeros_like(b0)
    for t in range(batch.num_tasks):
        w, b = w0, b0
        loss = 0.0
        for s in range(steps):
            ls = F.mse_loss(batch.support_x[t] @ w.T + b, batch.support_y[t])
            gw, gb = torch.autograd.grad(ls, (w, b), create_graph=not first_order)
            w, b = w - alpha * gw, b - alpha * gb
            loss = loss + weights[s] * F.mse_loss(batch.query_x[t] @ w.T + b, batch.query_y[t])
        dw, db = torch.autograd.grad(loss / batch.num_tasks, (w0, b0))
        total_w, total_b = total_w + dw, total_b + db
    return total_w, total_b


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_multi_step_loss_gradient_matches_a_hand_computation(vectorize):
    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    learner = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=3, batching=TaskBatching(vectorize),
                   mamlpp=MAMLPlusPlus(multi_step_loss_iterations=100))
    batch = _batch()
    learner.set_iteration(40)
    learner(batch).loss.backward()
    want_w, want_b = _hand_meta_grad(model, batch, 0.1, 3, multi_step_weights(3, 0.4).double())
    assert torch.allclose(model.weight.grad, want_w, atol=1e-10) and torch.allclose(model.bias.grad, want_b, atol=1e-10)
    # After the annealing period: the last step's loss only, i.e. plain MAML.
    model.zero_grad()
    learner.set_iteration(100)
    learner(batch).loss.backward()
    plain_w, _ = _hand_meta_grad(model, batch, 0.1, 3, [0.0, 0.0, 1.0])
    assert torch.allclose(model.weight.grad, plain_w, atol=1e-10)
    assert not torch.allclose(plain_w, want_w)


def test_derivative_order_annealing_switches_from_first_to_second_order():
    torch.manual_seed(1)
    model = nn.Linear(2, 1).double()
    learner = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=2, mamlpp=MAMLPlusPlus(first_order_iterations=10))
    batch = _batch(seed=3)
    grads = {}
    for it in (9, 10):
        model.zero_grad()
        learner.set_iteration(it)
        learner(batch).loss.backward()
        grads[it] = model.weight.grad.clone()
    fo, _ = _hand_meta_grad(model, batch, 0.1, 2, [0.0, 1.0], first_order=True)
    so, _ = _hand_meta_grad(model, batch, 0.1, 2, [0.0, 1.0])
    assert torch.allclose(grads[9], fo, atol=1e-10) and torch.allclose(grads[10], so, atol=1e-10)
    assert not torch.allclose(fo, so)
    with pytest.raises(ConfigError, match=">= 0"):
        MAMLPlusPlus(first_order_iterations=-1)
    # From a config (presets): the fields reach the learner.
    built = MAMLConfig(inner_steps=2, multi_step_loss_iterations=5, first_order_iterations=7).build(
        nn.Linear(2, 1), F.mse_loss)
    assert built.multi_step_loss_iterations == 5 and built.first_order_iterations == 7


def test_cosine_meta_learning_rate():
    cfg = TrainConfig(iterations=1000, meta_lr=1e-3, lr_schedule="cosine", min_meta_lr=1e-5)
    assert meta_lr_at(cfg, 0) == pytest.approx(1e-3)
    assert meta_lr_at(cfg, 500) == pytest.approx((1e-3 + 1e-5) / 2)
    assert meta_lr_at(cfg, 1000) == pytest.approx(1e-5)
    assert meta_lr_at(cfg, 250) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi / 4)))
    assert meta_lr_at(TrainConfig(meta_lr=0.01), 123) == 0.01
    with pytest.raises(ConfigError, match="lr_schedule"):
        meta_lr_at(TrainConfig(lr_schedule="step"), 1)


def test_mamlpp_schedules_resume_bit_identical(tmp_path):
    from fastmaml.config import load_config
    from fastmaml.experiments import sinusoid as S
    from fastmaml.train.checkpoint import RunDir, load_checkpoint
    from fastmaml.train.loop import meta_train

    cfg = load_config(S.SinusoidConfig, None, [
        "train.progress=false", "train.threads=1", "train.compile=false", "train.iterations=30", "train.checkpoint_every=10",
        "train.log_every=10", "train.lr_schedule=cosine", "train.min_meta_lr=0.0001", "maml.inner_steps=2",
        "maml.multi_step_loss_iterations=20", "maml.first_order_iterations=10"])
    S.train(cfg, tmp_path / "straight")
    real, calls = S.batch_sampler(cfg, "maml"), {"n": 0}

    def crashes_at_26(g):
        calls["n"] += 1
        if calls["n"] == 26:
            raise KeyboardInterrupt  # a crash after the checkpoint at iteration 20
        return real(g)

    with pytest.raises(KeyboardInterrupt):
        meta_train(S.build_learner(cfg, "maml"), crashes_at_26, cfg.train, tmp_path / "split")
    S.train(cfg, tmp_path / "split", resume=True)
    a = load_checkpoint(RunDir(tmp_path / "straight").last)["model"]
    b = load_checkpoint(RunDir(tmp_path / "split").last)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
