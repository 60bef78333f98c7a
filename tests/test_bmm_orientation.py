"""core/bmm_orientation.py: narrow batched matmuls computed transposed where timing says so, same values."""

import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

import fastmaml.core.bmm_orientation as O
from fastmaml.core.compiled import CompiledMetaStep, CompileFallbackWarning
from fastmaml.core.maml import MAML
from fastmaml.tasks.batch import TaskBatch

needs_cxx = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                               reason="torch.compile's inductor needs a C++ compiler on a CPU")
needs_pass = pytest.mark.skipif(not O.available(), reason="this torch has no inductor CustomGraphPass (torch < 2.5)")


def traced(a_shape, b_shape, transpose_a=False):
    """An FX graph of bmm (with fake-tensor metadata, as inductor's post-grad graphs have) and real inputs for it."""
    def f(a, b):
        return torch.bmm(a.mT if transpose_a else a, b) * 2.0

    g = torch.Generator().manual_seed(0)
    a = torch.randn(*a_shape, generator=g)
    b = torch.randn(*b_shape, generator=g)
    return make_fx(f, tracing_mode="fake")(a, b), (a, b), f(a, b)


def bmm_count(gm):
    return sum(n.op == "call_function" and n.target is torch.ops.aten.bmm.default for n in gm.graph.nodes)


@needs_pass
@pytest.mark.parametrize("transpose_a", [False, True])
def test_narrow_bmm_is_turned_round_where_faster_and_gives_the_same_values(monkeypatch, transpose_a):
    seen = []
    monkeypatch.setattr(O, "transposed_is_faster", lambda a, b: seen.append((tuple(a.shape), tuple(b.shape))) or True)
    gm, args, want = traced((6, 12, 40) if transpose_a else (6, 40, 12), (6, 12, 5), transpose_a)
    p = O.BmmOrientationPass()
    p(gm.graph)
    gm.recompile()
    assert p.rewritten == 1 and seen == [((6, 40, 12), (6, 12, 5))]
    assert bmm_count(gm) == 1  # one bmm, now computing the transpose
    wide = next(n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.bmm.default)
    assert tuple(wide.meta["val"].shape) == (6, 5, 40)
    torch.testing.assert_close(gm(*args), want, rtol=1e-5, atol=1e-6)


@needs_pass
def test_wide_outputs_are_never_timed_and_slower_turns_are_not_made(monkeypatch):
    calls = []
    monkeypatch.setattr(O, "transposed_is_faster", lambda a, b: calls.append(1) or False)
    wide, _, _ = traced((4, 5, 8), (4, 8, 30))  # output [4, 5, 30]: wider than tall, left alone untimed
    narrow, args, want = traced((4, 30, 8), (4, 8, 5))  # narrow, but timing says no
    p = O.BmmOrientationPass()
    p(wide.graph)
    assert calls == []
    p(narrow.graph)
    narrow.recompile()
    assert calls == [1] and p.rewritten == 0
    torch.testing.assert_close(narrow(*args), want)


def test_each_shape_is_timed_once_and_needs_a_clear_gain(monkeypatch):
    monkeypatch.setattr(O, "_verdicts", {})
    timings = iter([3.0, 1.0, 1.1, 1.0])  # plain, turned for the first shape; then the second shape
    monkeypatch.setattr(O, "_seconds", lambda fn: next(timings))
    a, b = torch.empty(3, 20, 7), torch.empty(3, 7, 4)
    assert O.transposed_is_faster(a, b) is True  # 3x faster turned round
    assert O.transposed_is_faster(a, b) is True  # cached: no more timings drawn
    c = torch.empty(3, 20, 7).mT.contiguous().mT  # same shape, other strides: its own verdict
    assert O.transposed_is_faster(c, b) is False  # 1.1x is inside the noise margin (MIN_GAIN)
    assert list(timings) == []  # exactly four timings were taken


@pytest.mark.slow
@needs_cxx
@needs_pass
@pytest.mark.parametrize("dynamic_shots", [False, True])
def test_inductor_step_with_turned_bmm_equals_eager(monkeypatch, dynamic_shots):
    """The real thing: inductor compiles the second-order step with every narrow bmm turned round (forced, not
    timed), and the fused step gives eager's parameters; with a symbolic K too (judged at the K compiled for)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(O, "transposed_is_faster", lambda a, b: True)

    def make():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))

    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        xs, xq = torch.rand(6, 10, 1, generator=g) * 10 - 5, torch.rand(6, 10, 1, generator=g) * 10 - 5
        batches.append(TaskBatch(xs, torch.sin(xs), xq, torch.sin(xq)))
    ref, new = MAML(make(), F.mse_loss, 0.01, 1), MAML(make(), F.mse_loss, 0.01, 1)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    for b in batches:
        opt.zero_grad(set_to_none=True)
        ref.meta_backward(b)
        opt.step()
    torch._dynamo.reset()
    step = CompiledMetaStep(new, torch.optim.Adam(new.parameters(), lr=1e-3), dynamic_shots=dynamic_shots)
    with warnings.catch_warnings(), inductor_config.patch(fx_graph_cache=False):  # compile here: the pass runs
        warnings.simplefilter("error", CompileFallbackWarning)
        for b in batches:
            step.step(b)
    torch._dynamo.reset()
    assert step.bmm_pass is not None and step.bmm_pass.rewritten >= 1
    for p, q in zip(ref.parameters(), new.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
