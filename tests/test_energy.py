"""The AR energies (EDLM-AR, carry-over AR) on toy distributions known by enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch

from edlm_dist.config import ModelConfig
from edlm_dist.diffusion import sample
from edlm_dist.energy import AREnergy
from edlm_dist.models import build_model
from toy_dist import ExactDenoiser, ToyDistribution, total_variation


class ExactAR:
    """The toy's exact AR factorisation: token_log_probs(x0)[:, i] = log p(x0_i | x0_<i), float64."""

    def __init__(self, toy: ToyDistribution) -> None:
        self.vocab_size = toy.vocab
        joint = toy.probs.reshape((toy.vocab,) * toy.length)
        # prefix[k]: p(x_0..x_{k-1}), the joint marginalised over the later positions (a sum
        # over dim=() would reduce everything, hence the k = L case apart)
        self.prefix = [joint.sum(dim=tuple(range(k, toy.length))) for k in range(toy.length)] + [joint]

    def token_log_probs(self, x0: torch.Tensor) -> torch.Tensor:
        prefix_lp = torch.stack(
            [p.log()[tuple(x0[:, :k].T)].expand(len(x0)) for k, p in enumerate(self.prefix)], dim=-1
        )
        return prefix_lp.diff(dim=-1)


@pytest.fixture(scope="module")
def toy() -> ToyDistribution:
    return ToyDistribution(vocab=3, length=3, seed=0, temperature=2.0)


def all_xt(toy: ToyDistribution) -> torch.Tensor:
    """Every partially masked state in {0..V-1, mask}^L."""
    return torch.tensor(list(itertools.product(range(toy.vocab + 1), repeat=toy.length)))


