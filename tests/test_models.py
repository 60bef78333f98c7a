import pytest
import torch
from torch import nn
from torch.func import functional_call

from fastmaml.models import MLP, ConvNet, NonConvNet, conv_output_size


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def conv_count(cin: int, hidden: int, head_in: int, n_way: int) -> int:
    convs = (cin * hidden * 9 + hidden) + 3 * (hidden * hidden * 9 + hidden)
    bns = 4 * 2 * hidden  # affine weight + bias
    return convs + bns + head_in * n_way + n_way


def test_conv_output_sizes():
    assert conv_output_size(28, strided=True) == 2  # 28 -> 14 -> 7 -> 4 -> 2
    assert conv_output_size(28, strided=False) == 1  # 28 -> 14 -> 7 -> 3 -> 1
    assert conv_output_size(84, strided=False) == 5  # 84 -> 42 -> 21 -> 10 -> 5


def test_convnet_omniglot_strided():
    net = ConvNet(1, 5, hidden=64, image_size=28, strided=True)
    assert net(torch.randn(6, 1, 28, 28)).shape == (6, 5)
    assert n_params(net) == conv_count(1, 64, 64 * 2 * 2, 5) == 113221
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())


def test_convnet_omniglot_maxpool_and_global_pool():
    net = ConvNet(1, 20, hidden=64, image_size=28)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 20)
    assert n_params(net) == conv_count(1, 64, 64, 20)
    gp = ConvNet(1, 5, image_size=28, strided=True, global_pool=True)
    assert gp(torch.randn(3, 1, 28, 28)).shape == (3, 5)
    assert n_params(gp) == conv_count(1, 64, 64, 5)


def test_convnet_miniimagenet():
    net = ConvNet(3, 5, hidden=32, image_size=84)
    assert net(torch.randn(4, 3, 84, 84)).shape == (4, 5)
    assert n_params(net) == conv_count(3, 32, 32 * 5 * 5, 5) == 32901


def test_nonconvnet_and_mlp_counts():
    net = NonConvNet(784, 5)
    assert net(torch.randn(8, 1, 28, 28)).shape == (8, 5)  # images are flattened
    linear = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 64 + 64 + 64 * 64 + 64 + 64 * 5 + 5
    assert n_params(net) == linear + 2 * (256 + 128 + 64 + 64)
    mlp = MLP(1, (40, 40), 1)
    assert mlp(torch.randn(10, 1)).shape == (10, 1)
    assert n_params(mlp) == (40 + 40) + (40 * 40 + 40) + (40 + 1) == 1761
    assert isinstance(MLP(activation=nn.Tanh).net[1], nn.Tanh)
    with pytest.raises(ValueError):
        MLP(init="bogus")


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: ConvNet(1, 5, image_size=28, strided=True), (6, 1, 28, 28)),
        (lambda: NonConvNet(784, 5), (6, 784)),
    ],
)
def test_batchnorm_uses_batch_statistics(make, shape):
    net = make()
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not m.track_running_stats and m.running_mean is None for m in bns)
    assert not list(net.buffers())
    x = torch.randn(*shape)
    y1 = net(x)
    x2 = x.clone()
    x2[1:] = torch.randn_like(x2[1:]) * 3 + 1  # change the rest of the batch
    y2 = net(x2)
    assert not torch.allclose(y1[0], y2[0], atol=1e-4)  # sample 0's output depends on the batch
    # ... and eval() changes nothing, since there are no running statistics.
    net.eval()
    assert torch.allclose(net(x), y1, atol=1e-5)


def test_functional_call_with_named_parameters():
    net = ConvNet(1, 5, image_size=28, strided=True)
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    x, y = torch.randn(5, 1, 28, 28), torch.arange(5)
    loss = nn.functional.cross_entropy(functional_call(net, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_init():
    net = ConvNet(1, 5)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    paper = MLP(1, (40, 40), 1, init="paper")
    w = paper.net[0].weight.detach()
    assert float(w.abs().max()) <= 0.02 + 1e-6 and float(w.std()) > 0.002
