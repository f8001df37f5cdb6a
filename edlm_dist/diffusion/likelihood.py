"""Likelihood of EDLM (diffusion model p_theta times residual energy E): log Z estimates and
the two per-sequence quantities of DESIGN.md, the paper estimate and the valid bound.

The joint is p(x0 | xt) = p_theta(x0 | xt) exp(-E(x0, xt, t)) / Z(xt), with
Z(xt) = E_{x ~ p_theta(.|xt)} exp(-E(x, xt, t)) estimated from proposal draws (paper Theorem 1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from edlm_dist.diffusion.energy import effective_sample_size
from edlm_dist.diffusion.loss import Denoiser
from edlm_dist.diffusion.noise import mask_tokens, stratified_times, uniform
from edlm_dist.diffusion.sampling import CandidatePool, Energy, LocalPool, candidate_energies, draw_candidates
from edlm_dist.diffusion.schedules import LogLinearSchedule, Schedule

ESTIMATORS = ("bound", "paper")


class LogZBounds(NamedTuple):
    """Estimates of log E exp(-E) over the last dim of the energies, float64 [...]."""

    low: torch.Tensor  # logmeanexp(-e): biased low for every n (Jensen)
    high: torch.Tensor  # (2n - 1) low - 2 (n - 1) loo: biased high only for large enough n
    ess: torch.Tensor  # effective sample size of the weights softmax(-e)


class EDLMNelbo(NamedTuple):
    """Per-sequence estimates in nats, float64 [B]: `high` is the one to report as an upper
    estimate, `low` the other end; `ess` the mean ESS of the log Z proposal weights."""

    low: torch.Tensor
    high: torch.Tensor
    ess: torch.Tensor


def _leave_one_out_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """log sum_{k != j} exp(x_k) for every j along the last dim, without subtracting
    exponentials: the exclusive prefix and suffix log-cumsum-exps, joined by logaddexp."""
    pad = torch.full_like(x[..., :1], -math.inf)
    prefix = torch.cat([pad, torch.logcumsumexp(x, dim=-1)[..., :-1]], dim=-1)
    suffix = torch.cat([torch.logcumsumexp(x.flip(-1), dim=-1).flip(-1)[..., 1:], pad], dim=-1)
    return torch.logaddexp(prefix, suffix)


def logz_bounds(energies: torch.Tensor) -> LogZBounds:
    """Low and high estimates of log Z = log E exp(-E) from n draws `energies` [..., n] (paper
    Theorem 1, leave-one-out form of Nowozin 2018), all in float64 log-sum-exp.

    low = logmeanexp(-e); high = (2n - 1) low - 2 (n - 1) mean_j logmeanexp(-e without j).
    Both tend to log Z as n grows; `high` is above it only asymptotically, so read it with the
    ESS and with how it moves with n.
    """
    n = energies.shape[-1]
    if n < 2:
        raise ValueError(f"logz_bounds needs n >= 2 energies in the last dim, got {n}")
    neg = -energies.double()
    low = torch.logsumexp(neg, dim=-1) - math.log(n)
    loo = (_leave_one_out_logsumexp(neg) - math.log(n - 1)).mean(dim=-1)
    high = (2 * n - 1) * low - 2 * (n - 1) * loo
    return LogZBounds(low, high, effective_sample_size(energies))


def _data_log_probs(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, mask_id: int) -> torch.Tensor:
    """log p_theta(x0_i | xt) at masked positions (SUBS: data ids only), 0 elsewhere; float64 [B, L]."""
    scored = logits[masked][:, :mask_id].double()
    logp = scored.gather(-1, x0[masked][:, None]).squeeze(-1) - torch.logsumexp(scored, dim=-1)
    return torch.zeros(x0.shape, dtype=torch.float64, device=x0.device).masked_scatter(masked, logp)


def _one_draw(
    denoiser: Denoiser, energy: Energy, x0: torch.Tensor, xt: torch.Tensor, masked: torch.Tensor,
    t: torch.Tensor, *, mask_id: int, num_proposals: int, estimator: str,
    generator: torch.Generator | None, pool: CandidatePool, proposal_generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unweighted (low, high) of the masked-set term for one (t, xt) per sequence, and the ESS."""
    batch, length = x0.shape
    logits = denoiser(xt, t)
    data_logp = _data_log_probs(logits, x0, masked, mask_id)
    nll = -data_logp.sum(dim=-1)  # -log p_theta(x0_M | xt), the MDLM term
    local = pool.local_count(num_proposals)
    if estimator == "paper":
        candidates, logp = draw_candidates(logits, xt, masked, local, mask_id, proposal_generator)
        data_energy = energy(x0, xt, t, -nll).double()
        logz = logz_bounds(pool.gather(candidate_energies(energy, candidates, logp, xt, t)))
        base = nll + data_energy
        return base + logz.low, base + logz.high, logz.ess
    # "bound": one masked position i per sequence, uniformly; its clamped draws share one batch
    # with the unclamped ones: rows [0, B) draw M, rows [B, 2B) draw M \ {i} with x_i = x0_i.
    scores = uniform((batch, length), generator=generator, device=x0.device)
    pick = torch.nn.functional.one_hot(torch.where(masked, scores, -1.0).argmax(-1), length).bool()
    pick &= masked
    clamped_xt = torch.where(pick, x0, xt)
    candidates, logp = draw_candidates(
        torch.cat([logits, logits]), torch.cat([xt, clamped_xt]), torch.cat([masked, masked & ~pick]),
        local, mask_id, proposal_generator,
    )
    logp[batch:] += (data_logp * pick).sum(dim=-1, keepdim=True)  # log p_theta of x over all of M
    energies = pool.gather(candidate_energies(energy, candidates, logp, torch.cat([xt, xt]), torch.cat([t, t])))
    logz, middle = logz_bounds(energies[:batch]), logz_bounds(energies[batch:])
    count = masked.sum(dim=-1).double()
    # sum_{i in M} -log p_joint(x0_i|xt) = nll + sum_i (log Z - middle_i), the sum over i by |M| x one i
    return (
        nll + count * (logz.low - middle.high),
        nll + count * (logz.high - middle.low),
        logz.ess,
    )


