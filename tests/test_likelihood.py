"""log Z estimates and the two EDLM likelihood quantities, against values known by enumeration."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distributed_utils import run_distributed

from edlm_dist.diffusion import LogLinearSchedule, nelbo
from edlm_dist.diffusion.likelihood import edlm_nelbo, logz_bounds
from edlm_dist.distributed import RankPool, init_distributed
from test_importance_sampling import gen, residual_energy
from toy_dist import ContextFreeDenoiser, ExactDenoiser, ToyDistribution

N_SEQS = 20000
T_MIN = 1e-3


# ---------------------------------------------------------------- log Z bounds

PROPOSAL = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
ENERGY_TABLE = torch.tensor([1.5, 0.5, 0.0, -0.5, -1.5], dtype=torch.float64)
LOG_Z = torch.logsumexp(PROPOSAL.log() - ENERGY_TABLE, 0).item()  # log sum_x q(x) exp(-E(x))


def _bounds_bias(n: int, reps: int = 20000, seed: int = 0) -> tuple[float, float, float]:
    """Mean (low - log Z), mean (high - log Z) over `reps` sets of n draws, and the larger SE."""
    draws = torch.multinomial(PROPOSAL, reps * n, replacement=True, generator=gen(seed)).view(reps, n)
    low, high, _ = logz_bounds(ENERGY_TABLE[draws])
    se = max(low.std().item(), high.std().item()) / math.sqrt(reps)
    return low.mean().item() - LOG_Z, high.mean().item() - LOG_Z, se


def test_logz_bounds_bracket_log_z_and_tighten_with_n():
    low8, high8, se8 = _bounds_bias(8)
    assert low8 < -4 * se8 and high8 > 4 * se8, (low8, high8, se8)  # measured -0.082, +0.063
    low4, high4, _ = _bounds_bias(4, seed=1)
    low64, high64, se64 = _bounds_bias(64, seed=2)
    assert low4 < low8 < low64 < 0 < high64 < high4  # measured -0.15 < ... < -0.011; 0.010 < 0.083
    assert abs(low64) < 0.02 and abs(high64) < 0.02 + 4 * se64


def _loo_by_loop(neg: torch.Tensor) -> torch.Tensor:
    n = neg.shape[-1]
    rows = [torch.logsumexp(torch.cat([neg[..., :j], neg[..., j + 1:]], -1), -1) for j in range(n)]
    return torch.stack(rows, -1) - math.log(n - 1)


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_leave_one_out_matches_a_direct_loop(scale):
    energies = torch.randn(6, 9, generator=gen(3), dtype=torch.float64) * scale
    if scale > 1:  # spread over ~1000 nats: exp(-e) overflows and underflows in float64
        energies[:, 0] = -1000.0
        weights = torch.exp(-energies)
        assert not torch.isfinite(torch.log(weights.sum(-1, keepdim=True) - weights)).all()
    low, high, ess = logz_bounds(energies)
    n = energies.shape[-1]
    expected_low = torch.logsumexp(-energies, -1) - math.log(n)
    expected_high = (2 * n - 1) * expected_low - 2 * (n - 1) * _loo_by_loop(-energies).mean(-1)
    torch.testing.assert_close(low, expected_low, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(high, expected_high, rtol=1e-12, atol=1e-9)
    assert torch.isfinite(high).all() and ((ess >= 1 - 1e-9) & (ess <= n + 1e-9)).all()


def test_logz_bounds_need_two_draws_and_are_exact_for_equal_energies():
    with pytest.raises(ValueError, match="n >= 2"):
        logz_bounds(torch.zeros(3, 1))
    low, high, ess = logz_bounds(torch.full((2, 5), 0.7))
    torch.testing.assert_close(low, torch.full((2,), -0.7, dtype=torch.float64))
    torch.testing.assert_close(high, low)
    torch.testing.assert_close(ess, torch.full((2,), 5.0, dtype=torch.float64))


# ---------------------------------------------------------------- EDLM likelihood on a toy source


@pytest.fixture(scope="module")
def toy() -> ToyDistribution:
    return ToyDistribution(vocab=3, length=3, seed=0, temperature=2.0)


def exact_expectations(toy: ToyDistribution, schedule=LogLinearSchedule()) -> tuple[torch.Tensor, torch.Tensor]:
    """E_{t, M}[(1 - t_min) w(t) term] for every sequence of the toy, float64 [N] each, with the
    exact joint: the bound's term sum_{i in M} -log p(x0_i | x0_rest) and the paper's term
    -log p(x0_M | x0_rest). Subsets enumerated, t integrated on a fine midpoint grid."""
    length, m = toy.length, toy.mask_id
    subsets = torch.tensor([[(s >> i) & 1 for i in range(length)] for s in range(2**length)]).bool()
    xt = torch.where(subsets[None], m, toy.seqs[:, None]).view(-1, length)  # [N * S, L]
    x0 = toy.seqs.repeat_interleave(len(subsets), 0)
    cond = toy.conditional_marginals(xt).gather(-1, x0[..., None]).squeeze(-1)
    masked = xt == m
    bound = -(cond.log() * masked).sum(-1)
    consistent = (masked[:, None] | (xt[:, None] == toy.seqs[None])).all(-1).double()
    paper = (consistent @ toy.probs).log() - toy.log_prob(x0)
    grid = T_MIN + (1 - T_MIN) * (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    alpha, weight = schedule.alpha(grid), schedule.weight(grid)
    count = subsets.sum(-1)
    law = (1 - alpha[:, None]) ** count * alpha[:, None] ** (length - count)  # P(M | t), [T, S]
    per_subset = (weight[:, None] * law).mean(0) * (1 - T_MIN)  # integral over [t_min, 1], [S]
    shape = (len(toy.seqs), len(subsets))
    return (bound.view(shape) * per_subset).sum(-1), (paper.view(shape) * per_subset).sum(-1)


@pytest.fixture(scope="module")
def data(toy) -> torch.Tensor:
    return toy.seqs[torch.multinomial(toy.probs, N_SEQS, replacement=True, generator=gen(0))]


def _paired(est: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    diff = est - target
    return diff.mean().item(), diff.std().item() / math.sqrt(len(diff))


def test_exact_values_the_toy_tests_rely_on(toy):
    bound, paper = exact_expectations(toy)
    entropy = -(toy.probs * toy.probs.log()).sum().item()
    expected_bound, expected_paper = (toy.probs @ bound).item(), (toy.probs @ paper).item()
    assert entropy == pytest.approx(2.170, abs=1e-3)
    assert entropy - 0.01 < expected_bound < entropy  # the prior and [0, t_min] terms: -0.003
    assert expected_paper == pytest.approx(1.825, abs=1e-3)  # 0.345 nats below the entropy


@pytest.mark.parametrize("denoiser_cls", [ExactDenoiser, ContextFreeDenoiser])
def test_bound_with_exact_joint_matches_the_nll(toy, data, denoiser_cls):
    # residual energy: the joint is the source, whatever the proposal; the context-free one
    # (marginals only, NELBO 2.71 nats) is then corrected down to the NLL
    bound, _ = exact_expectations(toy)
    target = bound[toy.index(data)]
    est = edlm_nelbo(denoiser_cls(toy), residual_energy(toy), data, mask_id=toy.mask_id,
                     num_proposals=64, t_min=T_MIN, generator=gen(1))
    bias, se = _paired(est.estimate, target)
    assert abs(bias) < 4 * se + 0.03, (bias, se)  # measured -0.004 (exact), +0.015 (context-free)
    low_bias, _ = _paired(est.companion, target)
    assert low_bias < bias
    assert (est.ess > 1).all() and (est.ess <= 64 + 1e-9).all()


def test_paper_estimate_falls_below_the_entropy(toy, data):
    entropy = -toy.log_prob(data)
    _, paper = exact_expectations(toy)
    est = edlm_nelbo(ExactDenoiser(toy), residual_energy(toy), data, mask_id=toy.mask_id,
                     estimator="paper", num_proposals=64, t_min=T_MIN, generator=gen(2))
    gap, se = _paired(est.estimate, entropy)
    assert gap < -0.25 and gap < -8 * se, (gap, se)  # not an upper bound
    bias, se = _paired(est.estimate, paper[toy.index(data)])
    assert abs(bias) < 4 * se + 0.02, (bias, se)


def estimates_with_proposals_over_ranks(out: Path) -> None:
    """Every rank: both estimators on the toy's data, each rank drawing half of the proposals."""
    rank = init_distributed("cpu", "gloo", 60).rank
    source = ToyDistribution(vocab=3, length=3, seed=0, temperature=2.0)
    x0 = source.seqs[torch.multinomial(source.probs, N_SEQS, replacement=True, generator=gen(0))]
    results = {
        estimator: tuple(edlm_nelbo(
            ContextFreeDenoiser(source), residual_energy(source), x0, mask_id=source.mask_id, estimator=estimator,
            num_proposals=64, t_min=T_MIN, generator=gen(1), pool=RankPool(), proposal_generator=gen(100 + rank),
        ))
        for estimator in ("conservative", "paper")
    }
    torch.save(results, out / f"rank{rank}.pt")


