"""EDLM-AR: the energy of a pretrained autoregressive model relative to the diffusion proposal.

`ar`:   E = -log p_AR(x0) + log p_theta(x0 | xt), so the importance weights exp(-E) are
        p_AR / p_theta up to a constant and resampling corrects the proposal toward p_AR.
`coar`: carry-over AR. The AR factors at positions unmasked in xt are forced to the observed
        token (they contribute 0), E = -sum_{i masked} log p_AR(x0_i | x0_<i) + log p_theta,
        so sum_x0 p_theta(x0 | xt) exp(-E) = 1 exactly (self-normalised). This needs position
        0 scored as well, which the AR does by reading a start token.

The energy says what it knows, for the likelihood estimators: `self_normalised` (coAR: log Z =
0, not estimated), the AR conditionals along a proposal's prefix (`prefix_log_probs`) and draws
from the coAR joint itself (`draw_joint`).
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor

from edlm_dist.diffusion.loss import Denoiser, masked_token_nll
from edlm_dist.diffusion.noise import gumbel_argmax
from edlm_dist.diffusion.tokens import TokenSpace
from edlm_dist.models.base import CausalLM


class TokenScorer(Protocol):
    """An AR model: per-position log p(x0_i | x0_<i) [N, L], normalised over the data tokens of
    the energy's token space (MDLM's: `vocab_size` data ids 0..V-1), and log p(target_i | x0_<i)
    for other targets from the same forward."""

    vocab_size: int

    def token_log_probs(self, x0: Tensor) -> Tensor: ...

    def conditional_log_probs(self, x0: Tensor, *targets: Tensor) -> list[Tensor]: ...

    def __call__(self, x0: Tensor) -> Tensor:
        """Logits [N, L, >= num_tokens of the token space], position i predicting x0_i from x0_<i."""
        ...


class DataTokenScorer(torch.nn.Module):
    """A causal LM of this package as a `TokenScorer` in the token space `tokens` of the denoiser
    it scores for: its conditionals are log-softmaxes over the data tokens' columns only, so
    neither padding columns (>= the tokenizer's ids of an imported model) nor the mask's or
    excluded ids' columns take probability mass (Dream's mask 151,666 inside Qwen2.5's rows).
    In MDLM's layout (data ids 0..V-1 = the AR's vocabulary) it is the model's own
    `conditional_log_probs`, bit for bit. The logits are the model's (`forward`), so compiling
    this module compiles the model's forward."""

    def __init__(self, model: CausalLM, tokens: TokenSpace) -> None:
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"expected a causal LM module, got {type(model).__name__}")
        self.model = model
        self.tokens = tokens
        self.vocab_size = model.vocab_size

    def forward(self, x0: Tensor) -> Tensor:
        """The model's logits [N, L, padded vocabulary], position i predicting x0_i."""
        return self.model(x0)

    def token_log_probs(self, x0: Tensor) -> Tensor:
        """log p_AR(x0_i | x0_<i) [N, L] float32, normalised over the data tokens."""
        return self.conditional_log_probs(x0, x0)[0]

    def conditional_log_probs(self, x0: Tensor, *targets: Tensor) -> list[Tensor]:
        """For each of `targets` (data tokens) [N, L]: log p_AR(targets_i | x0_<i) float32, from one forward."""
        logits = self(x0)
        with torch.autocast(device_type=x0.device.type, enabled=False):
            log_probs = torch.log_softmax(self.tokens.data_logits(logits).float(), dim=-1)
            return [log_probs.gather(-1, self.tokens.data_columns(target)[..., None]).squeeze(-1) for target in targets]


