"""Mixed precision as an object the engine takes: where the network's matmuls and convolutions run.

The one inner loop calls the model in exactly one place (:func:`fastmaml.core.inner_loop.call_model`);
it runs that call inside ``precision.compute(device_type)`` and hands the output through
``precision.output(...)``. That is all the engine knows about precision:

* :data:`FP32` (:class:`FullPrecision`): nothing changes; the float32 numbers of every earlier run.
* :data:`BF16` (:class:`MixedPrecision`): matmuls and convolutions in bfloat16, autocast's rule (their
  float32 tensor arguments cast to bf16, so their backward passes run in bf16 too and hand float32
  gradients back through the cast); the model's outputs come back as float32,
  so losses are computed in float32. Everything outside the model call stays float32 by
  construction: the master weights and Adam's state (the parameters are never cast, autocast casts
  copies for each matmul and its backward returns float32 gradients), the inner step θ − α∇ (float32
  parameters minus α times float32 gradients), and BatchNorm, which promotes its input to float32
  before taking statistics (:mod:`fastmaml.core.batchnorm`).

:func:`resolve` turns ``train.precision`` (``auto | fp32 | bf16``) into one of them; ``auto`` is
bf16 only where :func:`bf16_pays` says it was measured to pay (a CPU with AMX tiles, a CUDA GPU with
bf16), float32 elsewhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Protocol

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from fastmaml.errors import ConfigError

#: the values of ``train.precision`` / ``eval.precision`` (``eval.precision`` also takes ``trained``)
CHOICES = ("auto", "fp32", "bf16")


class Precision(Protocol):
    """What the engine asks of a precision (:class:`FullPrecision`, :class:`MixedPrecision`)."""

    name: str  # "fp32" | "bf16": what config.json and results files record
    compiles: bool  # whether the compiled meta-iteration (core/compiled.py) supports it

    def compute(self, device_type: str) -> ContextManager:
        """The context the model's forward pass runs in."""
        ...

    def output(self, out: Any) -> Any:
        """The model's output as the loss should see it (float32 for the lower-precision variants)."""
        ...


@dataclass(frozen=True)
class FullPrecision:
    """Float32 everywhere (the default; bit-identical to the library before precision existed)."""

    name: str = "fp32"
    compiles: bool = True

    def compute(self, device_type: str) -> ContextManager:
        return contextlib.nullcontext()

    def output(self, out: Any) -> Any:
        return out


#: the functions whose float32 tensor arguments :class:`MixedPrecision` casts: autocast's lower-precision list
LOWER_PRECISION_OPS = frozenset({
    F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear, F.bilinear,
    torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.addbmm, torch.baddbmm, torch.einsum,
    torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm, torch.Tensor.bmm,
})


class _LowerPrecisionOps(TorchFunctionMode):
    """Autocast's rule as a Python function mode: float32 tensor arguments of :data:`LOWER_PRECISION_OPS` cast to ``dtype``.

    Not ``torch.autocast``: under ``torch.func.vmap`` with per-task (batched) weights, the inner loop's
    adapted parameters, torch 2.13's autocast leaves convolutions in float32 (vmap decomposes ``conv2d``
    before autocast sees it); a function mode runs above the transforms, so every path casts alike.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in LOWER_PRECISION_OPS:
            cast = lambda t: t.to(self.dtype) if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t  # noqa: E731
            args, kwargs = tree_map(cast, (args, kwargs))
        return func(*args, **kwargs)


@dataclass(frozen=True)
class MixedPrecision:
    """Matmuls and convolutions in ``dtype``, everything else float32 (see the module docstring).

    The same device-independent rule on CPUs and GPUs (``device_type`` is not needed). The compiled
    meta-iteration does not take it (``compiles``: it falls back to eager, with a warning).
    """

    name: str = "bf16"
    dtype: torch.dtype = torch.bfloat16
    compiles: bool = False

    def compute(self, device_type: str) -> ContextManager:
        return _LowerPrecisionOps(self.dtype)

    def output(self, out: Any) -> Any:
        return tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype == self.dtype else t, out)


FP32 = FullPrecision()
BF16 = MixedPrecision()
BY_NAME: dict[str, Precision] = {"fp32": FP32, "bf16": BF16}


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_pays(device: str | torch.device) -> tuple[bool, str]:
    """Whether bf16 meta-training is expected to be faster than float32 on ``device``, and why.

    Yes on a CPU with AMX tiles (``amx_bf16`` in /proc/cpuinfo, or torch's CPU capability naming AMX)
    and on a CUDA GPU that supports bf16; no elsewhere: AVX512-BF16 alone (e.g. AMD EPYC Zen 4) has
    bf16 dot products but oneDNN's bf16 convolutions there are not faster than float32 ones at MAML's sizes.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, f"CUDA GPU with bf16 ({torch.cuda.get_device_name(device)})"
        return False, "CUDA GPU without bf16 support"
    if device.type == "cpu":
        capability = str(torch.backends.cpu.get_cpu_capability())
        flags = _cpu_flags()
        if "amx_bf16" in flags or "AMX" in capability.upper():
            return True, f"CPU with AMX bf16 tiles (torch CPU capability {capability})"
        units = "AVX512-BF16 but no AMX" if "avx512_bf16" in flags else "no AMX bf16 tiles"
        return False, f"CPU with {units} (torch CPU capability {capability}): bf16 is not expected to pay"
    return False, f"{device.type} device: bf16 not measured there"


def resolve(requested: str, device: str | torch.device) -> tuple[Precision, str]:
    """(the precision, a one-line reason) for ``requested`` (``auto | fp32 | bf16``) on ``device``."""
    if requested not in CHOICES:
        raise ConfigError(f"unknown precision {requested!r}: use one of {list(CHOICES)}")
    if requested != "auto":
        return BY_NAME[requested], f"{requested} as requested"
    pays, why = bf16_pays(device)
    return (BF16 if pays else FP32), f"auto: {why}"


def by_name(name: str) -> Precision:
    if name not in BY_NAME:
        raise ConfigError(f"unknown resolved precision {name!r}: expected one of {list(BY_NAME)}")
    return BY_NAME[name]
