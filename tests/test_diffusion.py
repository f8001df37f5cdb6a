"""The diffusion math on toy distributions whose answers are known by enumeration."""

from __future__ import annotations

import math

import pytest
import torch

from edlm_dist.diffusion import (
    CosineSchedule,
    LogLinearSchedule,
    mask_tokens,
    nelbo,
    sample,
    stratified_times,
)
from toy_dist import (
    ContextFreeDenoiser,
    ExactDenoiser,
    ToyDistribution,
    implied_sampler_distribution,
    total_variation,
)

N_SAMPLES = 20000
TV_NOISE = 0.035  # sampling noise of the TV between n = 20000 draws and the truth is ~0.015


@pytest.fixture(scope="module")
def toy() -> ToyDistribution:
    return ToyDistribution(vocab=3, length=3, seed=0, temperature=2.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("schedule", [LogLinearSchedule(1e-3), LogLinearSchedule(0.3), CosineSchedule(0.05)])
def test_weight_is_minus_alpha_prime_over_one_minus_alpha(schedule):
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    (alpha_prime,) = torch.autograd.grad(schedule.alpha(t).sum(), t)
    expected = -alpha_prime / (1 - schedule.alpha(t))
    torch.testing.assert_close(schedule.weight(t), expected)
    assert schedule.alpha(0.0) == pytest.approx(1.0) and schedule.alpha(1.0) == pytest.approx(schedule.eps)


def test_loglinear_weight_is_one_over_t():
    t = torch.tensor([0.001, 0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(LogLinearSchedule().weight(t), 1 / t)


def test_times_are_stratified_with_one_uniform():
    t = stratified_times(8, t_min=0.1, generator=gen(3))
    strata = ((t.double() - 0.1) / 0.9).sort().values
    assert (strata >= 0).all() and (strata < 1).all()
    gaps = strata.diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / 8), atol=1e-6, rtol=0)


def test_masking_rate_follows_alpha_and_respects_valid_mask():
    x0 = torch.zeros(4000, 10, dtype=torch.long)
    t = torch.full((4000,), 0.3)
    valid = torch.ones_like(x0, dtype=torch.bool)
    valid[:, -2:] = False
    xt, masked = mask_tokens(x0, t, schedule=LogLinearSchedule(), mask_id=7, valid_mask=valid, generator=gen())
    assert not masked[:, -2:].any() and (xt[masked] == 7).all() and (xt[~masked] == 0).all()
    assert masked[:, :-2].float().mean().item() == pytest.approx(0.3 * (1 - 1e-3), abs=0.01)


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), values.std().item() / math.sqrt(len(values))


