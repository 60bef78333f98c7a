"""Memory-bounded second order (``recompute_inner_steps``): the same meta-gradient as the stored
graph, and peak memory that does not grow with the number of inner steps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.core.batch import TaskBatching
from fastmaml.core.maml import MAML, MAMLConfig, MAMLPlusPlus, Recompute
from fastmaml.core.recompute import _live_peak, keep_every
from fastmaml.core.step_size import from_config as step_rule
from fastmaml.errors import ConfigError
from fastmaml.models.resnet12 import ResNet12
from fastmaml.tasks.batch import TaskBatch
from fastmaml.train.memory import peak_tensor_bytes


def regression_tasks(t=4, n=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = lambda m: torch.randn(t, m, d, generator=g, dtype=torch.float64)  # noqa: E731
    xs, xq = x(n), x(n + 3)
    return TaskBatch(xs, torch.sin(xs.sum(-1, keepdim=True)), xq, torch.sin(xq.sum(-1, keepdim=True)))


def mlp(d=3):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def conv_bn(classes=3, width=4):
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Flatten(), nn.Linear(width * 5 * 5, classes),
    ).double()


def image_tasks(t=5, seed=4):
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.randn(t, 6, 1, 5, 5, generator=g, dtype=torch.float64), torch.randn(t, 9, 1, 5, 5, generator=g,
                                                                                       dtype=torch.float64)
    return TaskBatch(xs, torch.randint(0, 3, (t, 6), generator=g), xq, torch.randint(0, 3, (t, 9), generator=g))


def grads_after_meta_backward(make_model, loss_fn, batch, iteration=0, multi_step_loss_iterations=0,
                              first_order_iterations=0, per_step_bn=False, recompute_inner_steps=False,
                              recompute_keep_every=None, **kw):
    mamlpp = MAMLPlusPlus(multi_step_loss_iterations, first_order_iterations, per_step_bn)
    recompute = Recompute(recompute_keep_every) if recompute_inner_steps else None
    learner = MAML(make_model(), loss_fn, mamlpp=mamlpp, recompute=recompute, **kw)
    if learner.step_norms:  # distinct per-step rows, so using a wrong row would show
        torch.manual_seed(3)
        with torch.no_grad():
            for norm in learner.step_norms:
                norm.weight.uniform_(0.5, 2.0)
                norm.bias.normal_()
    learner.set_iteration(iteration)
    learner.zero_grad()
    out = learner.meta_backward(batch)
    grads = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in learner.named_buffers()}
    return grads, out, buffers


def assert_same(make_model, loss_fn, batch, iteration=0, **kw):
    stored, out_s, buf_s = grads_after_meta_backward(make_model, loss_fn, batch, iteration, **kw)
    recomputed, out_r, buf_r = grads_after_meta_backward(make_model, loss_fn, batch, iteration,
                                                         recompute_inner_steps=True, **kw)
    assert stored.keys() == recomputed.keys() and stored
    for name in stored:
        torch.testing.assert_close(recomputed[name], stored[name], rtol=0, atol=1e-10, msg=name)
    assert not out_r.loss.requires_grad
    torch.testing.assert_close(out_r.loss, out_s.loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(out_r.task_losses, out_s.task_losses, rtol=0, atol=1e-12)
    torch.testing.assert_close(out_r.query_pred, out_s.query_pred, rtol=0, atol=1e-12)
    assert buf_s.keys() == buf_r.keys()
    for name in buf_s:  # per-step BatchNorm running statistics, recorded once per chunk in both
        torch.testing.assert_close(buf_r[name], buf_s[name], rtol=0, atol=1e-12)
    return stored


@pytest.mark.parametrize("steps", [1, 3, 5])
@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_mlp_regression_equals_stored(steps, vectorize):
    assert_same(mlp, F.mse_loss, regression_tasks(), inner_lr=0.1, inner_steps=steps, batching=TaskBatching(vectorize))


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_conv_batchnorm_equals_stored(vectorize):
    assert_same(conv_bn, F.cross_entropy, image_tasks(), inner_lr=0.3, inner_steps=3, batching=TaskBatching(vectorize))


@pytest.mark.parametrize("mode", ["per_layer_step", "per_element"])
def test_learned_inner_lrs_equal_stored(mode):
    grads = assert_same(conv_bn, F.cross_entropy, image_tasks(), inner_lr=step_rule(mode, 0.2), inner_steps=3)
    assert any(k.startswith("inner_lrs.") for k in grads)


def test_anil_head_only_equals_stored():
    grads = assert_same(conv_bn, F.cross_entropy, image_tasks(), inner_lr=step_rule("per_layer_step", 0.3), inner_steps=3,
                        inner_params=["7.weight", "7.bias"])
    assert grads["model.0.weight"].abs().max() > 0  # the body gets its meta-gradient through the head's steps


@pytest.mark.parametrize("iteration", [0, 7])
def test_multi_step_loss_equals_stored(iteration):
    assert_same(conv_bn, F.cross_entropy, image_tasks(), iteration=iteration, inner_lr=step_rule("per_layer_step", 0.3), inner_steps=4,
                multi_step_loss_iterations=10)


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_per_step_batchnorm_equals_stored(vectorize):
    """Per-step BN rows (meta-learned, not adapted) get their gradient both directly (query) and
    through the steps; running statistics are recorded per chunk exactly as without recompute."""
    assert_same(conv_bn, F.cross_entropy, image_tasks(), iteration=2, inner_lr=step_rule("per_layer_step", 0.3), inner_steps=3, per_step_bn=True,
                multi_step_loss_iterations=5, batching=TaskBatching(vectorize, chunk_size=2))


@pytest.mark.parametrize("every", [1, 2, 3, 5])
def test_any_spacing_of_kept_parameters_equals_stored(every):
    """Parameters kept every k steps, the others recomputed segment by segment (with the multi-step loss,
    which needs the query gradient at every step, and learned rates)."""
    stored, _, _ = grads_after_meta_backward(conv_bn, F.cross_entropy, image_tasks(), iteration=3, inner_lr=step_rule("per_layer_step", 0.3),
                                             inner_steps=5, multi_step_loss_iterations=10)
    got, _, _ = grads_after_meta_backward(conv_bn, F.cross_entropy, image_tasks(), iteration=3, inner_lr=step_rule("per_layer_step", 0.3),
                                          inner_steps=5, multi_step_loss_iterations=10,
                                          recompute_inner_steps=True, recompute_keep_every=every)
    for name in stored:
        torch.testing.assert_close(got[name], stored[name], rtol=0, atol=1e-10, msg=name)


def test_default_spacing_keeps_fewest_parameters_alive():
    assert [keep_every(s) for s in (1, 2, 3, 4, 5, 10)] == [1, 1, 1, 2, 2, 2]
    assert _live_peak(10, 1) == 9 and _live_peak(10, 2) == 5
    for steps in (10, 20, 50, 100):
        k = keep_every(steps)
        assert _live_peak(steps, k) == min(_live_peak(steps, j) for j in range(1, steps + 1))
        assert _live_peak(steps, k) <= 2 * steps ** 0.5


@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_chunks_smaller_than_the_batch_equal_stored(chunk_size):
    assert_same(conv_bn, F.cross_entropy, image_tasks(t=5), inner_lr=0.3, inner_steps=2,
                batching=TaskBatching(chunk_size=chunk_size))


def test_first_order_is_unaffected():
    """FOMAML, and the first-order phase of derivative-order annealing, take the ordinary path."""
    for kw in ({"first_order": True}, {"first_order_iterations": 5}):
        stored, _, _ = grads_after_meta_backward(conv_bn, F.cross_entropy, image_tasks(), inner_lr=0.3, inner_steps=3,
                                                 **kw)
        recomputed, _, _ = grads_after_meta_backward(conv_bn, F.cross_entropy, image_tasks(), inner_lr=0.3,
                                                     inner_steps=3, recompute_inner_steps=True, **kw)
        for name in stored:
            assert torch.equal(stored[name], recomputed[name]), name
    # After the annealing phase the step is second order and recomputed: still the same gradient.
    assert_same(conv_bn, F.cross_entropy, image_tasks(), iteration=5, inner_lr=0.3, inner_steps=3,
                first_order_iterations=5)


def test_accumulates_like_backward():
    learner = MAML(mlp(), F.mse_loss, 0.1, inner_steps=2, recompute=Recompute())
    learner.zero_grad()
    learner.meta_backward(regression_tasks())
    once = {n: p.grad.clone() for n, p in learner.named_parameters()}
    learner.meta_backward(regression_tasks())
    for n, p in learner.named_parameters():
        torch.testing.assert_close(p.grad, 2 * once[n])


def test_config():
    assert MAMLConfig().recompute_inner_steps is False and MAMLConfig().recompute_keep_every is None
    learner = MAMLConfig(inner_steps=3, recompute_inner_steps=True, recompute_keep_every=2).build(mlp(), F.mse_loss)
    assert learner.recompute_inner_steps and learner.inner_steps == 3 and learner.recompute_keep_every == 2
    assert not MAML(mlp(), F.mse_loss).recompute_inner_steps
    with pytest.raises(ConfigError, match="keep_every"):
        Recompute(keep_every=0)
    # Zero inner steps: nothing to recompute, the ordinary path.
    assert_same(mlp, F.mse_loss, regression_tasks(), inner_lr=0.1, inner_steps=0)


# ------------------------------------------------------------------ memory
peak_allocated_bytes = peak_tensor_bytes


def conv_net():
    torch.manual_seed(0)
    layers, c = [], 1
    for _ in range(3):
        layers += [nn.Conv2d(c, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2)]
        c = 16
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(16 * 2 * 2, 5))


def test_peak_memory_does_not_grow_with_inner_steps():
    """Second order, 10 inner steps against 1: stored keeps every step's activations (≥ 5×),
    recompute keeps one step's (≤ 2×)."""
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(torch.randn(2, 5, 1, 20, 20, generator=g), torch.arange(5).repeat(2, 1),
                      torch.randn(2, 5, 1, 20, 20, generator=g), torch.arange(5).repeat(2, 1))
    peaks = {}
    for recompute in (False, True):
        for steps in (1, 10):
            learner = MAML(conv_net(), F.cross_entropy, 0.1, inner_steps=steps,
                           recompute=Recompute() if recompute else None)
            learner.meta_backward(batch)  # warm-up: lazily allocated state is not the step's memory
            learner.zero_grad()
            peaks[recompute, steps] = peak_allocated_bytes(lambda: learner.meta_backward(batch))
    stored, recomputed = peaks[False, 10] / peaks[False, 1], peaks[True, 10] / peaks[True, 1]
    assert stored >= 5, peaks
    assert recomputed <= 2, peaks


