"""Parameter initialisation that does not depend on sharding, device or construction order.

Every parameter is drawn on the CPU from a generator keyed by (seed, its name), then copied
in; a sharded (DTensor) parameter keeps only its local slice. So a model materialised from
the meta device after FSDP sharding holds exactly the weights of a single-process model
built with the same seed, on any world size and mesh shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from edlm_dist.diffusion.noise import keyed_generator


@dataclass(frozen=True)
class Init:
    """How one parameter starts: N(0, std^2), all zeros, or all ones."""

    kind: Literal["normal", "zeros", "ones"]
    std: float = 0.0


def _full_value(init: Init, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    if init.kind == "normal":
        return torch.randn(shape, generator=generator, dtype=torch.float32) * init.std
    return torch.zeros(shape) if init.kind == "zeros" else torch.ones(shape)


@torch.no_grad()
def initialize_parameters(module: nn.Module, rule: Callable[[str], Init], seed: int) -> None:
    """Set every parameter of `module` as `rule(name)` says, from a generator keyed by (seed, name)."""
    for name, param in module.named_parameters():
        full = _full_value(rule(name), param.shape, keyed_generator(seed, "init", name))
        if isinstance(param, DTensor):
            full = distribute_tensor(
                full.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
            )
        param.copy_(full)
