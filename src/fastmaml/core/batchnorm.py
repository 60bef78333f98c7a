"""Batch-statistics BatchNorm that is safe under ``torch.func.vmap`` + second-order grads.

MAML normalizes with the statistics of the current batch at meta-train *and*
meta-test time (no running averages). Two PyTorch facts shape this module:

* Under ``vmap``, a second-order gradient through ``F.batch_norm(training=True)``
  *with* its weight and bias is silently wrong (torch 2.13, upstream of the BN;
  see ``tests/test_core_maml.py``). Normalizing with elementary tensor ops (mean,
  rsqrt, multiply) is correct, and faster in MAML's double backward.
* Running-statistic buffers are updated in place, which ``vmap`` + ``grad`` reject.

``BatchStatNorm`` normalizes that way and keeps the original
``weight``/``bias`` Parameter objects and names, so state dicts, optimizers and
functional calls see the same parameters as before the swap.

``PerStepBatchNorm`` is MAML++'s per-step variant (Antoniou et al. 2019, "BNWB" and
"BNRS"): one row of weight, bias and running statistics per inner step, the row chosen
by how many inner steps the parameters have taken (the engine sets ``step`` before
each call). Running statistics are written only by explicit eager passes
(``record``), never inside ``vmap``/``grad``.
"""

from __future__ import annotations

import torch
from torch import nn


def _master(x: torch.Tensor) -> torch.Tensor:
    """``x`` promoted to at least float32: under mixed precision (core/precision.py) the convolution before
    a BatchNorm hands it bf16; statistics and normalization stay float32 (float32 and float64 pass unchanged)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Centered input and biased variance over every dim but channels (dim 1), as BatchNorm in training.

    Elementary ops rather than F.batch_norm: their first and second derivatives are autograd's
    plain formulas (correct under vmap). sum() * (1/n) rather than mean(): mean's backward
    materializes a full-size division, sum's is a broadcast view. On the paper's conv net this
    double backward is ~15% faster (benchmarks/bench_maml.py).
    """
    dims = [0, *range(2, x.dim())]
    inv_n = 1.0 / (x.numel() // x.shape[1])  # 1 / values per channel
    centered = x - x.sum(dims, keepdim=True) * inv_n
    return centered, (centered * centered).sum(dims, keepdim=True) * inv_n, dims


class BatchStatNorm(nn.Module):
    """BatchNorm over the current batch's statistics, affine applied separately."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> "BatchStatNorm":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_features, new.eps = bn.num_features, bn.eps
        # Reuse the very same Parameter objects: an optimizer built on the model stays valid.
        new.weight, new.bias = bn.weight, bn.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, shape = _master(x), (1, -1) + (1,) * (x.dim() - 2)
        centered, var, _ = _batch_stats(x)
        inv_std = torch.rsqrt(var + self.eps)
        if self.weight is None:
            return centered * inv_std
        return torch.addcmul(self.bias.view(shape), centered, inv_std * self.weight.view(shape))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


class PerStepBatchNorm(nn.Module):
    """BatchNorm with one row of affine weights and running statistics per inner step (MAML++).

    ``weight``/``bias`` are ``[steps, C]``: the network whose parameters have taken ``s``
    inner steps normalizes with row ``min(s, steps - 1)`` (BNWB). ``running_mean``/
    ``running_var`` are ``[steps, C]`` too (BNRS): while ``record`` is on, each call folds
    its batch statistics into the current row with ``momentum``; while
    ``use_running_stats`` is on, the row's running statistics replace the batch's
    (non-transductive evaluation). Otherwise it normalizes with batch statistics exactly
    like :class:`BatchStatNorm`.
    """

    def __init__(self, num_features: int, steps: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"PerStepBatchNorm needs steps >= 1, got {steps}")
        self.num_features, self.steps, self.eps, self.momentum = num_features, steps, eps, momentum
        self.weight = nn.Parameter(torch.ones(steps, num_features))
        self.bias = nn.Parameter(torch.zeros(steps, num_features))
        self.register_buffer("running_mean", torch.zeros(steps, num_features))
        self.register_buffer("running_var", torch.ones(steps, num_features))
        self.step = 0  # inner steps taken by the parameters of the current call (set by the engine)
        self.record = False
        self.use_running_stats = False

    @classmethod
    def from_batchnorm(cls, bn: nn.Module, steps: int, momentum: float = 0.1) -> "PerStepBatchNorm":
        new = cls(bn.num_features, steps, eps=bn.eps, momentum=momentum)
        weight = getattr(bn, "weight", None)
        if weight is not None:  # every step starts from the layer's own affine values
            with torch.no_grad():
                new.weight.copy_(weight.detach().expand(steps, -1))
                new.bias.copy_(bn.bias.detach().expand(steps, -1))
            new.to(device=weight.device, dtype=weight.dtype)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row, x = min(self.step, self.steps - 1), _master(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.use_running_stats:
            centered = x - self.running_mean[row].view(shape)
            inv_std = torch.rsqrt(self.running_var[row].view(shape) + self.eps)
        else:
            centered, var, dims = _batch_stats(x)
            inv_std = torch.rsqrt(var + self.eps)
            if self.record:
                with torch.no_grad():
                    n = x.numel() // x.shape[1]
                    unbiased = var.reshape(-1) * (n / max(n - 1, 1))  # running variance is unbiased, as in BatchNorm
                    self.running_mean[row].lerp_(x.mean(dims), self.momentum)
                    self.running_var[row].lerp_(unbiased, self.momentum)
        return torch.addcmul(self.bias[row].view(shape), centered, inv_std * self.weight[row].view(shape))

    def extra_repr(self) -> str:
        return f"{self.num_features}, steps={self.steps}, eps={self.eps}, momentum={self.momentum}"


def convert_batchnorm(model: nn.Module, per_step: int | None = None, momentum: float = 0.1) -> nn.Module:
    """Replace every ``nn.BatchNorm{1,2,3}d`` in ``model`` (in place); returns the model.

    By default each becomes a :class:`BatchStatNorm` (batch statistics, as in the MAML paper;
    running-statistic buffers are dropped). With ``per_step=R`` each becomes a
    :class:`PerStepBatchNorm` with ``R`` rows (MAML++), initialized from the layer's affine values.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            new = BatchStatNorm.from_batchnorm(child) if per_step is None else PerStepBatchNorm.from_batchnorm(
                child, per_step, momentum)
            setattr(model, name, new)
        elif isinstance(child, BatchStatNorm) and per_step is not None:
            setattr(model, name, PerStepBatchNorm.from_batchnorm(child, per_step, momentum))
        else:
            convert_batchnorm(child, per_step, momentum)
    return model
