"""ResNet-12, the common few-shot backbone of later papers (TADAM, MetaOptNet, ...), for MiniImagenet.

Four residual blocks; each is three 3x3 convolutions with BatchNorm (LeakyReLU(0.1) after the
first two; after the third, the 1x1-convolution + BatchNorm shortcut is added and then the
LeakyReLU applied), followed by 2x2 max-pooling. Widths 64-160-320-640, global average pooling
and a linear head: about 12.4M parameters, an 84x84 image becomes a 640-vector. No DropBlock.

Plain ``nn`` layers only, so ``torch.func.functional_call`` and ``vmap`` handle it; MAML replaces
its BatchNorm layers by batch-statistics (or per-step) normalization like the conv net's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)]


class ResidualBlock(nn.Module):
    """3x (conv3x3-BN), LeakyReLU(0.1) between them, a 1x1 conv-BN shortcut, LeakyReLU, max-pool 2."""

    def __init__(self, c_in: int, c_out: int, slope: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(c_in, c_out), nn.LeakyReLU(slope),
            *_conv_bn(c_out, c_out), nn.LeakyReLU(slope),
            *_conv_bn(c_out, c_out),
        )
        self.shortcut = nn.Sequential(*_conv_bn(c_in, c_out, kernel=1))
        self.act = nn.LeakyReLU(slope)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


class ResNet12(nn.Module):
    """ResNet-12 for few-shot classification.

    Args:
        in_channels: 3 for MiniImagenet.
        n_way: output logits.
        widths: channels of the four blocks (64, 160, 320, 640 as usual; smaller for tests).

    Input ``[B, in_channels, H, W]`` (84x84 for MiniImagenet; any size >= 16); output ``[B, n_way]``.
    """

    def __init__(self, in_channels: int, n_way: int, widths: Sequence[int] = (64, 160, 320, 640)) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"ResNet-12 has 4 blocks; got widths {tuple(widths)}")
        self.in_channels, self.n_way, self.widths = in_channels, n_way, tuple(int(w) for w in widths)
        blocks, c = [], in_channels
        for w in self.widths:
            blocks.append(ResidualBlock(c, w))
            c = w
        self.features = nn.Sequential(*blocks)
        self.feature_dim = c
        self.head = nn.Linear(c, n_way)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))
