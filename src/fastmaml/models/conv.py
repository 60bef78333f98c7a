"""The MAML paper's convolutional network for Omniglot and MiniImagenet (Finn et al. 2017, sec. 5.2).

Four blocks of 3x3 convolution, batch normalisation, ReLU and 2x2 max-pooling (or, with
``strided=True``, stride-2 convolutions instead of pooling, as Finn's Omniglot code did),
followed by a linear layer to ``n_way`` logits. 64 filters for Omniglot, 32 for MiniImagenet.

Batch normalisation always uses the statistics of the current batch
(``track_running_stats=False``): MAML's inner loop adapts on tiny support sets and the paper
never uses running averages, so train and test behave the same.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_output_size(image_size: int, strided: bool, blocks: int = 4) -> int:
    """Spatial size after ``blocks`` blocks (padding 1; stride-2 conv or 2x2 max-pool)."""
    s = image_size
    for _ in range(blocks):
        s = (s - 1) // 2 + 1 if strided else s // 2
    return s


def init_paper_(module: nn.Module) -> None:
    """Finn et al.'s initialisation: Xavier (Glorot) uniform weights, zero biases; BN scale 1, shift 0.

    (His Omniglot head used a standard normal; Xavier is used for every layer here for stability.)
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ConvNet(nn.Module):
    """4-block conv net of the MAML paper.

    Args:
        in_channels: 1 for Omniglot, 3 for MiniImagenet.
        n_way: number of output logits.
        hidden: filters per conv layer (64 Omniglot, 32 MiniImagenet).
        image_size: input height = width (28 Omniglot, 84 MiniImagenet); sets the head's width.
        strided: stride-2 convolutions instead of max-pooling (Finn's Omniglot setting).
        global_pool: average the final feature map over space before the head (Finn's Omniglot
            code did this); by default the feature map is flattened.
        pool_before_relu: with max-pooling, each block pools before its ReLU (conv, BN, pool, ReLU).
            ReLU is monotonic, so ``relu(maxpool(x)) == maxpool(relu(x))`` exactly, gradients
            included; the ReLU and its backward then touch a quarter of the values. Parameter
            names and shapes are the same either way (ReLU and pooling have none).

    Input ``[B, in_channels, image_size, image_size]`` float; output ``[B, n_way]``.
    """

    def __init__(
        self,
        in_channels: int,
        n_way: int,
        hidden: int = 64,
        image_size: int = 28,
        strided: bool = False,
        global_pool: bool = False,
        pool_before_relu: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.n_way, self.hidden = in_channels, n_way, hidden
        self.image_size, self.strided, self.global_pool = image_size, strided, global_pool
        self.pool_before_relu = pool_before_relu
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(4):
            layers.append(nn.Conv2d(c, hidden, 3, stride=2 if strided else 1, padding=1))
            layers.append(nn.BatchNorm2d(hidden, track_running_stats=False))
            if strided:
                layers.append(nn.ReLU())
            elif pool_before_relu:
                layers += [nn.MaxPool2d(2), nn.ReLU()]
            else:
                layers += [nn.ReLU(), nn.MaxPool2d(2)]
            c = hidden
        self.features = nn.Sequential(*layers)
        s = conv_output_size(image_size, strided)
        if s < 1:
            raise ValueError(f"image_size={image_size} is too small for 4 down-sampling blocks")
        self.feature_dim = hidden if global_pool else hidden * s * s
        self.head = nn.Linear(self.feature_dim, n_way)
        init_paper_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        h = h.mean(dim=(-2, -1)) if self.global_pool else h.flatten(1)
        return self.head(h)
