"""EDLM-NCE: the trained energy network as the sampler's and evaluator's energy callable."""

from __future__ import annotations

import torch
from torch import Tensor

from edlm_dist.models import EnergyNet


class NCEEnergy:
    """Energy `(x0, xt, t, proposal_logp) -> float64 [N]` of an `EnergyNet`, in eval mode under
    no_grad, `max_batch` rows per forward. `proposal_logp` is not needed (the network models
    the residual directly) and is ignored; t is read only if the network reads it."""

    kind = "nce"
    self_normalised = False  # Z(xt) must be estimated from proposals

    def __init__(self, model: EnergyNet, *, max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        self.max_batch = max_batch
        self.reads_time = model.reads_time

    @torch.no_grad()
    def __call__(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_logp: Tensor | None = None) -> Tensor:
        if x0.dim() != 2 or x0.shape != xt.shape or tuple(t.shape) != (x0.shape[0],):
            raise ValueError(f"expected x0 and xt [N, L] and t [N], got {tuple(x0.shape)}, {tuple(xt.shape)}, {tuple(t.shape)}")
        chunks = zip(x0.split(self.max_batch), xt.split(self.max_batch), t.split(self.max_batch))
        energies = [self.model(a, b, c).double() for a, b, c in chunks]
        return torch.cat(energies) if energies else x0.new_zeros(0, dtype=torch.float64)