def consistent_pairs(toy: ToyDistribution, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each xt row, every x0 agreeing with its unmasked tokens: (row of xt, x0, xt) flattened,
    with the exact factorised proposal log p_theta(x0 | xt) over masked positions."""
    ok = ((xt[:, None] == toy.mask_id) | (xt[:, None] == toy.seqs[None])).all(-1)  # [B, N]
    row, seq = ok.nonzero(as_tuple=True)
    x0, xt_rep = toy.seqs[seq], xt[row]
    cond = toy.conditional_marginals(xt)[row]  # [P, L, V]
    token_lp = cond.gather(-1, x0[..., None]).squeeze(-1).log()
    proposal_logp = token_lp.masked_fill(xt_rep != toy.mask_id, 0.0).sum(-1)
    return row, x0, xt_rep, proposal_logp


def energies(energy: AREnergy, x0: torch.Tensor, xt: torch.Tensor, proposal_logp: torch.Tensor) -> torch.Tensor:
    return energy(x0, xt, torch.full((len(x0),), 0.5), proposal_logp)


def normaliser(toy: ToyDistribution, energy: AREnergy) -> torch.Tensor:
    """sum over x0 consistent with xt of p_theta(x0 | xt) exp(-E), for every xt."""
    xt = all_xt(toy)
    row, x0, xt_rep, proposal_logp = consistent_pairs(toy, xt)
    weight = (proposal_logp - energies(energy, x0, xt_rep, proposal_logp)).exp()
    return torch.zeros(len(xt), dtype=torch.float64).index_add(0, row, weight)


def test_exact_ar_matches_the_joint(toy):
    torch.testing.assert_close(ExactAR(toy).token_log_probs(toy.seqs).sum(-1), toy.log_prob(toy.seqs))


def test_ar_energy_is_the_residual_log_ratio(toy):
    m = toy.mask_id
    xt = torch.tensor([[m, m, m], [0, m, m], [m, 2, m], [m, m, 1], [1, m, 0]])
    row, x0, xt_rep, proposal_logp = consistent_pairs(toy, xt)
    energy = AREnergy(ExactAR(toy))
    e = energies(energy, x0, xt_rep, proposal_logp)
    assert e.dtype == torch.float64 and energy.kind == "ar" and energy.reads_time is False
    residual = -toy.log_prob(x0) + proposal_logp
    for r in range(len(xt)):
        diff = (e - residual)[row == r]
        assert len(diff) > 1
        torch.testing.assert_close(diff, diff[:1].expand_as(diff), atol=1e-12, rtol=0)


def test_carry_over_energy_is_self_normalised_and_plain_ar_is_not(toy):
    coar = AREnergy(ExactAR(toy), carry_over=True, max_batch=7)
    assert coar.kind == "coar"
    z = normaliser(toy, coar)
    assert len(z) == (toy.vocab + 1) ** toy.length
    torch.testing.assert_close(z, torch.ones_like(z), atol=1e-9, rtol=0)
    z_ar = normaliser(toy, AREnergy(ExactAR(toy)))
    assert (z_ar - 1).abs().max() > 0.1  # sum_x0 p(x0) over x0 consistent with xt = p(observed)


def test_carry_over_needs_position_zero_scored(toy):
    # Dropping the first AR factor (as a model without a start token would) breaks Z = 1
    # exactly on the states with position 0 masked.
    class NoFirst(ExactAR):
        def token_log_probs(self, x0):
            return super().token_log_probs(x0).index_fill(-1, torch.tensor([0]), 0.0)

    z = normaliser(toy, AREnergy(NoFirst(toy), carry_over=True))
    first_masked = all_xt(toy)[:, 0] == toy.mask_id
    assert ((z[first_masked] - 1).abs() > 1e-3).all()
    torch.testing.assert_close(z[~first_masked], torch.ones_like(z[~first_masked]), atol=1e-9, rtol=0)


def test_importance_sampling_with_the_ar_energy_recovers_the_joint(toy):
    def draw(seed: int, **kw) -> torch.Tensor:
        return sample(
            ExactDenoiser(toy), batch_size=20000, seq_len=toy.length, mask_id=toy.mask_id, steps=1,
            generator=torch.Generator().manual_seed(seed), **kw,
        )

    mdlm_tv = total_variation(toy.histogram(draw(1)), toy.probs)
    edlm = draw(2, energy=AREnergy(ExactAR(toy), max_batch=4096), num_candidates=16)
    assert mdlm_tv > 0.2
    assert total_variation(toy.histogram(edlm), toy.probs) < 0.05


@pytest.fixture(scope="module")
def tiny_ar():
    model = build_model("ar", ModelConfig(n_layers=1, hidden_size=16, n_heads=2, cond_dim=8), vocab_size=5, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def test_transformer_token_log_probs_sum_to_log_prob(tiny_ar):
    tiny_ar.eval()
    x0 = torch.randint(0, 5, (6, 7), generator=torch.Generator().manual_seed(1))
    token_lp = tiny_ar.token_log_probs(x0)
    assert token_lp.shape == (6, 7) and token_lp.dtype == torch.float32
    assert token_lp.std() > 0.1
    torch.testing.assert_close(token_lp.sum(-1), tiny_ar.log_prob(x0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tiny_ar.token_log_probs(x0).dtype == torch.float32


@pytest.mark.parametrize("carry_over", [False, True])
def test_energy_on_a_transformer_chunks_in_eval_mode(tiny_ar, carry_over):
    tiny_ar.train()  # dropout 0.1 by default: the energy must switch it off
    energy = AREnergy(tiny_ar, carry_over=carry_over, max_batch=3)
    assert not tiny_ar.training
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, 5, (10, 6), generator=gen)
    xt = torch.where(torch.rand(10, 6, generator=gen) < 0.5, 5, x0)
    proposal_logp = -torch.rand(10, generator=gen, dtype=torch.float64)
    t = torch.rand(10, generator=gen)
    chunked = energy(x0, xt, t, proposal_logp)
    whole = AREnergy(tiny_ar, carry_over=carry_over)(x0, xt, t, proposal_logp)
    # float32 forwards of different batch sizes agree to float32 rounding only
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-5)
    token_lp = tiny_ar.token_log_probs(x0).double()
    if carry_over:
        token_lp = token_lp.masked_fill(xt != 5, 0.0)
    torch.testing.assert_close(chunked, proposal_logp - token_lp.sum(-1), atol=1e-4, rtol=1e-5)
    assert not chunked.requires_grad


@pytest.mark.parametrize(
    "x0,xt,t,proposal_logp,match",
    [
        ([[0, 1]], [[0, 1, 2]], [0.5], [0.0], "must both be"),
        ([0, 1], [0, 1], [0.5], [0.0], "must both be"),
        ([[0, 1]], [[0, 3]], [0.5, 0.5], [0.0], "t has shape"),
        ([[0, 1]], [[0, 3]], [0.5], [[0.0]], "proposal_logp has shape"),
        ([[0, 1]], [[0, 3]], [0.5], None, "has no denoiser"),
        ([[0, 1]], [[2, 3]], [0.5], [0.0], "carry over"),
        ([[0, 3]], [[0, 3]], [0.5], [0.0], "token id 3"),
        ([[0, -1]], [[0, 3]], [0.5], [0.0], "token id -1"),
    ],
)
def test_bad_inputs_are_rejected(toy, x0, xt, t, proposal_logp, match):
    energy = AREnergy(ExactAR(toy))
    proposal = None if proposal_logp is None else torch.tensor(proposal_logp, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        energy(torch.tensor(x0), torch.tensor(xt), torch.tensor(t), proposal)


def test_max_batch_must_be_positive(toy):
    with pytest.raises(ValueError, match="max_batch"):
        AREnergy(ExactAR(toy), max_batch=0)
