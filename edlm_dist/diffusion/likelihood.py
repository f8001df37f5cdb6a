"""Likelihood of EDLM (diffusion model p_theta times residual energy E): log Z estimates, the
estimators of the valid bound (truncated, coupled, conservative) and the paper's estimate.

The joint is p(x0 | xt) = p_theta(x0 | xt) exp(-E(x0, xt, t)) / Z(xt), with
Z(xt) = E_{x ~ p_theta(.|xt)} exp(-E(x, xt, t)) estimated from proposal draws (paper Theorem 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from edlm_dist.diffusion.energy import effective_sample_size
from edlm_dist.diffusion.loss import Denoiser
from edlm_dist.diffusion.noise import mask_tokens, stratified_times, uniform
from edlm_dist.diffusion.sampling import CandidatePool, Energy, LocalPool, candidate_energies, draw_candidates
from edlm_dist.diffusion.schedules import LogLinearSchedule, Schedule
from edlm_dist.diffusion.tokens import TokenSpace, resolve_tokens

ESTIMATORS = ("joint", "truncated", "coupled", "conservative", "paper")

# What each estimator's figure is, by whether the energy is self-normalised (coAR).
GUARANTEED, CONSISTENT, PAPER = "guaranteed upper bound", "consistent estimate", "paper estimate, not a bound"
# The ESS floor, as a share of the proposals: a consistent estimate whose proposals' mean ESS is
# below it is not compared with anything. On the enumerable toys its 2-s.e. interval then misses
# the exact value far more often than noise explains (docs/likelihood.md, "When a consistent
# estimate cannot decide").
ESS_FLOOR = 0.5


class SelfNormalisedEnergy(Protocol):
    """An energy that knows Z(xt) = 1 (coAR) and exposes the AR conditionals behind it."""

    self_normalised: bool

    def prefix_log_probs(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def draw_joint(self, xt: torch.Tensor, num: int, generator: torch.Generator | None) -> torch.Tensor: ...


def is_self_normalised(energy: Energy) -> bool:
    """Whether `energy` declares log Z(xt) = 0 exactly (coAR); unknown energies do not."""
    return bool(getattr(energy, "self_normalised", False))


def estimators_for(energy: Energy, joint: bool = False) -> tuple[str, ...]:
    """The estimators that apply to `energy`, tightest valid one first: coAR's truncated bound
    (with `joint`, first its version on the coAR joint's own draws), else the coupled estimate;
    then the conservative one and the paper's."""
    if not is_self_normalised(energy):
        return "coupled", "conservative", "paper"
    return (("joint",) if joint else ()) + ("truncated", "conservative", "paper")


def below_ess_floor(ess: float, num_proposals: int) -> bool:
    """Whether a mean ESS `ess` of `num_proposals` weights is too low for a consistent estimate
    to decide anything (`ESS_FLOOR`)."""
    return ess < ESS_FLOOR * num_proposals


def estimator_kind(estimator: str, self_normalised: bool) -> str:
    """What the `estimate` of `estimator` is: a guaranteed upper bound on the EDLM NELBO (at any
    number of proposals), a consistent estimate of it, or the paper's estimate (not a bound)."""
    if estimator == "paper":
        return PAPER
    if estimator in ("joint", "truncated") or (estimator == "conservative" and self_normalised):
        return GUARANTEED
    return CONSISTENT


class LogZBounds(NamedTuple):
    """Estimates of log E exp(-E) over the last dim of the energies, float64 [...]."""

    low: torch.Tensor  # logmeanexp(-e): biased low for every n (Jensen)
    high: torch.Tensor  # (2n - 1) low - 2 (n - 1) loo: biased high only for large enough n
    ess: torch.Tensor  # effective sample size of the weights softmax(-e)


class EDLMNelbo(NamedTuple):
    """Per-sequence figures in nats, float64 [B]: `estimate`, the figure an estimator reports
    (`estimator_kind` says what it is), and its `companion`: the other end for the conservative
    and paper estimators (log Z's low side), the jackknife bias-corrected value for the coupled
    and truncated ones, so estimate - companion is the bias the jackknife sees; `ess`, the mean
    ESS of the proposals' weights."""

    estimate: torch.Tensor
    companion: torch.Tensor
    ess: torch.Tensor


def _leave_one_out_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """log sum_{k != j} exp(x_k) for every j along the last dim, without subtracting
    exponentials: the exclusive prefix and suffix log-cumsum-exps, joined by logaddexp."""
    pad = torch.full_like(x[..., :1], -math.inf)
    prefix = torch.cat([pad, torch.logcumsumexp(x, dim=-1)[..., :-1]], dim=-1)
    suffix = torch.cat([torch.logcumsumexp(x.flip(-1), dim=-1).flip(-1)[..., 1:], pad], dim=-1)
    return torch.logaddexp(prefix, suffix)


def _logmeanexp_and_left_out(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logmeanexp over the last dim of x, and the mean of its n leave-one-out logmeanexps."""
    n = x.shape[-1]
    return (torch.logsumexp(x, dim=-1) - math.log(n),
            (_leave_one_out_logsumexp(x) - math.log(n - 1)).mean(dim=-1))


def _log_ratio(log_num: torch.Tensor, log_den: torch.Tensor) -> torch.Tensor:
    """log(num / den) of two sums of weights, -inf where the numerator is 0 whatever the
    denominator (no draw supports it), so that -inf - (-inf) never makes a NaN."""
    return torch.where(log_num == -math.inf, -math.inf, log_num - log_den)


def _extrapolated(value: torch.Tensor, left_out: torch.Tensor, factor: float) -> torch.Tensor:
    """value + factor (value - left_out): the jackknife (factor n - 1) and Theorem 1's high side
    (factor 2 (n - 1)) of a log-mean-exp `value` from the mean of its leave-one-out values. Where
    a leave-one-out value is -inf (at most one draw has weight) there is nothing to extrapolate
    from, and the figure is `value` itself."""
    return torch.where(left_out.isfinite(), value + factor * (value - left_out), value)


def _masked_sum(x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """The sum of x [B, L] over masked positions: `where`, not a product, so that an infinite
    value at an unmasked position never turns into a NaN."""
    return torch.where(masked, x, 0.0).sum(dim=-1)


def logz_bounds(energies: torch.Tensor) -> LogZBounds:
    """Low and high estimates of log Z = log E exp(-E) from n draws `energies` [..., n] (paper
    Theorem 1, leave-one-out form of Nowozin 2018), all in float64 log-sum-exp.

    low = logmeanexp(-e); high = (2n - 1) low - 2 (n - 1) mean_j logmeanexp(-e without j).
    Both tend to log Z as n grows; `high` is above it only asymptotically, so read it with the
    ESS and with how it moves with n. Where at most one draw has weight (a leave-one-out sum is
    empty) `high` equals `low`; where none has, both are -inf and the ESS is 0.
    """
    n = energies.shape[-1]
    if n < 2:
        raise ValueError(f"logz_bounds needs n >= 2 energies in the last dim, got {n}")
    low, loo = _logmeanexp_and_left_out(-energies.double())
    return LogZBounds(low, _extrapolated(low, loo, 2 * (n - 1)), effective_sample_size(energies))


def _data_log_probs(logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, tokens: TokenSpace) -> torch.Tensor:
    """log p_theta(x0_i | xt) at masked positions (SUBS: over the data tokens only), 0 elsewhere; float64 [B, L]."""
    rows = logits[masked]
    logp = (rows.gather(-1, x0[masked][:, None]).squeeze(-1).double()
            - torch.logsumexp(tokens.data_logits(rows).double(), dim=-1))
    return torch.zeros(x0.shape, dtype=torch.float64, device=x0.device).masked_scatter(masked, logp)


@dataclass
class _MaskedSet:
    """One (t, xt) per sequence and what every estimator reads of it: the denoiser's logits,
    log p_theta(x0_i | xt) at masked positions (0 elsewhere), the MDLM term and |M|."""

    x0: torch.Tensor
    xt: torch.Tensor
    masked: torch.Tensor
    t: torch.Tensor
    logits: torch.Tensor
    data_logp: torch.Tensor
    tokens: TokenSpace

    @property
    def nll(self) -> torch.Tensor:
        return -self.data_logp.sum(dim=-1)  # -log p_theta(x0_M | xt)

    @property
    def count(self) -> torch.Tensor:
        return self.masked.sum(dim=-1).double()

    def times_count(self, x: torch.Tensor) -> torch.Tensor:
        """|M| x per sequence, 0 where nothing is masked (never 0 times an infinite x)."""
        return torch.where(self.count > 0, self.count * x, 0.0)


def _pick_position(d: _MaskedSet, generator: torch.Generator | None) -> torch.Tensor:
    """One masked position per sequence, uniformly (none where nothing is masked), bool [B, L]."""
    scores = uniform(tuple(d.x0.shape), generator=generator, device=d.x0.device)
    pick = torch.nn.functional.one_hot(torch.where(d.masked, scores, -1.0).argmax(-1), d.x0.shape[1]).bool()
    return pick & d.masked


def _paper(d: _MaskedSet, energy: Energy, n: int, pool: CandidatePool, proposals: torch.Generator | None) -> EDLMNelbo:
    """-log p_theta(x0_M|xt) + E(x0, xt, t) + log Z(xt); log Z = 0 exactly for a self-normalised
    energy (then no proposal is drawn), else its high (estimate) and low (companion) sides."""
    base = d.nll + energy(d.x0, d.xt, d.t, -d.nll).double()
    if is_self_normalised(energy):
        return EDLMNelbo(base, base, torch.full_like(base, math.nan))
    candidates, logp = draw_candidates(d.logits, d.xt, d.masked, pool.local_count(n), d.tokens, proposals)
    logz = logz_bounds(pool.gather(candidate_energies(energy, candidates, logp, d.xt, d.t)))
    return EDLMNelbo(-_log_ratio(-base, logz.high), -_log_ratio(-base, logz.low), logz.ess)


def _conservative(d: _MaskedSet, energy: Energy, n: int, generator: torch.Generator | None, pool: CandidatePool,
                  proposals: torch.Generator | None) -> EDLMNelbo:
    """sum_{i in M} -log p_joint(x0_i|xt) = nll + sum_i (log Z - log A_i), A_i = E_{x_i = x0_i}
    exp(-E), at one uniformly drawn i times |M|, from independent clamped and free draws: the
    low side of log A_i and the high side of log Z push the estimate up (a bound only as n grows,
    except for a self-normalised energy, where log Z = 0 and Jensen makes it one at any n)."""
    pick = _pick_position(d, generator)
    local = pool.local_count(n)
    normalised = is_self_normalised(energy)
    # rows [0, B) draw M \ {i} with x_i = x0_i; rows [B, 2B) draw all of M for log Z
    rows = 1 if normalised else 2
    clamped_xt = torch.where(pick, d.x0, d.xt)
    candidates, logp = draw_candidates(
        torch.cat([d.logits] * rows), torch.cat([clamped_xt, d.xt][:rows]),
        torch.cat([d.masked & ~pick, d.masked][:rows]), local, d.tokens, proposals,
    )
    batch = d.x0.shape[0]
    logp[:batch] += (d.data_logp * pick).sum(dim=-1, keepdim=True)  # log p_theta of x over all of M
    energies = pool.gather(candidate_energies(energy, candidates, logp, torch.cat([d.xt] * rows), torch.cat([d.t] * rows)))
    middle = logz_bounds(energies[:batch])
    if normalised:
        return EDLMNelbo(d.nll - d.times_count(middle.low), d.nll - d.times_count(middle.high), middle.ess)
    logz = logz_bounds(energies[batch:])
    return EDLMNelbo(d.nll - d.times_count(_log_ratio(middle.low, logz.high)),
                     d.nll - d.times_count(_log_ratio(middle.high, logz.low)), logz.ess)


def _jackknifed_log_ratio(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log(sum exp a / sum exp b) over the last dim and its jackknife bias correction
    n r - (n - 1) mean_j r_{-j}, in float64 log-sum-exp."""
    ratio = _log_ratio(torch.logsumexp(a, dim=-1), torch.logsumexp(b, dim=-1))
    left_out = _log_ratio(_leave_one_out_logsumexp(a), _leave_one_out_logsumexp(b)).mean(dim=-1)
    return ratio, _extrapolated(ratio, left_out, a.shape[-1] - 1)


def _coupled(d: _MaskedSet, energy: Energy, n: int, generator: torch.Generator | None, pool: CandidatePool,
             proposals: torch.Generator | None) -> EDLMNelbo:
    """The same sum with A_i / Z estimated by common random numbers: each clamped draw is its
    free twin with position i set to the data, and A_i / Z is the ratio of their sums of
    exp(-E). Consistent, not a bound; the companion is the jackknife-corrected value."""
    pick = _pick_position(d, generator)
    candidates, logp = draw_candidates(d.logits, d.xt, d.masked, pool.local_count(n), d.tokens, proposals,
                                       per_position=True)
    chosen = pick[:, None]
    twins = torch.where(chosen, d.x0[:, None], candidates)
    twin_logp = torch.where(chosen, d.data_logp[:, None], logp).sum(dim=-1)
    free = pool.gather(candidate_energies(energy, candidates, logp.sum(dim=-1), d.xt, d.t))
    clamped = pool.gather(candidate_energies(energy, twins, twin_logp, d.xt, d.t))
    ratio, jackknifed = _jackknifed_log_ratio(-clamped, -free)
    return EDLMNelbo(d.nll - d.times_count(ratio), d.nll - d.times_count(jackknifed), effective_sample_size(free))


def _truncated(d: _MaskedSet, energy: SelfNormalisedEnergy, n: int, pool: CandidatePool,
               proposals: torch.Generator | None, joint: bool) -> EDLMNelbo:
    """coAR: -sum_{i in M} log P_coAR(x_i = x0_i | xt), every masked position scored from the
    same n draws. P_coAR(x_i = x0_i) = E_x [prod_{j in M, j < i} p_AR(x_j|x_<j) / p_theta(x_j|xt)
    p_AR(x0_i | x_<i)]: the AR factors after i are left out (their expectation is 1), so the
    weights stay short. Jensen makes -log of the sample mean an upper bound at any n. With
    `joint` the draws come from the coAR joint itself (the weights are then 1)."""
    batch, length = d.x0.shape
    local = pool.local_count(n)
    if joint:
        candidates = energy.draw_joint(d.xt, local, proposals)
    else:
        candidates, logq = draw_candidates(d.logits, d.xt, d.masked, local, d.tokens, proposals, per_position=True)
    flat = candidates.reshape(batch * local, length)
    own, data = (lp.view(batch, local, length) for lp in energy.prefix_log_probs(flat, d.x0.repeat_interleave(local, 0)))
    gain = torch.zeros_like(own) if joint else torch.where(d.masked[:, None], own - logq, 0.0)
    before = torch.cat([torch.zeros_like(gain[..., :1]), gain[..., :-1]], dim=-1).cumsum(dim=-1)  # sum over j < i
    log_w = pool.gather(before + data).transpose(1, 2)  # [B, L, n], log weight of x_i = x0_i
    total = pool.gather(gain.sum(dim=-1))
    log_p, left_out = _logmeanexp_and_left_out(log_w)
    return EDLMNelbo(-_masked_sum(log_p, d.masked), -_masked_sum(_extrapolated(log_p, left_out, n - 1), d.masked),
                     effective_sample_size(-total))


def masked_set_terms(
    denoiser: Denoiser, energy: Energy, x0: torch.Tensor, xt: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
    *, num_proposals: int, estimator: str, generator: torch.Generator | None, pool: CandidatePool,
    proposal_generator: torch.Generator | None, tokens: TokenSpace | None = None, mask_id: int | None = None,
) -> EDLMNelbo:
    """Unweighted figures of `estimator` (see `edlm_nelbo`) for the masked set of one (t, xt)
    per sequence: the term under the NELBO's time integral."""
    tokens = resolve_tokens(tokens, mask_id)
    logits = denoiser(xt, t)
    d = _MaskedSet(x0, xt, masked, t, logits, _data_log_probs(logits, x0, masked, tokens), tokens)
    if estimator == "paper":
        return _paper(d, energy, num_proposals, pool, proposal_generator)
    if estimator == "conservative":
        return _conservative(d, energy, num_proposals, generator, pool, proposal_generator)
    if estimator == "coupled":
        return _coupled(d, energy, num_proposals, generator, pool, proposal_generator)
    return _truncated(d, energy, num_proposals, pool, proposal_generator, joint=estimator == "joint")


@torch.no_grad()
def edlm_nelbo(
    denoiser: Denoiser,
    energy: Energy,
    x0: torch.Tensor,
    *,
    tokens: TokenSpace | None = None,
    mask_id: int | None = None,
    schedule: Schedule | None = None,
    num_samples: int = 1,
    num_proposals: int = 8,
    estimator: str = "conservative",
    valid_mask: torch.Tensor | None = None,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
    pool: CandidatePool | None = None,
    proposal_generator: torch.Generator | None = None,
) -> EDLMNelbo:
    """Monte-Carlo figures of the EDLM NELBO of each sequence, in nats [B] (docs/likelihood.md).

    Same (t, xt) scheme and weight (1 - t_min) w(t) as `nelbo`; all (t, mask) draws are taken
    first, in `nelbo`'s order, so with one generator seed both see the same (t, xt); `tokens` (or
    MDLM's `mask_id`) is the token space, as there. Then per draw, with `num_proposals`
    proposals x ~ p_theta(.|xt) over the data tokens (unmasked tokens carried over), the
    valid continuous-time NELBO of the joint, sum_{i in M} -log p_joint(x0_i|xt), by
    - "truncated" (self-normalised energies, coAR): every masked position from the same draws,
      the AR factors after i left out; a guaranteed upper bound at any n. "joint": the same on
      draws from the coAR joint instead of p_theta (sequential AR sampling, much tighter);
    - "coupled": clamped draws that are the free draws' twins, A_i / Z as a ratio of sums; a
      consistent estimate, with its jackknife correction as the companion;
    - "conservative": independent clamped and free draws, log Z's high side; an upper bound
      only as n grows (at any n for a self-normalised energy, whose log Z is 0);
    or the paper's eq. 12-13, "paper": -log p_theta(x0_M|xt) + E(x0, xt, t) + log Z(xt), not a
    bound (below the NLL once the joint captures correlations); exact for coAR (log Z = 0: the
    AR model's NLL over the masked tokens). With E = 0 every estimator equals `nelbo`. A
    sequence with nothing masked contributes 0.

    With a `pool` over ranks (`edlm_dist.distributed.RankPool`), every rank passes the same x0 and
    `generator` and draws its share of the proposals from its own `proposal_generator`; the
    energies (or weights) are gathered, so every rank returns the same figures. Without one, the
    proposals come from `generator` too.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_proposals < 2:
        raise ValueError(f"num_proposals must be >= 2 (log Z needs n >= 2 draws), got {num_proposals}")
    if not 0.0 <= t_min < 1.0:
        raise ValueError(f"t_min must be in [0, 1), got {t_min}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator in ("joint", "truncated") and not is_self_normalised(energy):
        raise ValueError(f"the {estimator} estimator needs a self-normalised energy (coAR)")
    tokens = resolve_tokens(tokens, mask_id)
    schedule = schedule or LogLinearSchedule()
    pool = pool or LocalPool()
    if proposal_generator is None:
        proposal_generator = generator
    draws = []
    for _ in range(num_samples):
        t = stratified_times(x0.shape[0], t_min=t_min, generator=generator, device=x0.device)
        xt, masked = mask_tokens(
            x0, t, schedule=schedule, mask_id=tokens.mask_id, valid_mask=valid_mask, generator=generator
        )
        draws.append((t, xt, masked))
    totals = torch.zeros(3, x0.shape[0], dtype=torch.float64, device=x0.device)
    for t, xt, masked in draws:
        figures = masked_set_terms(
            denoiser, energy, x0, xt, masked, t, tokens=tokens, num_proposals=num_proposals, estimator=estimator,
            generator=generator, pool=pool, proposal_generator=proposal_generator,
        )
        weight = (1.0 - t_min) * schedule.weight(t.double())
        keep = masked.any(dim=-1)
        totals[0] += torch.where(keep, weight * figures.estimate, 0.0)
        totals[1] += torch.where(keep, weight * figures.companion, 0.0)
        totals[2] += figures.ess
    return EDLMNelbo(*(totals / num_samples))