class AREnergy:
    """Energy `(x0, xt, t, proposal_logp) -> float64 [N]` from an AR model (see module docstring).

    The AR model is put in eval mode and run under no_grad in chunks of at most `max_batch`
    rows, so k candidates x B sequences never go through one forward at once. When the caller
    has no `proposal_logp` (the sampler always passes it), the `denoiser` computes it; t is
    read only by a time-conditioned denoiser. `tokens` is the denoiser's token space (default:
    MDLM's for the AR's `vocab_size`); the AR's conditionals must be normalised over its data
    tokens, or coAR's Z(xt) = 1 fails.
    """

    def __init__(
        self, ar_model: TokenScorer, *, carry_over: bool = False, max_batch: int = 256,
        denoiser: Denoiser | None = None, tokens: TokenSpace | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.ar_model = ar_model
        self.carry_over = carry_over
        self.max_batch = max_batch
        self.denoiser = denoiser
        self.tokens = tokens or TokenSpace.mdlm(ar_model.vocab_size)
        for model in (ar_model, denoiser):
            if isinstance(model, torch.nn.Module):
                model.eval()

    @property
    def reads_time(self) -> bool:
        """Only through the denoiser, and only when the caller leaves proposal_logp to it."""
        return self.denoiser is not None and bool(getattr(self.denoiser, "reads_time", True))

    @property
    def kind(self) -> Literal["ar", "coar"]:
        return "coar" if self.carry_over else "ar"

    @property
    def self_normalised(self) -> bool:
        """coAR: sum_x0 p_theta(x0 | xt) exp(-E) = 1, so log Z(xt) = 0 exactly (not estimated)."""
        return self.carry_over

    @torch.no_grad()
    def prefix_log_probs(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """log p_AR(x_i | x_<i) and log p_AR(targets_i | x_<i), float64 [N, L] each, from one AR
        forward over each chunk of x: what the coAR estimators weigh a proposal's prefix with."""
        pairs = [self.ar_model.conditional_log_probs(a, a, b) for a, b in zip(x.split(self.max_batch), targets.split(self.max_batch))]
        return torch.cat([p[0] for p in pairs]).double(), torch.cat([p[1] for p in pairs]).double()

    @torch.no_grad()
    def draw_joint(self, xt: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
        """`num` draws per sequence from the coAR joint itself, [B, num, L]: the AR model run left
        to right over xt's masked positions (float64 Gumbel-max), the unmasked tokens kept. One
        AR forward per masked column: sequential, so for when that is affordable."""
        x = xt.repeat_interleave(num, dim=0)
        masked = x == self.tokens.mask_id
        for column in masked.any(dim=0).nonzero().flatten().tolist():
            rows = masked[:, column]
            logits = torch.cat([self.tokens.data_logits(self.ar_model(chunk)[:, column])
                                for chunk in x[rows].split(self.max_batch)])
            x[rows, column] = self.tokens.token_ids(gumbel_argmax(logits.double(), generator=generator))
        return x.view(xt.shape[0], num, -1)

    def _check(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_logp: Tensor | None) -> None:
        if proposal_logp is None and self.denoiser is None:
            raise ValueError(
                "proposal_logp (log p_theta(x0 | xt) over masked positions) is required when the energy has no denoiser"
            )
        if x0.dim() != 2 or x0.shape != xt.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and xt {tuple(xt.shape)} must both be [N, L]")
        n = x0.shape[0]
        for name, value in (("t", t), ("proposal_logp", proposal_logp)):
            if value is not None and tuple(value.shape) != (n,):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected ({n},)")
        bad = x0[~self.tokens.is_data(x0)]
        if bad.numel():
            raise ValueError(f"x0 holds token id {int(bad[0])}, outside {self.tokens.describe_data()}")
        unmasked = xt != self.tokens.mask_id
        if not torch.equal(x0[unmasked], xt[unmasked]):
            raise ValueError("x0 differs from xt at unmasked positions: candidates must carry over xt's tokens")

    def _proposal_logp(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """log p_theta(x0 | xt) summed over the masked positions, float64 [N], from the denoiser."""
        chunks = zip(x0.split(self.max_batch), xt.split(self.max_batch), t.split(self.max_batch))
        return torch.cat([
            -masked_token_nll(self.denoiser(b, c), a, b == self.tokens.mask_id, tokens=self.tokens).double().sum(-1)
            for a, b, c in chunks
        ])

    @torch.no_grad()
    def __call__(self, x0: Tensor, xt: Tensor, t: Tensor, proposal_logp: Tensor | None) -> Tensor:
        """Energies [N] float64: -(sum of AR log-probs over all, or only masked, positions) + proposal_logp."""
        self._check(x0, xt, t, proposal_logp)
        if proposal_logp is None:
            proposal_logp = self._proposal_logp(x0, xt, t)
        chunks = [self.ar_model.token_log_probs(chunk).double() for chunk in x0.split(self.max_batch)]
        token_lp = torch.cat(chunks) if chunks else x0.new_zeros(x0.shape, dtype=torch.float64)
        if token_lp.shape != x0.shape:
            raise ValueError(f"token_log_probs returned {tuple(token_lp.shape)}, expected {tuple(x0.shape)}")
        if self.carry_over:
            token_lp = token_lp.masked_fill(xt != self.tokens.mask_id, 0.0)
        return proposal_logp.double() - token_lp.sum(dim=-1)