def test_nelbo_with_exact_denoiser_matches_negative_log_likelihood(toy):
    # interleaved, so that each sequence gets times from every stratum of the batch
    x0 = toy.seqs[[0, 5, 13, 26]].repeat(N_SAMPLES // 4, 1)
    est = nelbo(ExactDenoiser(toy), x0, mask_id=toy.mask_id, generator=gen(1)).double()
    exact = -toy.log_prob(x0)
    for k in range(4):
        rows = slice(k, None, 4)
        mean, se = _mean_and_stderr(est[rows])
        # the dropped prior term and the [0, t_min] sliver bias the estimate by < 0.01 nats
        assert abs(mean - exact[rows][0].item()) < 4 * se + 0.01, (k, mean, exact[rows][0].item(), se)


@pytest.mark.parametrize("schedule", [LogLinearSchedule(0.3), CosineSchedule(0.2)])
def test_nelbo_of_context_free_denoiser_is_one_minus_eps_times_marginal_nll(toy, schedule):
    # The context-free denoiser puts confident garbage at unmasked positions and a large mask
    # logit everywhere: the estimate is right only if SUBS carries unmasked tokens over, the
    # mask and padded logits are suppressed, and the weight is -alpha'/(1 - alpha).
    t_min = 1e-3
    x0 = toy.seqs[[2, 17]].repeat(N_SAMPLES // 2, 1)
    est = nelbo(ContextFreeDenoiser(toy), x0, mask_id=toy.mask_id, schedule=schedule, t_min=t_min, generator=gen(2))
    marginal_nll = -toy.marginals().log()[torch.arange(toy.length), x0].sum(-1)
    # E = (alpha(t_min) - alpha(1)) * sum_i -log p(x_i): (1 - eps) times it as t_min -> 0
    expected = (schedule.alpha(t_min) - schedule.eps) * marginal_nll
    for rows in (slice(0, None, 2), slice(1, None, 2)):
        mean, se = _mean_and_stderr(est[rows].double())
        assert abs(mean - expected[rows][0].item()) < 4 * se, (mean, expected[rows][0].item(), se)


def test_nelbo_ignores_invalid_positions(toy):
    seen = []

    def denoiser(xt, t):
        seen.append(xt.clone())
        return ContextFreeDenoiser(toy)(xt, t)

    x0 = toy.seqs[[7]].repeat(N_SAMPLES, 1)
    valid = torch.tensor([True, True, False]).expand_as(x0)
    est = nelbo(denoiser, x0, mask_id=toy.mask_id, valid_mask=valid, schedule=LogLinearSchedule(0.3), generator=gen(4))
    assert not (seen[0][:, 2] == toy.mask_id).any()
    expected = 0.7 * (1 - 1e-3) * -toy.marginals().log()[[0, 1], x0[0, :2]].sum().item()
    mean, se = _mean_and_stderr(est.double())
    assert abs(mean - expected) < 4 * se


def test_nelbo_averages_num_samples(toy):
    x0 = toy.seqs[[3]].repeat(64, 1)
    one = nelbo(ExactDenoiser(toy), x0, mask_id=toy.mask_id, generator=gen(5), num_samples=1)
    four = nelbo(ExactDenoiser(toy), x0, mask_id=toy.mask_id, generator=gen(5), num_samples=4)
    assert four.var() < one.var()


def _unmask_probs(schedule, steps: int) -> list[float]:
    ts = [1 - i / steps for i in range(steps + 1)]
    return [(schedule.alpha(s) - schedule.alpha(t)) / (1 - schedule.alpha(t)) for t, s in zip(ts, ts[1:])]


def _draw(toy, steps, schedule=None, init=None, seed=0, **kw):
    return sample(
        ExactDenoiser(toy), batch_size=N_SAMPLES, seq_len=toy.length, mask_id=toy.mask_id,
        steps=steps, schedule=schedule, init=init, generator=gen(seed), **kw,
    )


def test_many_steps_sample_the_data_distribution(toy):
    x = _draw(toy, steps=256)
    assert (x != toy.mask_id).all()
    assert total_variation(toy.histogram(x), toy.probs) < TV_NOISE


def test_one_step_samples_the_product_of_marginals(toy):
    assert total_variation(toy.product_of_marginals(), toy.probs) > 4 * TV_NOISE  # the test can tell
    x = _draw(toy, steps=1)
    assert total_variation(toy.histogram(x), toy.product_of_marginals()) < TV_NOISE


@pytest.mark.parametrize("schedule,steps", [(LogLinearSchedule(), 2), (LogLinearSchedule(), 3), (CosineSchedule(0.05), 3)])
def test_few_steps_sample_the_mixture_the_step_probability_implies(toy, schedule, steps):
    right = implied_sampler_distribution(toy, _unmask_probs(schedule, steps))
    x = _draw(toy, steps=steps, schedule=schedule, seed=steps)
    empirical = toy.histogram(x)
    assert total_variation(empirical, right) < TV_NOISE
    assert total_variation(empirical, toy.probs) > 2 * TV_NOISE
    assert total_variation(empirical, toy.product_of_marginals()) > 2 * TV_NOISE


@pytest.mark.parametrize("schedule", [LogLinearSchedule(), CosineSchedule(0.05)])
def test_masked_fraction_before_each_step_is_one_minus_alpha_over_one_minus_eps(toy, schedule):
    seen = []

    class Recorder(ExactDenoiser):
        reads_time = True  # forces a call at every step

        def __call__(self, xt, t):
            seen.append(((xt == toy.mask_id).float().mean().item(), t[0].item()))
            return super().__call__(xt, t)

    steps = 5
    sample(Recorder(toy), batch_size=N_SAMPLES, seq_len=3, mask_id=toy.mask_id, steps=steps,
           schedule=schedule, generator=gen(12))
    assert len(seen) == steps
    for i, (fraction, t) in enumerate(seen):
        assert t == pytest.approx(1 - i / steps)
        expected = (1 - schedule.alpha(t)) / (1 - schedule.eps)
        assert fraction == pytest.approx(expected, abs=0.01), (i, fraction, expected)


def test_prompt_is_kept_and_the_rest_is_sampled_conditionally(toy):
    m = toy.mask_id
    init = torch.tensor([[2, m, m]]).repeat(N_SAMPLES, 1)
    x = _draw(toy, steps=64, init=init, seed=9)
    assert (x[:, 0] == 2).all() and (x != m).all()
    conditional = torch.where(toy.seqs[:, 0] == 2, toy.probs, torch.zeros_like(toy.probs))
    assert total_variation(toy.histogram(x), conditional / conditional.sum()) < TV_NOISE
    infill = torch.tensor([[m, 1, m]]).repeat(N_SAMPLES, 1)
    exact = implied_sampler_distribution(toy, _unmask_probs(LogLinearSchedule(), 2), init=(m, 1, m))
    x = _draw(toy, steps=2, init=infill, seed=10)
    assert (x[:, 1] == 1).all()
    assert total_variation(toy.histogram(x), exact) < TV_NOISE


def test_denoiser_output_is_reused_only_when_nothing_reads_time(toy):
    frozen = ExactDenoiser(toy)
    sample(frozen, batch_size=2, seq_len=3, mask_id=toy.mask_id, steps=200, generator=gen())
    assert frozen.calls <= 7  # at most one call per change (6 tokens) plus the first

    class TimeReading(ExactDenoiser):
        reads_time = True

    timed = TimeReading(toy)
    sample(timed, batch_size=2, seq_len=3, mask_id=toy.mask_id, steps=200, generator=gen())
    assert timed.calls > 100  # one per step until the last token unmasks


def test_sampling_is_reproducible_from_the_generator(toy):
    a = _draw(toy, steps=4, seed=11)
    b = _draw(toy, steps=4, seed=11)
    assert torch.equal(a, b)


def test_importance_sampling_with_the_exact_residual_energy_recovers_the_joint(toy):
    # One step from all-mask: the proposal is the product of marginals; with the residual
    # energy E = -log p(x0) + log q(x0), weights softmax(-E) are p / q, so k candidates
    # correct the proposal toward p. softmax(+E) would push it further away.
    def energy(x0, xt, t, proposal_logp):
        return -toy.log_prob(x0) + proposal_logp

    def wrong_sign(x0, xt, t, proposal_logp):
        return -energy(x0, xt, t, proposal_logp)

    mdlm_tv = total_variation(toy.histogram(_draw(toy, steps=1, seed=1)), toy.probs)
    edlm = _draw(toy, steps=1, energy=energy, num_candidates=16, seed=2)
    flipped = _draw(toy, steps=1, energy=wrong_sign, num_candidates=16, seed=3)
    assert mdlm_tv > 0.2
    assert total_variation(toy.histogram(edlm), toy.probs) < 0.05
    assert total_variation(toy.histogram(flipped), toy.probs) > mdlm_tv


@pytest.mark.parametrize(
    "kwargs,match",
    [({"steps": 0}, "steps"), ({"window": 1.5}, "window"), ({"num_candidates": 4}, "energy")],
)
def test_sample_rejects_bad_arguments(toy, kwargs, match):
    args = {"batch_size": 2, "seq_len": 3, "mask_id": toy.mask_id, "steps": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        sample(ExactDenoiser(toy), **args)
