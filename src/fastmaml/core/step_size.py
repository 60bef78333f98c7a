"""Inner step-size rules: how big α is for each parameter tensor at each inner step.

A rule is a small object with two methods (the shape of an optax transformation: the rule is a
description, the state it learns lives elsewhere):

* ``init(params, steps) -> {name: tensor}``: the step sizes to meta-learn, by parameter name, at their
  initial values (``{}`` for a rule that learns none). :class:`~fastmaml.core.maml.MAML` keeps them as
  ``nn.Parameter``s in ``MAML.inner_lrs``, so the outer optimizer, checkpoints, the compiled
  meta-step and TRPO treat them like θ; ``steps`` is the number of inner steps meta-trained.
* ``rate(learned, name, step) -> float or tensor``: α of parameter ``name`` at inner step ``step``
  (0-based; test time may take more steps than were meta-trained), where ``learned`` maps parameter
  names to the current values of what ``init`` returned.

``MAML(model, loss, inner_lr=PerLayerStep(0.4))``; a plain float means :class:`Fixed`. Writing a rule
is ~10 lines (README "Use it on your own model" has one that learns one α per tensor for all steps).
In configs, ``maml.step_size`` names the rule (:func:`from_config`) and ``maml.inner_lr`` is its α.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Protocol, runtime_checkable

import torch

from fastmaml.errors import ConfigError

Params = dict[str, torch.Tensor]


@runtime_checkable
class StepSizeRule(Protocol):
    def init(self, params: Params, steps: int) -> dict[str, torch.Tensor]:
        """The step sizes to meta-learn, by parameter name, at their initial values ({}: none)."""
        ...

    def rate(self, learned: Mapping[str, torch.Tensor], name: str, step: int) -> torch.Tensor | float:
        """α of parameter ``name`` at inner step ``step``; ``learned``: the current learned step sizes."""
        ...


@dataclass(frozen=True)
class Fixed:
    """α at the first inner step, α·``later`` at the others (the original MAML-RL test script: later=0.5)."""

    alpha: float
    later: float = 1.0

    def __post_init__(self) -> None:
        if not self.later > 0:
            raise ConfigError(f"Fixed(later=...) must be > 0 (1.0: α at every inner step), got {self.later}")

    def init(self, params: Params, steps: int) -> dict[str, torch.Tensor]:
        return {}

    def rate(self, learned: Mapping[str, torch.Tensor], name: str, step: int) -> float:
        return self.alpha if step == 0 else self.alpha * self.later


@dataclass(frozen=True)
class PerLayerStep:
    """MAML++'s LSLR (Antoniou et al. 2019): a learned α per parameter tensor and inner step, starting at ``alpha``."""

    alpha: float

    def init(self, params: Params, steps: int) -> dict[str, torch.Tensor]:
        return {n: torch.full((max(steps, 1),), float(self.alpha), dtype=p.dtype, device=p.device)
                for n, p in params.items()}

    def rate(self, learned: Mapping[str, torch.Tensor], name: str, step: int) -> torch.Tensor:
        lr = learned[name]
        # Steps beyond those meta-trained (e.g. more steps at test time) reuse the last learned rate.
        return lr[min(step, lr.shape[0] - 1)]


@dataclass(frozen=True)
class PerElement:
    """Meta-SGD (Li et al. 2017): a learned α per parameter element (the same at every step), starting at ``alpha``."""

    alpha: float

    def init(self, params: Params, steps: int) -> dict[str, torch.Tensor]:
        return {n: torch.full_like(p.detach(), float(self.alpha)) for n, p in params.items()}

    def rate(self, learned: Mapping[str, torch.Tensor], name: str, step: int) -> torch.Tensor:
        return learned[name]


#: the rules a config can name (``maml.step_size``), each built from ``maml.inner_lr`` and the keyword arguments given
RULES = {"fixed": Fixed, "per_layer_step": PerLayerStep, "per_element": PerElement}


def from_config(spec: str, alpha: float) -> StepSizeRule:
    """The rule a config names: ``"fixed"``, ``"fixed(later=0.5)"``, ``"per_layer_step"`` or ``"per_element"``."""
    match = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", spec or "")
    if not match or match.group(1) not in RULES:
        raise ConfigError(f"unknown maml.step_size {spec!r}: use fixed, fixed(later=0.5), per_layer_step (MAML++) "
                          "or per_element (Meta-SGD)")
    kwargs = {}
    for item in filter(None, (s.strip() for s in (match.group(2) or "").split(","))):
        key, _, value = item.partition("=")
        try:
            kwargs[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"maml.step_size {spec!r}: {item!r} must look like name=number") from None
    try:
        return RULES[match.group(1)](float(alpha), **kwargs)
    except (TypeError, ConfigError) as e:  # an unknown keyword, a bad value
        raise ConfigError(f"maml.step_size {spec!r}: {e}") from None


def from_legacy(inner_lr_mode: str | None, later_step_scale: float | None) -> str:
    """``maml.step_size`` for configs written before it existed (``maml.inner_lr_mode``, ``maml.later_step_scale``)."""
    mode = inner_lr_mode or "fixed"
    if later_step_scale is None or later_step_scale == 1.0:
        return mode
    if mode != "fixed":
        raise ConfigError(f"maml.later_step_scale scales a fixed α; maml.inner_lr_mode={mode!r} learns its rates")
    if not later_step_scale > 0:
        raise ConfigError(f"maml.later_step_scale must be > 0 (1.0: α at every inner step), got {later_step_scale}")
    return f"fixed(later={float(later_step_scale)!r})"


def describe(rule: StepSizeRule) -> str:
    """The config spelling of a built-in rule (``maml.step_size``); the class name for others."""
    if isinstance(rule, Fixed):
        return "fixed" if rule.later == 1.0 else f"fixed(later={float(rule.later)!r})"
    for name, cls in RULES.items():
        if type(rule) is cls:
            return name
    return type(rule).__name__
