"""Noise schedules of masked diffusion: alpha(t), the probability that a token is still clean.

A schedule provides `alpha(t)` and the NELBO weight `weight(t) = -alpha'(t) / (1 - alpha(t))`,
both elementwise on tensors (or Python floats).
"""

from __future__ import annotations

import math
from typing import Protocol, TypeVar

import torch

T = TypeVar("T", torch.Tensor, float)


class Schedule(Protocol):
    """What the diffusion math needs from a noise schedule."""

    def alpha(self, t: T) -> T: ...

    def weight(self, t: T) -> T: ...


class LogLinearSchedule:
    """alpha(t) = 1 - (1 - eps) t, so weight(t) = 1 / t (MDLM's default)."""

    def __init__(self, eps: float = 1e-3) -> None:
        if not 0.0 < eps < 1.0:
            raise ValueError(f"LogLinearSchedule eps must be in (0, 1), got {eps}")
        self.eps = eps

    def alpha(self, t: T) -> T:
        return 1 - (1 - self.eps) * t

    def weight(self, t: T) -> T:
        return (1 - self.eps) / (1 - self.alpha(t))

    def __repr__(self) -> str:
        return f"LogLinearSchedule(eps={self.eps})"


class CosineSchedule:
    """alpha(t) = eps + (1 - eps) cos(pi t / 2): slower masking early, faster late."""

    def __init__(self, eps: float = 1e-3) -> None:
        if not 0.0 < eps < 1.0:
            raise ValueError(f"CosineSchedule eps must be in (0, 1), got {eps}")
        self.eps = eps

    def alpha(self, t: T) -> T:
        angle = t * (math.pi / 2)
        cos = torch.cos(angle) if isinstance(angle, torch.Tensor) else math.cos(angle)
        return self.eps + (1 - self.eps) * cos

    def weight(self, t: T) -> T:
        angle = t * (math.pi / 2)
        sin = torch.sin(angle) if isinstance(angle, torch.Tensor) else math.sin(angle)
        return (1 - self.eps) * (math.pi / 2) * sin / (1 - self.alpha(t))

    def __repr__(self) -> str:
        return f"CosineSchedule(eps={self.eps})"


SCHEDULES = {"loglinear": LogLinearSchedule, "cosine": CosineSchedule}


def build_schedule(name: str, eps: float = 1e-3) -> Schedule:
    """The schedule called `name` ("loglinear" or "cosine")."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](eps)
