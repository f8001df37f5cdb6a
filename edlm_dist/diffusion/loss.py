"""The continuous-time NELBO of masked diffusion under the SUBS parameterisation."""

from __future__ import annotations

from typing import Callable

import torch

from edlm_dist.diffusion.noise import mask_tokens, stratified_times
from edlm_dist.diffusion.schedules import LogLinearSchedule, Schedule
from edlm_dist.diffusion.tokens import TokenSpace, resolve_tokens

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def masked_token_nll(
    logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, *, tokens: TokenSpace | None = None,
    mask_id: int | None = None,
) -> torch.Tensor:
    """-log p_theta(x0_i | xt) at masked positions, 0 elsewhere; float32 [B, L].

    This is the SUBS parameterisation: the softmax runs over the data tokens of `tokens` only
    (the mask, padded and excluded logits are left out; `mask_id` = V is shorthand for MDLM's
    `TokenSpace.mdlm(V)`), and unmasked positions are a point mass on the observed token (so
    they cost nothing, whatever the network says there). Only the masked rows are normalised,
    in float32.
    """
    tokens = resolve_tokens(tokens, mask_id)
    rows = logits[masked]
    targets = x0[masked]
    nll_masked = (torch.logsumexp(tokens.data_logits(rows).float(), dim=-1)
                  - rows.gather(-1, targets[:, None]).squeeze(-1).float())
    nll = torch.zeros(x0.shape, dtype=torch.float32, device=logits.device)
    return nll.masked_scatter(masked, nll_masked)


def weighted_nelbo_terms(
    nll: torch.Tensor, t: torch.Tensor, *, schedule: Schedule, t_min: float
) -> torch.Tensor:
    """Per-sequence NELBO estimate (nats) from one draw of (t, xt): (1 - t_min) w(t) sum_i nll_i.

    The factor (1 - t_min) makes the uniform draw of t over [t_min, 1] an unbiased estimate of
    the integral over that interval. A sequence with nothing masked contributes exactly 0
    (also at t = 0, where the weight is infinite); a NaN stays NaN (a diverged model must show).
    """
    total = nll.sum(dim=-1)
    weight = schedule.weight(t.double()).float()
    return torch.where(total != 0, (1.0 - t_min) * weight * total, torch.zeros_like(total))


def nelbo(
    denoiser: Denoiser,
    x0: torch.Tensor,
    *,
    tokens: TokenSpace | None = None,
    mask_id: int | None = None,
    schedule: Schedule | None = None,
    num_samples: int = 1,
    valid_mask: torch.Tensor | None = None,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte-Carlo estimate of the continuous-time NELBO of each sequence, in nats: Tensor[B].

    Averages `num_samples` independent draws of (t, xt) per sequence, t stratified over the
    batch. `denoiser(xt, t)` returns logits [B, L, >= tokens.num_tokens] (MDLM's `mask_id` = V:
    >= V + 1); `valid_mask` (bool [B, L]) keeps padding out of masking and scoring. The prior
    term at t = 1 is dropped, as in MDLM.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not 0.0 <= t_min < 1.0:
        raise ValueError(f"t_min must be in [0, 1), got {t_min}")
    tokens = resolve_tokens(tokens, mask_id)
    schedule = schedule or LogLinearSchedule()
    total = torch.zeros(x0.shape[0], dtype=torch.float32, device=x0.device)
    for _ in range(num_samples):
        t = stratified_times(x0.shape[0], t_min=t_min, generator=generator, device=x0.device)
        xt, masked = mask_tokens(
            x0, t, schedule=schedule, mask_id=tokens.mask_id, valid_mask=valid_mask, generator=generator
        )
        nll = masked_token_nll(denoiser(xt, t), x0, masked, tokens=tokens)
        total += weighted_nelbo_terms(nll, t, schedule=schedule, t_min=t_min)
    return total / num_samples
