import pytest
import torch
from torch.func import functional_call, grad, vmap

from fastmaml.apps.ids.config import ModelConfig
from fastmaml.apps.ids.models import FrameMLP, WindowCNN1d, WindowGRU, build_model
from fastmaml.errors import ConfigError, DataError

F, W, T, B = 15, 16, 3, 10


def _cases():
    return [
        (FrameMLP(F, (32, 32), 3), (B, F)),
        (WindowCNN1d(F, W, 3, channels=(16, 16)), (B, W, F)),
        (WindowGRU(F, 24, 3), (B, W, F)),
    ]


@pytest.mark.parametrize("k", range(3))
def test_vmap_grad_matches_loop(k):
    model, shape = _cases()[k]
    params = {n: p.detach() for n, p in model.named_parameters()}
    # distinct parameters per task, as after MAML inner steps
    batched = {n: torch.stack([p + 0.01 * t for t in range(T)]) for n, p in params.items()}
    x = torch.randn(T, *shape)
    y = torch.randint(0, 3, (T, B))

    def loss(p, xb, yb):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (xb,)), yb)

    g = vmap(grad(loss))(batched, x, y)
    for t in range(T):
        gt = grad(loss)({n: v[t] for n, v in batched.items()}, x[t], y[t])
        for n in params:
            assert torch.allclose(g[n][t], gt[n], atol=1e-5), (n, t)
    assert any(g[n].abs().sum() > 0 for n in params)
    out = model(x[0])
    assert out.shape == (B, 3)


def test_shape_errors_and_factory():
    with pytest.raises(DataError, match="expected input"):
        FrameMLP(F)(torch.zeros(4, F + 1))
    with pytest.raises(ConfigError, match="needs window"):
        build_model(ModelConfig(name="cnn"), F, None)
    with pytest.raises(ConfigError, match="unknown"):
        build_model(ModelConfig(name="transformer"), F, W)
    assert isinstance(build_model(ModelConfig(name="gru", hidden=[16]), F, W), WindowGRU)
    cnn = build_model(ModelConfig(name="cnn"), F, W)
    assert isinstance(cnn, WindowCNN1d)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in cnn.modules())
    assert build_model(ModelConfig(name="mlp", hidden=[8]), F, W)(torch.zeros(3, W, F)).shape == (3, 2)
