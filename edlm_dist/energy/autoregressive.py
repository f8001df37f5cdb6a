"""EDLM-AR: the energy of a pretrained autoregressive model relative to the diffusion proposal.

`ar`:   E = -log p_AR(x0) + log p_theta(x0 | xt), so the importance weights exp(-E) are
        p_AR / p_theta up to a constant and resampling corrects the proposal toward p_AR.
`coar`: carry-over AR. The AR factors at positions unmasked in xt are forced to the observed
        token (they contribute 0), E = -sum_{i masked} log p_AR(x0_i | x0_<i) + log p_theta,
        so sum_x0 p_theta(x0 | xt) exp(-E) = 1 exactly (self-normalised). This needs position
        0 scored as well, which the AR does by reading a start token.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor


class TokenScorer(Protocol):
    """An AR model: per-position log p(x0_i | x0_<i) [N, L] over `vocab_size` data tokens."""

    vocab_size: int

    def token_log_probs(self, x0: Tensor) -> Tensor: ...


class AREnergy:
    """Energy `(x0, xt, t, proposal_logp) -> float64 [N]` from an AR model (see module docstring).

    The AR model is put in eval mode and run under no_grad in chunks of at most `max_batch`
    rows, so k candidates x B sequences never go through one forward at once. t is not read.
    """

    reads_time = False

    def __init__(self, ar_model: TokenScorer, *, carry_over: bool = False, max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.ar_model = ar_model
        self.carry_over = carry_over
        self.max_batch = max_batch
        self.mask_id = ar_model.vocab_size
        if isinstance(ar_model, torch.nn.Module):
            ar_model.eval()

    @property
    def kind(self) -> Literal["ar", "coar"]:
        return "coar" if self.carry_over else "ar"

    def _check(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_logp: Tensor | None) -> None:
        if proposal_logp is None:
            raise ValueError(
                "proposal_logp is required (log p_theta(x0 | xt) over masked positions; the sampler passes it)"
            )
        if x0.dim() != 2 or x0.shape != xt.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and xt {tuple(xt.shape)} must both be [N, L]")
        n = x0.shape[0]
        for name, value in (("t", t), ("proposal_logp", proposal_logp)):
            if tuple(value.shape) != (n,):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected ({n},)")
        bad = x0[(x0 < 0) | (x0 >= self.mask_id)]
        if bad.numel():
            raise ValueError(f"x0 holds token id {int(bad[0])}, outside the data vocabulary [0, {self.mask_id})")

    @torch.no_grad()
    def __call__(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_logp: Tensor | None) -> Tensor:
        """Energies [N] float64: -(sum of AR log-probs over all, or only masked, positions) + proposal_logp."""
        self._check(x0, xt, t, proposal_logp)
        chunks = [self.ar_model.token_log_probs(chunk).double() for chunk in x0.split(self.max_batch)]
        token_lp = torch.cat(chunks) if chunks else x0.new_zeros(x0.shape, dtype=torch.float64)
        if token_lp.shape != x0.shape:
            raise ValueError(f"token_log_probs returned {tuple(token_lp.shape)}, expected {tuple(x0.shape)}")
        if self.carry_over:
            token_lp = token_lp.masked_fill(xt != self.mask_id, 0.0)
        return proposal_logp.double() - token_lp.sum(dim=-1)