@torch.no_grad()
def edlm_nelbo(
    denoiser: Denoiser,
    energy: Energy,
    x0: torch.Tensor,
    *,
    mask_id: int,
    schedule: Schedule | None = None,
    num_samples: int = 1,
    num_proposals: int = 8,
    estimator: str = "bound",
    valid_mask: torch.Tensor | None = None,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
    pool: CandidatePool | None = None,
    proposal_generator: torch.Generator | None = None,
) -> EDLMNelbo:
    """Monte-Carlo (low, high) estimates of the EDLM NELBO of each sequence, in nats [B].

    Same (t, xt) scheme and weight (1 - t_min) w(t) as `nelbo`; all (t, mask) draws are taken
    first, in `nelbo`'s order, so with one generator seed both see the same (t, xt). Then per
    draw, with `num_proposals` proposals x ~ p_theta(.|xt) (unmasked tokens carried over):
    - "paper" (eq. 12-13): -log p_theta(x0_M|xt) + E(x0, xt, t) + log Z(xt). Not a bound: below
      the NLL once the joint captures correlations (docs/likelihood.md).
    - "bound": sum_{i in M} -log p_joint(x0_i|xt), the valid continuous-time NELBO of the joint;
      the energy correction log Z - log E_{x_i = x0_i} exp(-E) is estimated at one uniformly
      drawn masked position and multiplied by |M| (unbiased over i).
    `high` combines the log Z estimates that push the result up (the reported figure); with
    E = 0 both estimators equal `nelbo`. A sequence with nothing masked contributes 0.

    With a `pool` over ranks (`edlm_dist.distributed.RankPool`), every rank passes the same x0 and
    `generator` and draws its share of the proposals from its own `proposal_generator`; the
    energies are gathered, so every rank returns the same estimates. Without one, the proposals
    come from `generator` too.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_proposals < 2:
        raise ValueError(f"num_proposals must be >= 2 (log Z needs n >= 2 draws), got {num_proposals}")
    if not 0.0 <= t_min < 1.0:
        raise ValueError(f"t_min must be in [0, 1), got {t_min}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    schedule = schedule or LogLinearSchedule()
    pool = pool or LocalPool()
    if proposal_generator is None:
        proposal_generator = generator
    draws = []
    for _ in range(num_samples):
        t = stratified_times(x0.shape[0], t_min=t_min, generator=generator, device=x0.device)
        xt, masked = mask_tokens(
            x0, t, schedule=schedule, mask_id=mask_id, valid_mask=valid_mask, generator=generator
        )
        draws.append((t, xt, masked))
    totals = torch.zeros(3, x0.shape[0], dtype=torch.float64, device=x0.device)
    for t, xt, masked in draws:
        low, high, ess = _one_draw(
            denoiser, energy, x0, xt, masked, t, mask_id=mask_id, num_proposals=num_proposals,
            estimator=estimator, generator=generator, pool=pool, proposal_generator=proposal_generator,
        )
        weight = (1.0 - t_min) * schedule.weight(t.double())
        keep = masked.any(dim=-1)
        totals[0] += torch.where(keep, weight * low, 0.0)
        totals[1] += torch.where(keep, weight * high, 0.0)
        totals[2] += ess
    low, high, ess = totals / num_samples
    return EDLMNelbo(low, high, ess)
