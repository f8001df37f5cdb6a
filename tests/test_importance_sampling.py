"""EDLM importance sampling (paper Algorithm 1) against laws computed exactly by enumeration."""

from __future__ import annotations

import itertools
import math
from typing import Callable

import pytest
import torch

from edlm_dist.diffusion import LogLinearSchedule, Schedule, gumbel_argmax, sample
from edlm_dist.diffusion import sampling
from edlm_dist.diffusion.sampling import draw_candidates
from toy_dist import ExactDenoiser, ToyDistribution, implied_sampler_distribution, law_of_final_states, total_variation

EnergyFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def correlated_bits() -> ToyDistribution:
    """Two bits that agree w.p. 0.9. Their marginals are uniform, so the product of marginals
    (one MDLM step with the exact denoiser) is exactly 0.4 from it in total variation."""
    toy = ToyDistribution(vocab=2, length=2)
    toy.probs = torch.tensor([0.45, 0.05, 0.05, 0.45], dtype=torch.float64)
    return toy


def residual_energy(toy: ToyDistribution, sign: float = 1.0) -> EnergyFn:
    """E = -log p(x0) + log p_theta(x0 | xt): weights exp(-E) = p / p_theta, the exact correction."""
    return lambda x0, xt, t, proposal_logp: sign * (proposal_logp - toy.log_prob(x0))


def table_energy(toy: ToyDistribution, seed: int = 7) -> EnergyFn:
    """A fixed random energy per sequence of V^L, blind to xt, t and the proposal."""
    table = torch.randn(len(toy.seqs), generator=gen(seed), dtype=torch.float64) * 1.5
    return lambda x0, xt, t, proposal_logp: table[toy.index(x0)]


class TimedDenoiser(ExactDenoiser):
    """The exact denoiser, recording the t of each call and declaring whether it reads t."""

    def __init__(self, toy: ToyDistribution, reads_time: bool) -> None:
        super().__init__(toy)
        self.reads_time, self.times = reads_time, []

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.times.append(t[0].item())
        return super().__call__(xt, t)


class TimedEnergy:
    """An energy function, recording the t of each call and declaring whether it reads t."""

    def __init__(self, fn: EnergyFn, reads_time: bool) -> None:
        self.fn, self.reads_time, self.times = fn, reads_time, []

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        self.times.append(args[2][0].item())  # args: x0, xt, t, proposal_logp
        return self.fn(*args)


def unmask_probs(schedule: Schedule, steps: int) -> list[float]:
    ts = [1.0 - i / steps for i in range(steps + 1)]
    return [(schedule.alpha(s) - schedule.alpha(t)) / (1.0 - schedule.alpha(t)) for t, s in zip(ts, ts[1:])]


def picked_distribution(q: torch.Tensor, energies: torch.Tensor, k: int) -> torch.Tensor:
    """Law of the candidate picked w.p. softmax(-e) among k iid draws from q, exactly:
    P(x) = k q(x) w(x) E[1 / (w(x) + S)], S the summed weights w = exp(-e) of k - 1 other draws."""
    w = torch.exp(energies.min() - energies)
    sums = torch.zeros(1, dtype=torch.float64)
    sum_probs = torch.ones(1, dtype=torch.float64)
    for _ in range(k - 1):  # enumerate the k - 1 other draws: |support|^(k-1) outcomes
        sums = (sums[:, None] + w).flatten()
        sum_probs = (sum_probs[:, None] * q).flatten()
    return k * q * w * (sum_probs / (w[:, None] + sums)).sum(-1)


