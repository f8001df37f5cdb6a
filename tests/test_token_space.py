"""Token spaces: MDLM's convention (data ids 0..V-1, mask V) stays bit for bit what it was, and
a space laid out as LLaDA's and Dream's are (the mask among the tokens, data tokens above it,
an excluded id, padded logits) gives the answers of the equivalent MDLM-convention toy: the
same NELBO, samples, candidates, NCE negatives, coAR joint draws and likelihood figures (the
toy relabelled keeps the order of the data tokens, so every draw takes the same noise), the
same laws (chi-square against the exact laws), coAR's Z(xt) = 1 exactly, and the mask, excluded
and padded ids are never drawn."""

from __future__ import annotations

import hashlib
import itertools

import pytest
import torch

from edlm_dist.diffusion import (
    LogLinearSchedule,
    TokenSpace,
    draw_candidates,
    mask_tokens,
    masked_token_nll,
    nelbo,
    sample,
)
from edlm_dist.diffusion.likelihood import edlm_nelbo
from edlm_dist.diffusion.tokens import resolve_tokens
from edlm_dist.energy import AREnergy
from edlm_dist.evaluation.generation import _check_tokens
from edlm_dist.training.tasks import draw_denoisings
from test_importance_sampling import chi_square, implied_edlm_distribution, residual_energy, table_energy
from toy_dist import (
    BlurredDenoiser,
    ExactDenoiser,
    Relabelling,
    RelabelledAR,
    RelabelledDenoiser,
    ToyAR,
    ToyDistribution,
    middle_mask_space,
)

V, L, B = 3, 4, 6
MID = middle_mask_space(V)  # ids: 0 data, 1 mask, 2 data, 3 excluded, 4 data; logits padded to 8


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the type ----------------------------------------------------------------------------------

def test_mdlm_convention_is_a_slice_of_the_logits():
    tokens = TokenSpace.mdlm(5)
    assert (tokens.mask_id, tokens.num_tokens, tokens.num_data) == (5, 6, 5)
    logits = torch.randn(2, 3, 64)
    data = tokens.data_logits(logits)
    assert data.data_ptr() == logits.data_ptr() and torch.equal(data, logits[..., :5])  # a view, no copy
    columns = torch.tensor([[0, 4], [2, 3]])
    assert tokens.token_ids(columns) is columns
    assert torch.equal(tokens.data_ids(), torch.arange(5))
    assert tokens.is_data(torch.arange(-1, 8)).tolist() == [False] + [True] * 5 + [False] * 3
    assert tokens.describe_data() == "the data vocabulary [0, 5)"
    assert resolve_tokens(None, 5) == resolve_tokens(5) == resolve_tokens(tokens) == tokens


def test_a_middle_mask_space_selects_the_data_columns_in_id_order():
    assert torch.equal(MID.data_ids(), torch.tensor([0, 2, 4])) and MID.num_data == 3
    logits = torch.arange(16.0).view(2, 8)
    assert torch.equal(MID.data_logits(logits), torch.tensor([[0.0, 2, 4], [8, 10, 12]]))
    assert torch.equal(MID.token_ids(torch.tensor([2, 0, 1])), torch.tensor([4, 0, 2]))
    assert MID.is_data(torch.arange(-1, 9)).tolist() == [False, True, False, True, False, True] + [False] * 4
    assert MID.describe_data() == "the data tokens (ids [0, 5) but the mask id 1 and 1 excluded ids)"
    llada = TokenSpace(mask_id=126336, num_tokens=126464)  # chat tokens such as <|eot_id|> 126348 lie above the mask
    ids = torch.tensor([126335, 126336, 126348, 126463, 126464])
    assert llada.is_data(ids).tolist() == [True, False, True, True, False]


