"""Correctness of the MAML engine against independent computations."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.core.batchnorm import BatchStatNorm
from fastmaml.core.batch import TaskBatching
from fastmaml.core.maml import MAML, MAMLConfig, accuracy
from fastmaml.core.step_size import Fixed, from_config as step_rule
from fastmaml.errors import ConfigError, DataError
from fastmaml.tasks.batch import TaskBatch
from fastmaml.tasks.sinusoid import SinusoidTasks


def linear_tasks(t=3, n=6, d=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.randn(t, n, d, generator=g, dtype=dtype), torch.randn(t, n + 2, d, generator=g, dtype=dtype)
    ys, yq = torch.randn(t, n, 1, generator=g, dtype=dtype), torch.randn(t, n + 2, 1, generator=g, dtype=dtype)
    return TaskBatch(xs, ys, xq, yq)


def mlp(dtype=torch.float64, d_in=1):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)


def meta_grads(learner, batch):
    learner.zero_grad()
    learner(batch).loss.backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("steps, scale", [(1, 1.0), (3, 1.0), (3, 0.5)])
@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_second_order_matches_hand_derived_linear_regression(steps, scale, vectorize):
    """Linear model, MSE: ∇L = (2/n)Xᵀ(Xw − y), H = (2/n)XᵀX, so the meta-gradient is
    Π_s (I − α_s H) ∇L_q(w_S) exactly; computed here with explicit matrices, no autograd.
    α_0 = α, later steps α·``later`` (``Fixed(α, later=...)``)."""
    alpha, batch = 0.1, linear_tasks()
    model = nn.Linear(4, 1, bias=False).double()
    learner = MAML(model, F.mse_loss, inner_lr=Fixed(alpha, later=scale), inner_steps=steps,
                   batching=TaskBatching(vectorize))
    got = meta_grads(learner, batch)["model.weight"].view(-1)

    w0 = model.weight.detach().view(-1, 1)
    rates = [alpha] + [alpha * scale] * (steps - 1)
    expected = torch.zeros(4, dtype=torch.float64)
    for i in range(batch.num_tasks):
        xs, ys, xq, yq = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        hs = 2 / xs.shape[0] * xs.T @ xs
        w, jac = w0.clone(), torch.eye(4, dtype=torch.float64)
        for rate in rates:
            w = w - rate * (2 / xs.shape[0] * xs.T @ (xs @ w - ys))
            jac = (torch.eye(4, dtype=torch.float64) - rate * hs) @ jac
        gq = 2 / xq.shape[0] * xq.T @ (xq @ w - yq)
        expected += (jac @ gq).view(-1) / batch.num_tasks
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_later_step_scale_needs_a_fixed_positive_rate():
    with pytest.raises(ConfigError, match="must be > 0"):
        Fixed(0.1, later=0.0)
    # Configs written before maml.step_size: the old keys map to a rule, and a scaled learned rate is refused.
    assert MAMLConfig.upgrade_config({"inner_lr_mode": "fixed", "later_step_scale": 0.5})["step_size"] == "fixed(later=0.5)"
    assert step_rule("fixed(later=0.5)", 0.1) == Fixed(0.1, later=0.5)
    with pytest.raises(ConfigError, match="scales a fixed α"):
        MAMLConfig.upgrade_config({"inner_lr_mode": "per_layer_step", "later_step_scale": 0.5})


def test_first_order_is_query_gradient_at_adapted_params():
    batch = linear_tasks(t=2)
    model = mlp(d_in=4)
    learner = MAML(model, F.mse_loss, inner_lr=0.05, inner_steps=2, first_order=True)
    got = meta_grads(learner, batch)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(batch.num_tasks):
        adapted = learner.adapt(batch.support_x[i], batch.support_y[i], steps=2)
        adapted = {k: v.clone().requires_grad_(True) for k, v in adapted.items()}
        loss = F.mse_loss(torch.func.functional_call(model, adapted, (batch.query_x[i],)), batch.query_y[i])
        for k, g in zip(adapted, torch.autograd.grad(loss, list(adapted.values()))):
            expected[k] += g / batch.num_tasks
    for k in expected:
        torch.testing.assert_close(got["model." + k], expected[k], rtol=1e-10, atol=1e-12)


def exact_objective(model, batch, alpha, steps, params):
    """The MAML objective evaluated directly (plain autograd, loop over tasks): for finite differences."""
    total = 0.0
    for i in range(batch.num_tasks):
        p = {k: v.detach().requires_grad_() for k, v in params.items()}
        for _ in range(steps):
            loss = F.mse_loss(torch.func.functional_call(model, p, (batch.support_x[i],)), batch.support_y[i])
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=True)
            p = {k: v - alpha * g for (k, v), g in zip(p.items(), grads)}
        total = total + F.mse_loss(torch.func.functional_call(model, p, (batch.query_x[i],)), batch.query_y[i])
    return total / batch.num_tasks


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_meta_gradient_matches_finite_differences(vectorize):
    g = torch.Generator().manual_seed(3)
    batch, _, _ = SinusoidTasks().sample(4, g, k_support=5, k_query=7)
    batch = TaskBatch(*(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)))
    model = mlp()
    learner = MAML(model, F.mse_loss, inner_lr=0.02, inner_steps=2, batching=TaskBatching(vectorize))
    grads = meta_grads(learner, batch)
    params = {k: v.detach() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
        eps = 1e-6
        plus = exact_objective(model, batch, 0.02, 2, {k: v + eps * direction[k] for k, v in params.items()})
        minus = exact_objective(model, batch, 0.02, 2, {k: v - eps * direction[k] for k, v in params.items()})
        fd = (plus - minus).item() / (2 * eps)
        analytic = sum((grads["model." + k] * direction[k]).sum() for k in params).item()
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_equals_loop_float32_sinusoid(first_order):
    g = torch.Generator().manual_seed(0)
    batch, _, _ = SinusoidTasks().sample(25, g)
    torch.manual_seed(0)
    grads = []
    for vec in ("vmap", "loop"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
        grads.append(meta_grads(MAML(model, F.mse_loss, 0.01, 1, first_order=first_order, batching=TaskBatching(vec)), batch))
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=0, atol=1e-5)
    assert max(v.abs().max() for v in grads[0].values()) > 1e-2  # the comparison is not between zeros


def conv_bn_net(dtype=torch.float64):
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 5 * 5, 3),
    ).to(dtype)


def image_tasks(dtype=torch.float64, t=3):
    g = torch.Generator().manual_seed(4)
    xs, xq = torch.randn(t, 6, 1, 5, 5, generator=g, dtype=dtype), torch.randn(t, 9, 1, 5, 5, generator=g, dtype=dtype)
    ys, yq = torch.randint(0, 3, (t, 6), generator=g), torch.randint(0, 3, (t, 9), generator=g)
    return TaskBatch(xs, ys, xq, yq)


def test_batchnorm_vmap_equals_loop_and_finite_differences():
    """BatchNorm (incl. one with running stats, which MAML replaces by batch statistics):
    vmap and loop agree and both match finite differences of the exact objective."""
    batch = image_tasks()
    grads = {}
    for vec in ("vmap", "loop"):
        learner = MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.3, inner_steps=1, batching=TaskBatching(vec))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in learner.modules())
        assert sum(isinstance(m, BatchStatNorm) for m in learner.modules()) == 2
        grads[vec] = meta_grads(learner, batch)
    for k in grads["vmap"]:
        torch.testing.assert_close(grads["vmap"][k], grads["loop"][k], rtol=1e-9, atol=1e-12)
    # A conv bias right before batch-statistics BN cannot change any output: its exact gradient is 0.
    assert grads["vmap"]["model.0.bias"].abs().max() < 1e-12
    assert grads["vmap"]["model.0.weight"].abs().max() > 1e-4

    learner = MAML(conv_bn_net(), F.cross_entropy, inner_lr=0.3, inner_steps=1)
    params = {k: v.detach() for k, v in learner.model.named_parameters()}
    direction = {k: torch.randn_like(v) for k, v in params.items()}

    def objective(p):
        total = 0.0
        for i in range(batch.num_tasks):
            loss = F.cross_entropy(torch.func.functional_call(learner.model, p, (batch.support_x[i],)), batch.support_y[i])
            gs = torch.autograd.grad(loss, list(p.values()), create_graph=True)
            q = {k: v - 0.3 * g for (k, v), g in zip(p.items(), gs)}
            total = total + F.cross_entropy(torch.func.functional_call(learner.model, q, (batch.query_x[i],)), batch.query_y[i])
        return total / batch.num_tasks

    eps = 1e-6
    fd = (objective({k: (v + eps * direction[k]).requires_grad_() for k, v in params.items()})
          - objective({k: (v - eps * direction[k]).requires_grad_() for k, v in params.items()})).item() / (2 * eps)
    analytic = sum((grads["vmap"]["model." + k] * direction[k]).sum() for k in params).item()
    assert analytic == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize("shape", [(6, 4), (6, 4, 5), (6, 4, 3, 5)])
def test_batchstatnorm_equals_torch_batchnorm_in_training_mode(shape):
    """Same output and first-order gradients as nn.BatchNorm with batch statistics, any rank."""
    torch.manual_seed(0)
    bn_cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)]
    ref = bn_cls(4, track_running_stats=False).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0), ref.bias.normal_()
    ours = BatchStatNorm.from_batchnorm(ref)
    assert ours.weight is ref.weight
    x = (torch.randn(shape).double() * 3 + 1).requires_grad_()
    out_ref, out = ref(x), ours(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    w = torch.randn(shape).double()
    g_ref = torch.autograd.grad((out_ref * w).sum(), (x, ref.weight, ref.bias))
    g = torch.autograd.grad((out * w).sum(), (x, ours.weight, ours.bias))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_native_batchnorm_affine_under_vmap_is_what_we_avoid():
    """Documents the upstream problem our BatchStatNorm works around: F.batch_norm with weight/bias
    under vmap gives second-order gradients that differ from the loop. If this test starts failing,
    PyTorch fixed it, and the workaround may be dropped."""
    from torch.func import grad, vmap

    torch.manual_seed(0)
    xs, xq, tq = torch.randn(3, 5, 4, 3, 3).double(), torch.randn(3, 7, 4, 3, 3).double(), torch.randn(3, 7, 4, 3, 3).double()
    p0 = {"s": torch.rand(4).double() + 0.5, "c": torch.randn(4).double(), "w": torch.rand(4).double() + 0.5,
          "b": torch.randn(4).double()}

    def net(p, x):
        h = x * p["s"].view(1, -1, 1, 1) + p["c"].view(1, -1, 1, 1)
        return torch.tanh(F.batch_norm(h, None, None, p["w"], p["b"], True))

    def task(p, xs, xq, t):
        g = grad(lambda p: (net(p, xs) ** 2).mean())(p)
        return ((net({k: p[k] - 0.4 * g[k] for k in p}, xq) - t) ** 2).mean()

    loop = grad(lambda p: torch.stack([task(p, xs[i], xq[i], tq[i]) for i in range(3)]).mean())(p0)
    batched = grad(lambda p: vmap(task, in_dims=(None, 0, 0, 0))(p, xs, xq, tq).mean())(p0)
    if (loop["s"] - batched["s"]).abs().max() < 1e-9:
        pytest.skip(f"torch {torch.__version__} computes this correctly: the BatchStatNorm workaround is optional")
    assert (loop["s"] - batched["s"]).abs().max() > 1e-6


@pytest.mark.parametrize("mode", ["per_layer_step", "per_element"])
def test_learned_inner_lrs_receive_correct_gradients(mode):
    batch = linear_tasks(t=2)
    model = mlp(d_in=4)
    learner = MAML(model, F.mse_loss, inner_lr=step_rule(mode, 0.05), inner_steps=2)
    grads = meta_grads(learner, batch)
    lr_grads = {k: v for k, v in grads.items() if k.startswith("inner_lrs.")}
    assert len(lr_grads) == len(list(model.parameters()))
    assert all(v.abs().max() > 0 for v in lr_grads.values())
    name = "inner_lrs." + next(iter(learner.inner_lrs))
    lr = dict(learner.named_parameters())[name]
    assert lr.shape == ((2,) if mode == "per_layer_step" else next(model.parameters()).shape)
    # Finite difference on one learned rate element.
    eps = 1e-6
    with torch.no_grad():
        flat = lr.view(-1)
        flat[0] += eps
        plus = learner(batch).loss.item()
        flat[0] -= 2 * eps
        minus = learner(batch).loss.item()
        flat[0] += eps
    assert grads[name].view(-1)[0].item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-5, abs=1e-10)


def test_inner_params_restricts_adaptation():
    batch = linear_tasks(t=2)
    model = mlp(d_in=4)
    learner = MAML(model, F.mse_loss, inner_lr=0.1, inner_steps=1, inner_params=["4.weight", "4.bias"])
    adapted = learner.adapt(batch.support_x[0], batch.support_y[0])
    for name, p in model.named_parameters():
        changed = not torch.equal(adapted[name], p.detach())
        assert changed == name.startswith("4."), name
    grads = meta_grads(learner, batch)
    assert grads["model.0.weight"].abs().max() > 0  # body is still meta-learned
    with pytest.raises(ConfigError, match="not trainable parameters"):
        MAML(mlp(), F.mse_loss, inner_params=["nope.weight"])


def test_adaptation_curve_step0_is_unadapted_and_loss_decreases():
    batch = linear_tasks(t=4)
    model = nn.Linear(4, 1).double()
    learner = MAML(model, F.mse_loss, inner_lr=0.05)
    curve = learner.adaptation_curve(batch, steps=5)
    assert curve.losses.shape == (4, 6) and curve.predictions.shape == (4, 6, 8, 1)
    direct = torch.stack([F.mse_loss(model(batch.query_x[i]), batch.query_y[i]) for i in range(4)])
    torch.testing.assert_close(curve.losses[:, 0], direct.detach())
    # Support loss must fall with small steps on a convex problem; query loss follows here on average.
    support_curve = learner.adaptation_curve(TaskBatch(batch.support_x, batch.support_y, batch.support_x, batch.support_y), 5)
    assert (support_curve.losses[:, 1:] < support_curve.losses[:, :-1]).all()


def test_accuracy_metric_in_curve():
    batch = image_tasks(dtype=torch.float32)
    learner = MAML(conv_bn_net(torch.float32), F.cross_entropy, inner_lr=0.5)
    curve = learner.adaptation_curve(batch, steps=2, metrics={"accuracy": accuracy})
    acc = curve.metrics["accuracy"]
    assert acc.shape == (3, 3)
    manual = (curve.predictions.argmax(-1) == batch.query_y.unsqueeze(1)).float().mean(-1)
    torch.testing.assert_close(acc, manual)


def test_bad_inputs_give_clear_errors():
    learner = MAML(nn.Linear(4, 1), F.mse_loss)
    good = linear_tasks(dtype=torch.float32)
    with pytest.raises(DataError, match="empty support set"):
        learner(TaskBatch(good.support_x[:, :0], good.support_y[:, :0], good.query_x, good.query_y))
    with pytest.raises(DataError, match="number of tasks"):
        learner(TaskBatch(good.support_x[:2], good.support_y, good.query_x, good.query_y))
    with pytest.raises(DataError, match="feature shapes"):
        learner(TaskBatch(good.support_x, good.support_y, good.query_x[..., :3], good.query_y))
    with pytest.raises(DataError, match="labels"):
        learner(TaskBatch(good.support_x, good.support_y[:, :2], good.query_x, good.query_y))
    with pytest.raises(DataError, match="empty"):
        learner.adapt(good.support_x[0, :0], good.support_y[0, :0])
    with pytest.raises(ConfigError, match="step-size rule"):
        MAML(nn.Linear(1, 1), F.mse_loss, inner_lr="adaptive")
    with pytest.raises(ConfigError, match="maml.step_size"):
        MAMLConfig(step_size="adaptive").build(nn.Linear(1, 1), F.mse_loss)
    with pytest.raises(ConfigError, match="batching mode 'threads'.*'vmap'.*'loop'"):
        MAML(nn.Linear(1, 1), F.mse_loss, batching=TaskBatching("threads"))
    with pytest.raises(ConfigError, match="maml.vectorize"):
        MAMLConfig(vectorize="threads").build(nn.Linear(1, 1), F.mse_loss)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="chunk_size must be a positive number of tasks"):
            TaskBatching(chunk_size=bad)
    with pytest.raises(ConfigError, match="batching must be a TaskBatching"):
        MAML(nn.Linear(1, 1), F.mse_loss, batching="loop")


def test_config_keys_vectorize_and_chunk_size_build_the_task_batching():
    """Configs keep maml.vectorize / maml.chunk_size; MAMLConfig.build turns them into MAML's TaskBatching."""
    assert MAMLConfig().build(nn.Linear(1, 1), F.mse_loss).batching == TaskBatching("vmap", None)
    learner = MAMLConfig(vectorize="loop", chunk_size=3).build(nn.Linear(1, 1), F.mse_loss)
    assert learner.batching == TaskBatching("loop", chunk_size=3)
    assert learner.with_inner_lr(0.5).batching == learner.batching