def implied_edlm_distribution(
    toy: ToyDistribution, steps: int, *, energy: EnergyFn | None = None, num_candidates: int = 1,
    window: float = 1.0, schedule: Schedule | None = None, init: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Exact law over `toy.seqs` of `sample` with the exact denoiser, propagated over every
    partially masked state. Inside the window the candidate is the importance-sampling pick
    among `num_candidates` draws of the factorised p_theta(. | xt), outside it one draw; each
    masked token then unmasks to the candidate's token with the step's probability."""
    schedule = schedule or LogLinearSchedule()
    m, length = toy.mask_id, toy.length
    states = {init or (m,) * length: 1.0}
    for i, p in enumerate(unmask_probs(schedule, steps)):
        nxt: dict[tuple[int, ...], float] = {}
        for state, mass in states.items():
            xt = torch.tensor(state)
            cond = toy.conditional_marginals(xt[None])[0]
            q = cond[torch.arange(length), toy.seqs].prod(-1)
            support = toy.seqs[q > 0]
            q = q[q > 0]
            if energy is not None and i / steps <= window:
                n = len(support)
                energies = energy(support, xt.expand(n, -1), torch.full((n,), 1.0 - i / steps), q.log())
                q = picked_distribution(q, energies.double(), num_candidates)
            masked = xt == m
            for unmask in itertools.product([False, True], repeat=int(masked.sum())):
                weight = p ** sum(unmask) * (1.0 - p) ** (len(unmask) - sum(unmask))
                if weight == 0.0:
                    continue
                moved = masked.clone()
                moved[masked] = torch.tensor(unmask, dtype=torch.bool)
                for row, prob in zip(torch.where(moved, support, xt).tolist(), q.tolist()):
                    nxt[tuple(row)] = nxt.get(tuple(row), 0.0) + mass * weight * prob
        states = nxt
    return law_of_final_states(toy, states)


def chi_square(x: torch.Tensor, toy: ToyDistribution, probs: torch.Tensor) -> tuple[float, float]:
    """Pearson's statistic of the samples x against `probs` (bins expecting < 5 pooled) and
    the chi-square quantile at 1 - 3e-7 (z = 5, Wilson-Hilferty) that a right sampler stays under."""
    counts = torch.bincount(toy.index(x), minlength=len(probs)).double()
    expected = probs * len(x)
    small = expected < 5
    counts = torch.cat([counts[~small], counts[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    if expected[-1] == 0:
        if counts[-1] > 0:
            return math.inf, 0.0
        counts, expected = counts[:-1], expected[:-1]
    stat = ((counts - expected) ** 2 / expected).sum().item()
    dof = len(counts) - 1
    return stat, dof * (1 - 2 / (9 * dof) + 5.0 * math.sqrt(2 / (9 * dof))) ** 3


def draw(
    toy: ToyDistribution, n: int, steps: int, seed: int, denoiser: ExactDenoiser | None = None, **kwargs
) -> torch.Tensor:
    return sample(
        denoiser or ExactDenoiser(toy), batch_size=n, seq_len=toy.length, mask_id=toy.mask_id,
        steps=steps, generator=gen(seed), **kwargs,
    )


def test_one_step_importance_sampling_corrects_the_factorised_proposal():
    toy = correlated_bits()
    n = 20000  # Monte-Carlo TV error over 4 sequences ~0.005
    assert total_variation(toy.product_of_marginals(), toy.probs) == pytest.approx(0.4)
    mdlm_tv = total_variation(toy.histogram(draw(toy, n, 1, seed=0)), toy.probs)
    edlm = draw(toy, n, 1, seed=1, energy=residual_energy(toy), num_candidates=16)
    flipped = draw(toy, n, 1, seed=2, energy=residual_energy(toy, sign=-1.0), num_candidates=16)
    assert mdlm_tv > 0.3
    assert total_variation(toy.histogram(edlm), toy.probs) < 0.05  # exactly 0.0103 for k = 16
    assert total_variation(toy.histogram(flipped), toy.probs) > mdlm_tv  # softmax(+E): 0.79


@pytest.fixture(scope="module")
def toy4() -> ToyDistribution:
    return ToyDistribution(vocab=3, length=4, seed=3, temperature=2.0)


def test_exact_propagation_without_energy_is_the_plain_sampler_law(toy4):
    plain = implied_sampler_distribution(toy4, unmask_probs(LogLinearSchedule(), 3))
    torch.testing.assert_close(implied_edlm_distribution(toy4, 3), plain)
    # one candidate is the plain step whatever the energy
    torch.testing.assert_close(implied_edlm_distribution(toy4, 3, energy=table_energy(toy4)), plain)


STEPS, WINDOW, K, N_MULTI = 3, 0.5, 3, 40000  # IS at t = 1 and 2/3, a plain step at t = 1/3


@pytest.mark.parametrize(
    "energy_kind,denoiser_reads_time,energy_reads_time",
    [("residual", False, False), ("residual", True, True), ("table", False, True)],
)
def test_multi_step_edlm_samples_the_law_the_algorithm_implies(
    toy4, energy_kind, denoiser_reads_time, energy_reads_time
):
    fn = residual_energy(toy4) if energy_kind == "residual" else table_energy(toy4)
    exact = implied_edlm_distribution(toy4, STEPS, energy=fn, num_candidates=K, window=WINDOW)
    plain = implied_edlm_distribution(toy4, STEPS)
    assert total_variation(exact, plain) > 0.05  # importance sampling changes the law visibly
    denoiser = TimedDenoiser(toy4, denoiser_reads_time)
    x = draw(toy4, N_MULTI, STEPS, seed=5, denoiser=denoiser,
             energy=TimedEnergy(fn, energy_reads_time), num_candidates=K, window=WINDOW)
    stat, bound = chi_square(x, toy4, exact)
    assert stat < bound, (stat, bound)
    assert len(denoiser.times) == STEPS  # with 40000 sequences some token changes at every step


def test_mixing_candidates_of_different_sequences_is_detected(toy4, monkeypatch):
    # The reference code's bug: candidates tiled sample-major, read back candidate-major.
    def mixed(*args, **kwargs):
        candidates, proposal_logp = draw_candidates(*args, **kwargs)
        b, k, length = candidates.shape
        return candidates.reshape(k, b, length).transpose(0, 1), proposal_logp.reshape(k, b).T

    monkeypatch.setattr(sampling, "draw_candidates", mixed)
    fn = residual_energy(toy4)
    x = draw(toy4, N_MULTI, STEPS, seed=5, energy=fn, num_candidates=K, window=WINDOW)
    exact = implied_edlm_distribution(toy4, STEPS, energy=fn, num_candidates=K, window=WINDOW)
    stat, bound = chi_square(x, toy4, exact)
    assert stat > 4 * bound, (stat, bound)


def test_prompt_tokens_are_kept_and_the_rest_follows_the_implied_law(toy4):
    m, fn = toy4.mask_id, table_energy(toy4)
    prompt = (m, 2, m, 0)
    init = torch.tensor([prompt]).repeat(N_MULTI // 2, 1)
    x = draw(toy4, N_MULTI // 2, STEPS, seed=6, init=init, energy=fn, num_candidates=K, window=WINDOW)
    assert (x[:, 1] == 2).all() and (x[:, 3] == 0).all() and (x != m).all()
    exact = implied_edlm_distribution(toy4, STEPS, energy=fn, num_candidates=K, window=WINDOW, init=prompt)
    stat, bound = chi_square(x, toy4, exact)
    assert stat < bound, (stat, bound)


def test_chosen_candidate_is_reused_only_while_nothing_reads_time_inside_the_window(toy4):
    steps, window = 100, 0.5
    in_window = [pytest.approx(1.0 - i / steps, abs=1e-6) for i in range(51)]  # t >= 0.5
    fn = table_energy(toy4)
    # 8 x 4 tokens: all of them unmasked by t = 0.5 has probability 2^-32
    runs = {}
    for energy_reads_time in (False, True):
        denoiser, energy = TimedDenoiser(toy4, False), TimedEnergy(fn, energy_reads_time)
        draw(toy4, 8, steps, seed=8, denoiser=denoiser, energy=energy, num_candidates=4, window=window)
        runs[energy_reads_time] = denoiser.times, energy.times
    denoiser_times, energy_times = runs[False]
    assert energy_times == [t for t in denoiser_times if t >= 0.5 - 1e-6]  # fresh pick per change
    assert len(energy_times) < len(in_window)  # and reuse while nothing changed
    denoiser_times, energy_times = runs[True]
    assert energy_times == in_window  # a time-reading energy picks anew at every step in the window
    every_step = [pytest.approx(1.0 - i / steps, abs=1e-6) for i in range(len(denoiser_times))]
    assert denoiser_times == every_step and len(every_step) > 90  # nor is the denoiser output


@pytest.fixture(scope="module")
def padded_logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits over V = 37 data ids + mask + padding (huge, must never win), and an xt with a
    different masked pattern and different tokens in every sequence."""
    g, vocab = gen(11), 37
    logits = torch.randn(3, 9, 48, generator=g) * 3
    logits[..., vocab:] = 100.0
    xt = torch.randint(0, vocab, (3, 9), generator=g)
    masked = torch.rand(3, 9, generator=g) < torch.tensor([[0.3], [0.7], [0.0]])
    return logits, xt.masked_fill(masked, vocab), masked


@pytest.mark.parametrize("max_noise_elements", [1, 37, 7 * 37 + 5, 10**9])
def test_chunked_draws_are_those_of_one_unchunked_draw(padded_logits, max_noise_elements):
    logits, xt, masked = padded_logits
    vocab, k = 37, 5
    g = gen(12)
    candidates, proposal_logp = draw_candidates(logits, xt, masked, k, vocab, g, max_noise_elements=max_noise_elements)
    after = torch.rand(4, generator=g)
    g_ref = gen(12)
    data_logits = logits[masked][:, :vocab]
    reference = gumbel_argmax(data_logits.expand(k, *data_logits.shape), generator=g_ref)  # [k, n]
    assert torch.equal(candidates.transpose(0, 1)[:, masked], reference)
    assert torch.equal(after, torch.rand(4, generator=g_ref))  # the same amount of noise was used
    if max_noise_elements != 10**9:
        unchunked = draw_candidates(logits, xt, masked, k, vocab, gen(12), max_noise_elements=10**9)
        assert torch.equal(candidates, unchunked[0]) and torch.equal(proposal_logp, unchunked[1])


def test_candidates_are_sample_major_with_their_own_log_probs(padded_logits):
    logits, xt, masked = padded_logits
    vocab, k = 37, 6
    candidates, proposal_logp = draw_candidates(logits, xt, masked, k, vocab, gen(13))
    assert candidates.shape == (3, k, 9) and proposal_logp.dtype == torch.float64
    assert (candidates < vocab).all()
    assert torch.equal(torch.where(masked[:, None], xt[:, None], candidates), xt[:, None].expand_as(candidates))
    logp = torch.log_softmax(logits[..., :vocab].double(), -1)  # [B, L, V]
    per_token = logp[:, None].expand(-1, k, -1, -1).gather(-1, candidates[..., None]).squeeze(-1)
    torch.testing.assert_close(proposal_logp, (per_token * masked[:, None]).sum(-1))
    assert (proposal_logp[2] == 0).all()  # nothing masked in the last sequence
    assert len(set(map(tuple, candidates[1].tolist()))) > 1  # the k candidates differ


def test_sampling_does_not_depend_on_the_noise_bound(toy4, monkeypatch):
    # plain steps (outside the window) and importance-sampling steps alike
    kwargs = dict(energy=table_energy(toy4), num_candidates=K, window=WINDOW)
    default = draw(toy4, 500, STEPS, seed=14, **kwargs)
    monkeypatch.setattr(sampling, "MAX_NOISE_ELEMENTS", 2 * toy4.vocab)
    assert torch.equal(draw(toy4, 500, STEPS, seed=14, **kwargs), default)


def test_inverse_cdf_candidates_sample_the_same_law(toy4):
    fn = residual_energy(toy4)
    exact = implied_edlm_distribution(toy4, STEPS, energy=fn, num_candidates=K, window=WINDOW)
    x = draw(toy4, N_MULTI, STEPS, seed=15, energy=fn, num_candidates=K, window=WINDOW, candidate_draw="inverse_cdf")
    stat, bound = chi_square(x, toy4, exact)
    assert stat < bound, (stat, bound)


@pytest.mark.parametrize("max_noise_elements", [1, 37, 10**9])
def test_inverse_cdf_draws_are_exact_sample_major_and_chunk_free(padded_logits, max_noise_elements):
    logits, xt, masked = padded_logits
    vocab, k = 37, 4000
    logits = logits.clone()
    logits[..., 5] = -math.inf  # a token of probability 0 is never drawn
    candidates, proposal_logp = draw_candidates(logits, xt, masked, k, vocab, gen(16),
                                                max_noise_elements=max_noise_elements, method="inverse_cdf")
    reference = draw_candidates(logits, xt, masked, k, vocab, gen(16), method="inverse_cdf")
    assert torch.equal(candidates, reference[0]) and torch.equal(proposal_logp, reference[1])
    assert (candidates < vocab).all() and not (candidates[masked[:, None].expand_as(candidates)] == 5).any()
    assert torch.equal(torch.where(masked[:, None], xt[:, None], candidates), xt[:, None].expand_as(candidates))
    logp = torch.log_softmax(logits[..., :vocab].double(), -1)
    per_token = logp[:, None].expand(-1, k, -1, -1).gather(-1, candidates[..., None]).squeeze(-1)
    torch.testing.assert_close(proposal_logp, (per_token * masked[:, None]).sum(-1))
    b, i = masked.nonzero()[0].tolist()  # the empirical law of one position's k draws
    freq = torch.bincount(candidates[b, :, i], minlength=vocab).double() / k
    assert (freq - logp[b, i].exp()).abs().max() < 4 * math.sqrt(0.25 / k)


def test_unknown_candidate_draw_is_refused(padded_logits):
    logits, xt, masked = padded_logits
    with pytest.raises(ValueError, match="method must be one of"):
        draw_candidates(logits, xt, masked, 2, 37, gen(0), method="argmax")