@pytest.mark.parametrize("kwargs,match", [
    ({"mask_id": 5, "num_tokens": 5}, "not a token id"),
    ({"mask_id": -1, "num_tokens": 5}, "not a token id"),
    ({"mask_id": 1, "num_tokens": 5, "excluded": (1,)}, "other than the mask"),
    ({"mask_id": 1, "num_tokens": 5, "excluded": (3, 2)}, "sorted"),
    ({"mask_id": 1, "num_tokens": 5, "excluded": (2, 2)}, "distinct"),
    ({"mask_id": 1, "num_tokens": 5, "excluded": (5,)}, "token ids"),
    ({"mask_id": 0, "num_tokens": 2, "excluded": (1,)}, "no data token"),
])
def test_impossible_spaces_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenSpace(**kwargs)


def test_a_call_names_its_space_exactly_once():
    for args in ((None, None), (MID, 3)):
        with pytest.raises(ValueError, match="not both or neither"):
            resolve_tokens(*args)


# ---- MDLM's convention, bit for bit as before ----------------------------------------------------

def mdlm_convention_figures() -> dict[str, torch.Tensor]:
    """Figures of every computation that reads the token space, in MDLM's convention (a blurred
    toy denoiser with a large mask logit and padded logits, an AR toy energy)."""
    ar = ToyAR(V, L, seed=1)
    dist = ar.distribution()
    den = BlurredDenoiser(dist, blur=0.3)
    x0 = dist.seqs[torch.multinomial(dist.probs, B, replacement=True, generator=gen(0))]
    out = {
        "nelbo": nelbo(den, x0, mask_id=V, num_samples=2, generator=gen(1)),
        "sample": sample(den, batch_size=B, seq_len=L, mask_id=V, steps=3, generator=gen(2)),
        "sample_is_gumbel": sample(den, batch_size=B, seq_len=L, mask_id=V, steps=3, generator=gen(3),
                                   energy=AREnergy(ar), num_candidates=4),
        "sample_is_icdf": sample(den, batch_size=B, seq_len=L, mask_id=V, steps=3, generator=gen(4),
                                 energy=AREnergy(ar), num_candidates=4, candidate_draw="inverse_cdf"),
    }
    t = torch.full((B,), 0.6)
    xt, masked = mask_tokens(x0, t, schedule=LogLinearSchedule(), mask_id=V, generator=gen(5))
    logits = den(xt, t)
    out["token_nll"] = masked_token_nll(logits, x0, masked, mask_id=V)
    for method in ("gumbel", "inverse_cdf"):
        out[f"cand_{method}"], out[f"cand_logp_{method}"] = draw_candidates(
            logits, xt, masked, 3, V, gen(6), method=method, per_position=True)
    out["negatives"] = draw_denoisings(logits, xt, TokenSpace.mdlm(V), [(0, "neg", i) for i in range(B)])
    coar = AREnergy(ar, carry_over=True)
    out["draw_joint"] = coar.draw_joint(xt, 2, gen(7))
    out["energy_own_logp"] = AREnergy(ar, denoiser=den)(x0, xt, t, None)
    for estimator, energy in (("joint", coar), ("truncated", coar), ("coupled", AREnergy(ar)),
                              ("conservative", AREnergy(ar)), ("conservative", coar), ("paper", AREnergy(ar))):
        figures = edlm_nelbo(den, energy, x0, mask_id=V, estimator=estimator, num_proposals=4, num_samples=2,
                             generator=gen(8))
        for name, value in zip(("estimate", "companion", "ess"), figures):
            out[f"{estimator}_{energy.kind}_{name}"] = value
    return out


def digest(x: torch.Tensor) -> str:
    """The first 16 hex digits of the sha256 of a tensor's bytes, dtype and shape."""
    x = x.contiguous()
    return hashlib.sha256(x.numpy().tobytes() + str((x.dtype, tuple(x.shape))).encode()).hexdigest()[:16]


