"""Exponential moving average of the parameters, swapped in for evaluation and sampling.

The shadow copies are made from the parameters themselves, so under FSDP they are sharded
exactly like them (no rank ever holds a full copy).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


class EMA:
    """Shadow weights w <- d w + (1 - d) p, with d warmed up as min(decay, (1 + n) / (10 + n))
    over the n updates so far, so short runs do not average in their random initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self._params(model)]
        self.num_updates = 0

    def _params(self, model: torch.nn.Module) -> list[torch.Tensor]:
        named = dict(model.named_parameters())
        return [named[name] for name in self.names]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for shadow, param in zip(self.shadow, self._params(model)):
            shadow.lerp_(param.detach(), 1.0 - decay)
        self.num_updates += 1

    @contextmanager
    def swapped_in(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the block with the EMA weights in `model`, restoring the live weights after."""
        self._swap(model)
        try:
            yield
        finally:
            self._swap(model)

    @torch.no_grad()
    def _swap(self, model: torch.nn.Module) -> None:
        for shadow, param in zip(self.shadow, self._params(model)):
            live = param.detach().clone()
            param.copy_(shadow)
            shadow.copy_(live)

    def state_dict(self) -> dict[str, object]:
        return {"weights": dict(zip(self.names, self.shadow)), "num_updates": torch.tensor(self.num_updates)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        weights = state["weights"]
        missing = set(self.names) - set(weights)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, shadow in zip(self.names, self.shadow):
                shadow.copy_(weights[name])
        self.num_updates = int(state["num_updates"])
