"""The compiled meta-step (core/compiled.py) against the eager reference, MAML.meta_backward + torch.optim.Adam.

Fast tests trace the step with torch.compile(backend="aot_eager") (Dynamo's full-graph capture and
AOTAutograd, no C++ compilation); the inductor tests (C++ kernels, tens of seconds on 2 cores) are
marked slow and skipped where no C++ compiler is found. The conv net under inductor runs only with
FASTMAML_COMPILE_CONV=1 (minutes of compilation on 2 cores).
"""

import os
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastmaml.core.compiled import CompiledMetaStep, CompileFallbackWarning, unsupported_reason
from fastmaml.core.batch import TaskBatching
from fastmaml.core.maml import MAML, MAMLPlusPlus
from fastmaml.core.step_size import from_config as step_rule
from fastmaml.models.conv import ConvNet
from fastmaml.tasks.batch import TaskBatch

HAS_CXX = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="torch.compile's inductor needs a C++ compiler on a CPU")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # each test compiles its own closures; never share cache entries between tests
    yield
    torch._dynamo.reset()


def mlp(dtype=torch.float64):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)


def regression_batch(t=4, n=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.randn(t, n, 1, generator=g, dtype=dtype), torch.randn(t, n + 1, 1, generator=g, dtype=dtype)
    return TaskBatch(xs, torch.sin(3 * xs), xq, torch.sin(3 * xq))


def classification_batch(t=3, n_way=3, image=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_way).expand(t, -1).contiguous()
    return TaskBatch(torch.rand(t, n_way, 1, image, image, generator=g, dtype=torch.float64), y,
                     torch.rand(t, n_way, 1, image, image, generator=g, dtype=torch.float64), y)


def learner_pair(make, **kw):
    return MAML(make(), **kw), MAML(make(), **kw)


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_same_grads(ref, got, rtol=1e-9, atol=1e-11):
    assert ref.keys() == got.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=rtol, atol=atol, msg=lambda m: f"{n}: {m}")