# `mdlm_convention_figures` on main before token spaces existed (e3ad03c; draw_denoisings took the mask id V)
BEFORE = {
    "nelbo": "ecb9d4a4b1fcd1b1", "sample": "788f86e41c5ef671", "sample_is_gumbel": "80b7ce19014f38b0",
    "sample_is_icdf": "6e0b999452116dbc", "token_nll": "2d4bf669d8bb0634", "cand_gumbel": "ebb15fd151e8c9ba",
    "cand_logp_gumbel": "0997f48665555739", "cand_inverse_cdf": "b19b6588c3c864df",
    "cand_logp_inverse_cdf": "122c2cfbf5733b31", "negatives": "d9564d90e4212552", "draw_joint": "60a5cbea1c0abd66",
    "energy_own_logp": "8e6a07c287f90afc",
    "joint_coar_estimate": "007f86f652edcc34", "joint_coar_companion": "69ec238db8505fc0",
    "joint_coar_ess": "0d66a1a1a973319d", "truncated_coar_estimate": "c7cf737906a2ccc9",
    "truncated_coar_companion": "42772fdf06eeb1eb", "truncated_coar_ess": "6cce72b0f33c11a7",
    "coupled_ar_estimate": "15cb1ebbb2c903aa", "coupled_ar_companion": "5b186b8309ae9878",
    "coupled_ar_ess": "1bef47c3d99f8b64", "conservative_ar_estimate": "dc61ce151692781b",
    "conservative_ar_companion": "1f0225895da57498", "conservative_ar_ess": "66da5632a58b3702",
    "conservative_coar_estimate": "1943d7b67a6145be", "conservative_coar_companion": "5c04a5915037196d",
    "conservative_coar_ess": "ba86690ac9ed3a13", "paper_ar_estimate": "0403780c799a02db",
    "paper_ar_companion": "25d239200076a495", "paper_ar_ess": "78f7d210f7f9a223",
}


def test_the_mdlm_convention_is_bit_identical_to_before():
    figures = mdlm_convention_figures()
    assert figures.keys() == BEFORE.keys()
    changed = [name for name, value in figures.items() if digest(value) != BEFORE[name]]
    assert not changed, changed


# ---- a middle-mask space gives the MDLM toy's answers ---------------------------------------------

@pytest.fixture(scope="module")
def pair():
    """The MDLM toy (AR source, its distribution, the blurred denoiser, data x0) and its relabelling."""
    ar = ToyAR(V, L, seed=1)
    dist = ar.distribution()
    x0 = dist.seqs[torch.multinomial(dist.probs, B, replacement=True, generator=gen(0))]
    return ar, dist, BlurredDenoiser(dist, blur=0.3), x0, Relabelling(V, MID)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_the_nelbo_and_token_nll_are_those_of_the_mdlm_toy(pair):
    _, _, den, x0, rel = pair
    mid_den = RelabelledDenoiser(den, rel)
    assert_same(nelbo(mid_den, rel.ids(x0), tokens=MID, num_samples=3, generator=gen(1)),
                nelbo(den, x0, mask_id=V, num_samples=3, generator=gen(1)))
    t = torch.full((B,), 0.7)
    xt, masked = mask_tokens(x0, t, schedule=LogLinearSchedule(), mask_id=V, generator=gen(2))
    assert masked.any() and (~masked).any()
    assert_same(masked_token_nll(mid_den(rel.ids(xt), t), rel.ids(x0), masked, tokens=MID),
                masked_token_nll(den(xt, t), x0, masked, mask_id=V))


@pytest.mark.parametrize("method", ["gumbel", "inverse_cdf"])
def test_candidates_and_negatives_are_those_of_the_mdlm_toy(pair, method):
    _, _, den, x0, rel = pair
    t = torch.full((B,), 0.6)
    xt, masked = mask_tokens(x0, t, schedule=LogLinearSchedule(), mask_id=V, generator=gen(5))
    logits, mid_logits = den(xt, t), RelabelledDenoiser(den, rel)(rel.ids(xt), t)
    candidates, logp = draw_candidates(mid_logits, rel.ids(xt), masked, 50, MID, gen(6), method=method,
                                       per_position=True, max_noise_elements=7)
    reference, reference_logp = draw_candidates(logits, xt, masked, 50, V, gen(6), method=method, per_position=True)
    assert MID.is_data(candidates).all()
    assert torch.equal(rel.mdlm_ids(candidates), reference)
    assert_same(logp, reference_logp)
    keys = [(0, "neg", i) for i in range(B)]
    negatives = draw_denoisings(mid_logits, rel.ids(xt), MID, keys)
    assert torch.equal(rel.mdlm_ids(negatives), draw_denoisings(logits, xt, TokenSpace.mdlm(V), keys))