# ------------------------------------------------------------------ ResNet-12
def test_resnet12_shape_and_meta_backward():
    net = ResNet12(3, 5, widths=(4, 6, 8, 10))
    x = torch.randn(2, 3, 84, 84)
    assert net(x).shape == (2, 5)
    assert ResNet12(3, 5).feature_dim == 640
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(torch.randn(2, 5, 3, 84, 84, generator=g), torch.arange(5).repeat(2, 1),
                      torch.randn(2, 5, 3, 84, 84, generator=g), torch.arange(5).repeat(2, 1))
    grads = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        learner = MAML(ResNet12(3, 5, widths=(4, 6, 8, 10)), F.cross_entropy, 0.1, inner_steps=2,
                       recompute=Recompute() if recompute else None)
        out = learner.meta_backward(batch)
        assert out.query_pred.shape == (2, 5, 5) and torch.isfinite(out.loss)
        grads[recompute] = {n: p.grad for n, p in learner.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads[recompute].values())
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-3, atol=1e-5)


def test_resnet12_is_a_fewshot_model_kind():
    from fastmaml.experiments.fewshot import FewShotConfig, build_model

    cfg = FewShotConfig()
    cfg.model.kind = "resnet12"
    net = build_model(cfg, (20, 600, 3, 84, 84))
    assert isinstance(net, ResNet12) and net.in_channels == 3 and net.n_way == cfg.n_way
    assert sum(p.numel() for p in net.parameters()) > 12_000_000