VARIANTS = {
    "maml_2nd_order_2_steps": dict(loss_fn=F.mse_loss, inner_lr=0.1, inner_steps=2),
    "fomaml": dict(loss_fn=F.mse_loss, inner_lr=0.1, inner_steps=2, first_order=True),
    "lslr_per_layer_step": dict(loss_fn=F.mse_loss, inner_lr=step_rule("per_layer_step", 0.1), inner_steps=2),
    "metasgd_per_element": dict(loss_fn=F.mse_loss, inner_lr=step_rule("per_element", 0.1), inner_steps=1),
    "anil_head_only": dict(loss_fn=F.mse_loss, inner_lr=0.1, inner_steps=2, inner_params=["4.weight", "4.bias"]),
    "multi_step_loss": dict(loss_fn=F.mse_loss, inner_lr=0.1, inner_steps=3, mamlpp=MAMLPlusPlus(multi_step_loss_iterations=100)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compiled_meta_gradient_equals_eager(variant):
    kw = VARIANTS[variant]
    ref, new = learner_pair(mlp, **kw)
    for learner in (ref, new):
        learner.set_iteration(30)  # inside the multi-step-loss annealing where it is on
    batch = regression_batch()
    ref.meta_backward(batch)
    step = CompiledMetaStep(new, backend="aot_eager", fuse_optimizer=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        out = step.backward(batch)
    assert step.compiled
    assert_same_grads(grads(ref), grads(new))
    torch.testing.assert_close(out.loss, ref(batch).loss.detach())


@pytest.mark.slow
def test_conv_net_meta_gradient_equals_eager():
    """Finn's conv net (strided, batch-statistics BatchNorm) in miniature: vmap of convolutions in the graph."""
    def make():
        torch.manual_seed(2)
        return ConvNet(1, 3, hidden=4, image_size=8, strided=True, global_pool=True).double()

    ref, new = learner_pair(make, loss_fn=F.cross_entropy, inner_lr=0.4, inner_steps=1)
    batch = classification_batch(image=8)
    ref.meta_backward(batch)
    CompiledMetaStep(new, backend="aot_eager", fuse_optimizer=False).backward(batch)
    assert_same_grads(grads(ref), grads(new))


def test_chunked_compiled_gradient_equals_eager():
    ref, new = learner_pair(mlp, loss_fn=F.mse_loss, inner_lr=0.1, inner_steps=1,
                            batching=TaskBatching(chunk_size=3))
    batch = regression_batch(t=6)
    ref.meta_backward(batch)
    CompiledMetaStep(new, backend="aot_eager", fuse_optimizer=False).backward(batch)
    assert_same_grads(grads(ref), grads(new))


def eager_adam_run(learner, batches, lrs=None, clip=None):
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    for i, b in enumerate(batches):
        if lrs:
            opt.param_groups[0]["lr"] = lrs[i]
        opt.zero_grad(set_to_none=True)
        learner.meta_backward(b)
        if clip:
            torch.nn.utils.clip_grad_value_(learner.parameters(), clip)
        opt.step()
    return opt


@pytest.mark.parametrize("inner_lr_mode", ["fixed", "per_layer_step"])
def test_fused_adam_steps_equal_eager_adam(inner_lr_mode):
    kw = dict(loss_fn=F.mse_loss, inner_lr=step_rule(inner_lr_mode, 0.1), inner_steps=1)
    ref, new = learner_pair(mlp, **kw)
    batches = [regression_batch(seed=s) for s in range(5)]
    lrs = [1e-2, 1e-2, 5e-3, 2e-3, 1e-3]  # a schedule: the rate is a graph input, no recompiles
    ref_opt = eager_adam_run(ref, batches, lrs, clip=0.5)
    opt = torch.optim.Adam(new.parameters(), lr=1e-2)
    step = CompiledMetaStep(new, opt, backend="aot_eager", grad_clip=0.5)
    assert step.fused
    for b, lr in zip(batches, lrs):
        step.step(b, lr=lr)
    for (n, p), q in zip(ref.named_parameters(), new.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-7, atol=1e-9, msg=lambda m: f"{n}: {m}")
    # the optimizer state is torch.optim.Adam's own: a checkpoint of it resumes an eager (or compiled) run
    ref_state, state = ref_opt.state_dict(), opt.state_dict()
    for k in ref_state["state"]:
        for field in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state["state"][k][field], ref_state["state"][k][field], rtol=1e-7, atol=1e-12)


def test_resume_from_state_dict_continues_identically():
    ref, new = learner_pair(mlp, loss_fn=F.mse_loss, inner_lr=0.1, inner_steps=1)
    batches = [regression_batch(seed=s) for s in range(4)]
    eager_adam_run(ref, batches)
    opt = torch.optim.Adam(new.parameters(), lr=1e-2)
    first = CompiledMetaStep(new, opt, backend="aot_eager")
    for b in batches[:2]:
        first.step(b)
    # "resume": a fresh optimizer loaded from the state dict, a fresh compiled step
    opt2 = torch.optim.Adam(new.parameters(), lr=1e-2)
    opt2.load_state_dict(opt.state_dict())
    step = CompiledMetaStep(new, opt2, backend="aot_eager")
    for b in batches[2:]:
        step.step(b)
    for p, q in zip(ref.parameters(), new.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-7, atol=1e-9)


def test_no_recompile_across_batches_and_rates_and_nan_applies_nothing():
    from torch._dynamo.utils import counters

    learner = MAML(mlp(), F.mse_loss, inner_lr=0.1)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    step = CompiledMetaStep(learner, opt, backend="aot_eager")
    step.step(regression_batch(seed=0), lr=1e-3)
    graphs = counters["stats"]["unique_graphs"]
    for s in range(1, 5):
        learner.set_iteration(s)
        step.step(regression_batch(seed=s), lr=1e-3 / s)
    assert counters["stats"]["unique_graphs"] == graphs, "a new graph was compiled for same-shape batches"

    # a non-finite meta-loss applies nothing: parameters and Adam state stay as they were
    before = [p.detach().clone() for p in learner.parameters()]
    state = [(s["exp_avg"].clone(), int(s["step"])) for s in opt.state.values()]
    bad = regression_batch(seed=9)
    bad.query_y[0, 0] = float("nan")
    assert not torch.isfinite(step.step(bad).loss)
    for p, b in zip(learner.parameters(), before):
        assert torch.equal(p, b)
    for s, (m, n) in zip(opt.state.values(), state):
        assert torch.equal(s["exp_avg"], m) and int(s["step"]) == n == 5


def test_unsupported_learner_falls_back_with_one_warning():
    ref, new = learner_pair(mlp, loss_fn=F.mse_loss, inner_lr=0.1, batching=TaskBatching("loop"))
    opt = torch.optim.Adam(new.parameters(), lr=1e-2)
    step = CompiledMetaStep(new, opt, backend="aot_eager")
    assert not step.compiled and "batching mode 'loop'" in step.fallback_reason
    batches = [regression_batch(seed=s) for s in range(2)]
    with pytest.warns(CompileFallbackWarning, match="batching mode"):
        step.step(batches[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # once only
        step.step(batches[1])
    eager_adam_run(ref, batches)
    for p, q in zip(ref.parameters(), new.parameters()):
        torch.testing.assert_close(q, p)


def test_per_step_batchnorm_falls_back():
    def make():
        torch.manual_seed(2)
        return ConvNet(1, 3, hidden=4, image_size=12, strided=True, global_pool=True).double()

    learner = MAML(make(), F.cross_entropy, inner_lr=0.4, mamlpp=MAMLPlusPlus(per_step_bn=True))
    assert "per-step BatchNorm" in unsupported_reason(learner)
    step = CompiledMetaStep(learner, torch.optim.Adam(learner.parameters()), backend="aot_eager")
    with pytest.warns(CompileFallbackWarning, match="per-step BatchNorm"):
        step.step(classification_batch())


def test_compile_failure_falls_back_to_eager():
    @torch.compiler.disable
    def opaque(x):  # fine in eager (and under vmap), a graph break for torch.compile(fullgraph=True)
        return torch.tanh(x)

    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1).double()

        def forward(self, x):
            return opaque(self.lin(x))

    torch.manual_seed(0)
    ref = MAML(Opaque(), F.mse_loss, inner_lr=0.1)
    torch.manual_seed(0)
    new = MAML(Opaque(), F.mse_loss, inner_lr=0.1)
    opt = torch.optim.Adam(new.parameters(), lr=1e-2)
    step = CompiledMetaStep(new, opt, backend="aot_eager")
    batches = [regression_batch(seed=s) for s in range(2)]
    with pytest.warns(CompileFallbackWarning, match="torch.compile failed"):
        step.step(batches[0])
    assert not step.compiled
    step.step(batches[1])
    eager_adam_run(ref, batches)
    for p, q in zip(ref.parameters(), new.parameters()):
        torch.testing.assert_close(q, p)


@pytest.mark.slow
@needs_cxx
def test_inductor_fused_step_equals_eager_float32():
    """The real thing: inductor's C++ kernels, float32, fused gradient + Adam (a small MLP: compile time)."""
    def make():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))

    batches = [regression_batch(t=5, n=10, seed=s, dtype=torch.float32) for s in range(3)]
    ref, new = learner_pair(make, loss_fn=F.mse_loss, inner_lr=0.01, inner_steps=1)
    eager_adam_run(ref, batches)
    step = CompiledMetaStep(new, torch.optim.Adam(new.parameters(), lr=1e-2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        for b in batches:
            step.step(b)
    for p, q in zip(ref.parameters(), new.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@needs_cxx
@pytest.mark.skipif(os.environ.get("FASTMAML_COMPILE_CONV") != "1",
                    reason="minutes of inductor compilation on 2 cores; set FASTMAML_COMPILE_CONV=1")
@pytest.mark.xfail(strict=False, reason="known: inductor's float32 second-order conv-net meta-gradient differs from "
                   "eager by up to ~2% of max|g| (float64 and FOMAML exact; see core/compiled.py)")
def test_inductor_conv_net_gradient_equals_eager():
    def make():
        torch.manual_seed(2)
        return ConvNet(1, 5, hidden=64, image_size=28, strided=True, global_pool=True)

    g = torch.Generator().manual_seed(0)
    y = torch.arange(5).expand(8, -1).contiguous()
    batch = TaskBatch(torch.rand(8, 5, 1, 28, 28, generator=g), y, torch.rand(8, 5, 1, 28, 28, generator=g), y)
    ref, new = learner_pair(make, loss_fn=F.cross_entropy, inner_lr=0.4, inner_steps=1)
    ref.meta_backward(batch)
    CompiledMetaStep(new, fuse_optimizer=False).backward(batch)
    assert_same_grads(grads(ref), grads(new), rtol=1e-3, atol=1e-4)


def test_training_loop_compile_flag_trains_and_resumes(tmp_path, monkeypatch):
    """train.compile=true: same parameters as the eager loop; checkpoints hold torch.optim.Adam's state, and a
    run stopped and resumed ends where an uninterrupted compiled run ends."""
    import fastmaml.core.compiled as C
    from fastmaml.config import load_config
    from fastmaml.experiments import sinusoid as S
    from fastmaml.train.checkpoint import load_checkpoint

    monkeypatch.setattr(C, "DEFAULT_BACKEND", "aot_eager")

    def cfg(iterations, compile):
        c = load_config(S.SinusoidConfig, None, ["train.progress=false", "train.threads=1", "train.meta_batch_size=5",
                                                 f"train.compile={str(compile).lower()}",
                                                 "train.checkpoint_every=4", "train.log_every=4"])
        c.train.iterations = iterations
        return c

    def last(run):
        return load_checkpoint(run / "checkpoints" / "last.safetensors")

    S.train(cfg(8, False), tmp_path / "eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        S.train(cfg(8, True), tmp_path / "compiled")
        S.train(cfg(4, True), tmp_path / "split")
        S.train(cfg(8, True), tmp_path / "split", resume=True)
    eager, comp, split = last(tmp_path / "eager"), last(tmp_path / "compiled"), last(tmp_path / "split")
    for k in eager["model"]:
        torch.testing.assert_close(comp["model"][k], eager["model"][k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(split["model"][k], comp["model"][k], rtol=1e-6, atol=1e-7)
    assert comp["optimizer"]["state"].keys() == eager["optimizer"]["state"].keys()


def sinusoid_run(tmp_path, name, kind="maml", k=5, overrides=()):
    """A few sinusoid meta-iterations (quick preset's model) with the experiment's defaults plus ``overrides``;
    returns the final parameters and the logged losses."""
    import json

    from fastmaml.config import load_config
    from fastmaml.experiments import sinusoid as S
    from fastmaml.train.checkpoint import load_checkpoint

    cfg = load_config(S.SinusoidConfig, S.PRESETS / "sinusoid_quick.yaml",
                      [f"k_shot={k}", "train.iterations=4", "train.meta_batch_size=5", "train.progress=false",
                       "train.threads=1", "train.checkpoint_every=4", "train.log_every=1", *overrides])
    run = tmp_path / name
    S.train(cfg, run, kind)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return load_checkpoint(run / "checkpoints" / "last.safetensors")["model"], losses


def test_sinusoid_default_compiled_step_equals_eager(tmp_path, monkeypatch, capsys):
    """The sinusoid experiment's default (train.compile=auto, one graph for every K): the same parameters and
    losses as eager for MAML at two K (the second reuses the first's graph) and the pretrained baseline."""
    import fastmaml.core.compiled as C

    monkeypatch.setattr(C, "DEFAULT_BACKEND", "aot_eager")  # Dynamo + AOTAutograd as inductor sees them, no C++
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        for kind, k in (("maml", 5), ("maml", 10), ("pretrained", 5)):
            eager, eager_losses = sinusoid_run(tmp_path, f"eager_{kind}{k}", kind, k, ["train.compile=false"])
            comp, comp_losses = sinusoid_run(tmp_path, f"compiled_{kind}{k}", kind, k)
            for name in eager:
                torch.testing.assert_close(comp[name], eager[name], rtol=1e-5, atol=1e-6)
            assert comp_losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    err = capsys.readouterr().err
    assert err.count("compiled meta-iteration (step, any K, aot_eager)") == 3 and "not used" not in err


def test_sinusoid_compile_failure_falls_back_to_eager_with_one_log_line(tmp_path, monkeypatch, capsys):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no working compiler\nsecond line of a long error")

    eager, eager_losses = sinusoid_run(tmp_path, "eager", overrides=["train.compile=false"])
    monkeypatch.setattr(torch, "compile", broken_compile)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # auto: a log line, not a warning
        fell_back, losses = sinusoid_run(tmp_path, "fallback")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "compiled meta-iteration" in line]
    assert lines == ["[fastmaml] train.compile=auto: compiled meta-iteration not used (torch.compile failed: "
                     "RuntimeError: no working compiler); training eager"]
    assert "Traceback" not in err and "second line" not in err
    for name in eager:
        torch.testing.assert_close(fell_back[name], eager[name])
    assert losses == eager_losses


def test_sinusoid_without_cxx_compiler_trains_eager_with_one_log_line(tmp_path, monkeypatch, capsys):
    import fastmaml.core.compiled as C

    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    sinusoid_run(tmp_path, "no_cxx")
    err = capsys.readouterr().err
    assert err.count("compiled meta-iteration not used (no C++ compiler found") == 1


@pytest.mark.slow
@needs_cxx
def test_inductor_sinusoid_one_graph_for_every_k_equals_eager(tmp_path):
    """The real thing for the sinusoid default: inductor's C++ kernels with a symbolic K, reused at a second K."""
    for k in (5, 20):
        eager, eager_losses = sinusoid_run(tmp_path, f"eager{k}", k=k, overrides=["train.compile=false"])
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)
            comp, comp_losses = sinusoid_run(tmp_path, f"compiled{k}", k=k, overrides=["train.compile=true"])
        for name in eager:
            torch.testing.assert_close(comp[name], eager[name], rtol=1e-4, atol=1e-5)
        assert comp_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-6)


def test_the_first_call_compiles_with_the_cpp_wrapper_on_a_cpu_and_falls_back_to_the_python_one(monkeypatch):
    """The compiling call runs under inductor's cpp_wrapper on a CPU (1.11-1.12x, bench_maml.py); where that compile
    fails, the same call compiles with the Python wrapper, and the step stays compiled (not eager)."""
    import fastmaml.core.compiled as C
    import torch._inductor.config as inductor_config

    seen: list[bool] = []

    def fake_compile(fn, **kw):  # stands in for torch.compile: records the wrapper setting at each call
        def run(*args):
            seen.append(bool(inductor_config.cpp_wrapper))
            if fail_with_cpp and inductor_config.cpp_wrapper:
                raise RuntimeError("C++ wrapper build failed")
            return fn(*args)
        return run

    monkeypatch.setattr(C.torch, "compile", fake_compile)
    for fail_with_cpp in (False, True):
        seen.clear()
        learner = MAML(mlp(torch.float32), loss_fn=F.mse_loss, inner_lr=0.1, inner_steps=1)
        step = CompiledMetaStep(learner, torch.optim.Adam(learner.parameters(), 1e-3), log=lambda m: None)
        assert step.cpp_wrapper  # inductor on a CPU
        batch = regression_batch(dtype=torch.float32)
        step.step(batch)
        step.step(batch)
        assert step.compiled and step.fused
        assert seen == ([True, False, False] if fail_with_cpp else [True, False])  # later calls: the compiled graph
        assert step.cpp_wrapper is (not fail_with_cpp)
    gpu_like = CompiledMetaStep(MAML(mlp(torch.float32), loss_fn=F.mse_loss, inner_lr=0.1), backend="aot_eager")
    assert not gpu_like.cpp_wrapper  # only inductor builds a C++ wrapper