@pytest.mark.parametrize("energy_kind,candidate_draw", [(None, "gumbel"), ("ar", "gumbel"), ("coar", "inverse_cdf")])
def test_samples_are_those_of_the_mdlm_toy(pair, energy_kind, candidate_draw):
    ar, _, den, _, rel = pair
    n = 200
    init = torch.tensor([[V, 2, V, V]]).repeat(n, 1)  # a prompt token, the rest generated

    def energy(tokens, model):
        return {} if energy_kind is None else {
            "energy": AREnergy(model, carry_over=energy_kind == "coar", tokens=tokens), "num_candidates": 4}

    mid = sample(RelabelledDenoiser(den, rel), batch_size=n, seq_len=L, tokens=MID, steps=3, init=rel.ids(init),
                 generator=gen(3), candidate_draw=candidate_draw, **energy(MID, RelabelledAR(ar, rel)))
    mdlm = sample(den, batch_size=n, seq_len=L, mask_id=V, steps=3, init=init, generator=gen(3),
                  candidate_draw=candidate_draw, **energy(TokenSpace.mdlm(V), ar))
    assert MID.is_data(mid).all() and (mid[:, 1] == rel.ids(torch.tensor(2))).all()
    assert torch.equal(rel.mdlm_ids(mid), mdlm)
    assert (mid[:, [0, 2, 3]] == 4).any()  # id 4, a data token above the mask and the excluded id, is drawn


def test_ar_energies_and_coar_joint_draws_are_those_of_the_mdlm_toy(pair):
    ar, _, den, x0, rel = pair
    t = torch.full((B,), 0.6)
    xt, _ = mask_tokens(x0, t, schedule=LogLinearSchedule(), mask_id=V, generator=gen(5))
    mid_ar = AREnergy(RelabelledAR(ar, rel), denoiser=RelabelledDenoiser(den, rel), tokens=MID)
    assert_same(mid_ar(rel.ids(x0), rel.ids(xt), t, None), AREnergy(ar, denoiser=den)(x0, xt, t, None))
    coar = AREnergy(RelabelledAR(ar, rel), carry_over=True, tokens=MID)
    joint = coar.draw_joint(rel.ids(xt), 20, gen(7))
    assert MID.is_data(joint).all()
    assert torch.equal(rel.mdlm_ids(joint), AREnergy(ar, carry_over=True).draw_joint(xt, 20, gen(7)))
    for bad in (MID.mask_id, 3):  # the mask and the excluded id are not data
        with pytest.raises(ValueError, match=f"token id {bad}, outside the data tokens"):
            coar(rel.ids(x0).index_fill(1, torch.tensor([0]), bad), rel.ids(x0), t, torch.zeros(B))


@pytest.mark.parametrize("estimator,carry_over", [("joint", True), ("truncated", True), ("coupled", False),
                                                   ("conservative", False), ("conservative", True), ("paper", False),
                                                   ("paper", True)])
def test_likelihood_figures_are_those_of_the_mdlm_toy(pair, estimator, carry_over):
    ar, _, den, x0, rel = pair
    mid = edlm_nelbo(RelabelledDenoiser(den, rel), AREnergy(RelabelledAR(ar, rel), carry_over=carry_over, tokens=MID),
                     rel.ids(x0), tokens=MID, estimator=estimator, num_proposals=6, num_samples=3, generator=gen(8))
    mdlm = edlm_nelbo(den, AREnergy(ar, carry_over=carry_over), x0, mask_id=V, estimator=estimator, num_proposals=6,
                      num_samples=3, generator=gen(8))
    assert mid.estimate.isfinite().all() and (mid.estimate > 0).any()
    for a, b in zip(mid, mdlm):
        assert_same(a, b)


# ---- the laws, in the middle-mask space itself ----------------------------------------------------

STEPS, WINDOW, K, N = 3, 0.5, 3, 40000


@pytest.fixture(scope="module")
def toy4() -> ToyDistribution:
    return ToyDistribution(vocab=V, length=L, seed=3, temperature=2.0)