def test_chunked_vmap_matches_full():
    batch = image_tasks(dtype=torch.float64, t=5)
    a = meta_grads(MAML(conv_bn_net(), F.cross_entropy, 0.3, batching=TaskBatching(chunk_size=2)), batch)
    b = meta_grads(MAML(conv_bn_net(), F.cross_entropy, 0.3), batch)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 5])
@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_meta_backward_in_chunks_equals_one_backward(chunk_size, vectorize):
    """Chunk-by-chunk backward accumulates the same meta-gradient as one pass over all 5 tasks
    (chunk sizes that do and do not divide the batch), second order, with BatchNorm and learned rates."""
    batch = image_tasks(dtype=torch.float64, t=5)
    ref = MAML(conv_bn_net(), F.cross_entropy, step_rule("per_layer_step", 0.3), inner_steps=2, batching=TaskBatching(vectorize))
    expected = meta_grads(ref, batch)
    expected_out = ref(batch)
    learner = MAML(conv_bn_net(), F.cross_entropy, step_rule("per_layer_step", 0.3), inner_steps=2,
                   batching=TaskBatching(vectorize, chunk_size))
    learner.zero_grad()
    out = learner.meta_backward(batch)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, expected_out.loss.detach())
    torch.testing.assert_close(out.task_losses, expected_out.task_losses)
    assert out.query_pred.shape == expected_out.query_pred.shape
    got = {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys() and any("inner_lrs" in k for k in got)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-9, atol=1e-12)


