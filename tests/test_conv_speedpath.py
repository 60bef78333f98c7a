"""ConvNet(pool_before_relu=True): same outputs, same second-order meta-gradient, same state_dict."""

import pytest
import torch
import torch.nn.functional as F

from fastmaml.core.maml import MAML
from fastmaml.models.conv import ConvNet
from fastmaml.tasks.batch import TaskBatch


def _batch(tasks=3, n_way=3, q=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(n_way).expand(tasks, -1).contiguous()
    yq = torch.arange(n_way).repeat(q).expand(tasks, -1).contiguous()
    return TaskBatch(torch.rand(tasks, n_way, 1, size, size, generator=g, dtype=torch.float64), ys,
                     torch.rand(tasks, n_way * q, 1, size, size, generator=g, dtype=torch.float64), yq)


def _run(pool_before_relu, strided, steps, batch):
    torch.manual_seed(0)
    net = ConvNet(1, 3, hidden=4, image_size=16, strided=strided, pool_before_relu=pool_before_relu).double()
    with torch.no_grad():  # non-trivial BN affine values
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    learner = MAML(net, F.cross_entropy, inner_lr=0.3, inner_steps=steps)
    out = learner.meta_backward(batch)
    return net, out, {n: p.grad.clone() for n, p in learner.named_parameters()}


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_same_outputs_and_meta_gradient(strided, steps):
    batch = _batch()
    ref_net, ref, ref_g = _run(False, strided, steps, batch)
    net, out, g = _run(True, strided, steps, batch)
    assert torch.equal(ref_net(batch.query_x[0]), net(batch.query_x[0]))
    torch.testing.assert_close(out.query_pred, ref.query_pred, rtol=1e-12, atol=1e-12)
    assert g.keys() == ref_g.keys()
    for name in g:
        torch.testing.assert_close(g[name], ref_g[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("strided", [False, True])
def test_state_dict_identical(strided):
    a = ConvNet(3, 5, hidden=8, image_size=84, strided=strided).state_dict()
    b = ConvNet(3, 5, hidden=8, image_size=84, strided=strided, pool_before_relu=True).state_dict()
    assert [(k, v.shape) for k, v in a.items()] == [(k, v.shape) for k, v in b.items()]
    ConvNet(3, 5, hidden=8, image_size=84, strided=strided, pool_before_relu=True).load_state_dict(a)