@pytest.mark.parametrize("energy_kind,candidate_draw", [(None, "gumbel"), ("residual", "gumbel"),
                                                         ("table", "inverse_cdf")])
def test_sampling_laws_in_a_middle_mask_space(toy4, energy_kind, candidate_draw):
    """Ancestral sampling, and EDLM importance sampling with either candidate draw, from the
    exact denoiser in the middle-mask space: chi-square against the laws the algorithm implies
    (computed on the MDLM toy), and no mask, excluded or padded id in any sample."""
    rel = Relabelling(V, MID)
    fn = {None: None, "residual": residual_energy(toy4), "table": table_energy(toy4)}[energy_kind]
    extra = {} if fn is None else {
        "energy": lambda x0, xt, t, logp: fn(rel.mdlm_ids(x0), rel.mdlm_ids(xt), t, logp), "num_candidates": K}
    x = sample(RelabelledDenoiser(ExactDenoiser(toy4), rel), batch_size=N, seq_len=L, tokens=MID, steps=STEPS,
               window=WINDOW, generator=gen(21), candidate_draw=candidate_draw, **extra)
    assert MID.is_data(x).all()
    exact = implied_edlm_distribution(toy4, STEPS, energy=fn, num_candidates=K if fn else 1, window=WINDOW)
    stat, bound = chi_square(rel.mdlm_ids(x), toy4, exact)
    assert stat < bound, (stat, bound)
    other = toy4.probs if fn is None else implied_edlm_distribution(toy4, STEPS)  # the data; the plain sampler
    assert chi_square(rel.mdlm_ids(x), toy4, other)[0] > 4 * bound  # the test can tell


def test_coar_is_self_normalised_in_a_middle_mask_space():
    """sum over x0 consistent with xt of p_theta(x0 | xt) exp(-E) = 1 for every xt of the
    middle-mask space (Z = 1, log Z = 0 exactly), p_theta over the data tokens only."""
    ar, rel = ToyAR(V, 3, seed=2), Relabelling(V, MID)
    dist = ar.distribution()
    den = RelabelledDenoiser(BlurredDenoiser(dist, blur=0.4), rel)
    ids = MID.data_ids().tolist() + [MID.mask_id]
    xt = torch.tensor(list(itertools.product(ids, repeat=3)))  # every partially masked state
    seqs = rel.ids(dist.seqs)
    ok = ((xt[:, None] == MID.mask_id) | (xt[:, None] == seqs[None])).all(-1)
    row, seq = ok.nonzero(as_tuple=True)
    x0, xt_rep, t = seqs[seq], xt[row], torch.full((len(row),), 0.5)
    data_logp = torch.log_softmax(MID.data_logits(den(xt_rep, t)).double(), dim=-1)
    columns = rel.mdlm_ids(x0)  # the data columns keep MDLM's order
    proposal_logp = data_logp.gather(-1, columns[..., None]).squeeze(-1).masked_fill(xt_rep != MID.mask_id, 0).sum(-1)

    def normaliser(carry_over: bool) -> torch.Tensor:
        energy = AREnergy(RelabelledAR(ar, rel), carry_over=carry_over, tokens=MID)
        weights = (proposal_logp - energy(x0, xt_rep, t, proposal_logp)).exp()
        return torch.zeros(len(xt), dtype=torch.float64).index_add(0, row, weights)

    z = normaliser(carry_over=True)
    assert len(z) == (V + 1) ** 3
    torch.testing.assert_close(z, torch.ones_like(z), atol=1e-12, rtol=0)
    assert (normaliser(carry_over=False) - 1).abs().max() > 0.1  # the test can tell


def test_gen_ppl_refuses_samples_holding_the_mask_or_an_excluded_id():
    _check_tokens(torch.tensor([[0, 2, 4]]), MID)
    for bad in (1, 3, 5):
        with pytest.raises(ValueError, match=rf"token id {bad}, outside the data tokens \(ids \[0, 5\)"):
            _check_tokens(torch.tensor([[0, bad, 4]]), MID)