def test_meta_backward_accumulates_like_backward():
    """Like loss.backward(), a second call adds to .grad (gradient accumulation over batches)."""
    batch = linear_tasks()
    learner = MAML(mlp(d_in=4), F.mse_loss, 0.1, batching=TaskBatching(chunk_size=2))
    learner.zero_grad()
    learner.meta_backward(batch)
    once = {n: p.grad.clone() for n, p in learner.named_parameters()}
    learner.meta_backward(batch)
    for n, p in learner.named_parameters():
        torch.testing.assert_close(p.grad, 2 * once[n])


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_safe_adaptation_never_raises_the_support_loss_and_equals_plain_steps_where_they_help(vectorize):
    """With the query set equal to the support set the curve is the support loss. A step size that makes
    plain gradient descent diverge on this quadratic is backtracked; a small one is taken unchanged."""
    b = linear_tasks(t=4)
    batch = TaskBatch(b.support_x, b.support_y, b.support_x, b.support_y)
    model = nn.Linear(4, 1, bias=False).double()
    too_big = MAML(model, F.mse_loss, inner_lr=3.0, batching=TaskBatching(vectorize))
    plain = too_big.adaptation_curve(batch, steps=6).losses
    safe = too_big.adaptation_curve(batch, steps=6, safe_backtracks=8).losses
    assert (plain[:, -1] > 100 * plain[:, 0]).all()  # the paper's plain steps blow up here
    assert (safe[:, 1:] <= safe[:, :-1]).all() and (safe[:, -1] < safe[:, 0]).all()  # never up, and it learns
    small = MAML(model, F.mse_loss, inner_lr=0.01, batching=TaskBatching(vectorize))
    torch.testing.assert_close(small.adaptation_curve(batch, steps=4, safe_backtracks=3).losses,
                               small.adaptation_curve(batch, steps=4).losses, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="safe_backtracks"):
        small.adaptation_curve(batch, steps=1, safe_backtracks=-1)