def test_proposals_split_over_two_ranks_give_the_same_estimates_everywhere(toy, data, tmp_path):
    run_distributed(estimates_with_proposals_over_ranks, 2, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for estimator in ("conservative", "paper"):
        for a, b in zip(ranks[0][estimator], ranks[1][estimator]):
            assert torch.equal(a, b)  # the energies of all 64 proposals reach every rank
    bound, paper = exact_expectations(toy)
    for estimator, exact in (("conservative", bound), ("paper", paper)):
        bias, se = _paired(ranks[0][estimator][0], exact[toy.index(data)])  # (estimate, companion, ess)
        assert abs(bias) < 4 * se + 0.03, (estimator, bias, se)
    ess = ranks[0]["conservative"][2]
    assert (ess > 1).all() and (ess <= 64 + 1e-9).all()


def test_correlated_bits_paper_estimate_is_half_the_entropy_the_bound_all_of_it():
    # two bits that always agree: entropy log 2; the paper term is log 2 only when both are
    # masked, which a weight 1/t and P = t^2 turn into (1/2) log 2
    toy = ToyDistribution(vocab=2, length=2)
    toy.probs = torch.tensor([0.5, 1e-12, 1e-12, 0.5], dtype=torch.float64)
    toy.probs /= toy.probs.sum()
    bound, paper = exact_expectations(toy)
    assert (toy.probs @ paper).item() == pytest.approx(0.5 * math.log(2), abs=2e-3)  # 0.347
    assert (toy.probs @ bound).item() == pytest.approx(math.log(2), abs=2e-3)  # 0.693
    data = toy.seqs[torch.multinomial(toy.probs, N_SEQS, replacement=True, generator=gen(6))]
    for estimator, expected in (("paper", 0.5 * math.log(2)), ("conservative", math.log(2))):
        est = edlm_nelbo(ExactDenoiser(toy), residual_energy(toy), data, mask_id=toy.mask_id,
                         estimator=estimator, num_proposals=64, t_min=T_MIN, generator=gen(7))
        bias, se = _paired(est.estimate, torch.full_like(est.estimate, expected))
        assert abs(bias) < 4 * se + 0.03, (estimator, bias, se)


@pytest.mark.parametrize("estimator", ["conservative", "paper"])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_zero_energy_reduces_to_nelbo(toy, estimator, num_samples):
    x0 = toy.seqs[torch.randint(0, len(toy.seqs), (64,), generator=gen(4))]
    valid = torch.ones_like(x0, dtype=torch.bool)
    valid[::3, -1] = False

    def zero(x, xt, t, logp):
        return torch.zeros(len(x), dtype=torch.float64)

    args = {"mask_id": toy.mask_id, "num_samples": num_samples, "valid_mask": valid}
    ref = nelbo(ExactDenoiser(toy), x0, generator=gen(5), **args).double()
    est = edlm_nelbo(ExactDenoiser(toy), zero, x0, estimator=estimator, num_proposals=4,
                     generator=gen(5), **args)
    torch.testing.assert_close(est.companion, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(est.estimate, ref, rtol=1e-5, atol=1e-5)
    assert (ref == 0).any() and (ref > 0).any()  # some sequences had nothing masked


def test_bad_arguments_are_rejected(toy):
    x0 = toy.seqs[:2]
    with pytest.raises(ValueError, match="estimator"):
        edlm_nelbo(ExactDenoiser(toy), residual_energy(toy), x0, mask_id=toy.mask_id, estimator="exact")
    with pytest.raises(ValueError, match="num_proposals"):
        edlm_nelbo(ExactDenoiser(toy), residual_energy(toy), x0, mask_id=toy.mask_id, num_proposals=1)
