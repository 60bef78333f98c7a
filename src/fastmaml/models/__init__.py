"""The MAML paper's networks as plain ``nn.Module``s."""

from fastmaml.models.conv import ConvNet, conv_output_size
from fastmaml.models.mlp import MLP, NonConvNet

__all__ = ["ConvNet", "MLP", "NonConvNet", "conv_output_size"]
