"""How far a consistent EDLM estimate sits from its exact value as a function of the ESS of its
proposals, on enumerable toys: the measurement behind `ESS_FLOOR` (docs/likelihood.md).

Each toy is a peaked random AR source over 4^6 sequences (the data and the EDLM-AR energy) with
a blurred factorised proposal (tests/toy_dist.py); seeds, peakedness and blur vary the ESS. An
"evaluation" scores 128 sequences as `edlm_nelbo` does (stratified t, one mask draw, the weight
(1 - t_min) w(t)), and its figure is judged like the evaluator's: does the 2-s.e. interval of the
paired difference estimate - exact hold 0? Binned by mean ESS / n, the share of evaluations whose
interval misses the exact value says when the estimate can be compared at all (about 5% is the
noise; more is the estimator's bias). Slow: 15-20 min per estimator on two busy cores.

    PYTHONPATH=. python tests/measure_ess_floor.py --estimator coupled --evals 40
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from edlm_dist.diffusion import LogLinearSchedule
from edlm_dist.diffusion.likelihood import masked_set_terms
from edlm_dist.diffusion.noise import mask_tokens, stratified_times
from edlm_dist.diffusion.sampling import LocalPool
from edlm_dist.energy import AREnergy
from toy_dist import BlurredDenoiser, ToyAR, exact_marginal_terms

V, L, SEQUENCES, T_MIN = 4, 6, 128, 1e-3
PROPOSALS = (4, 8, 16, 32)
BANDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)  # lower edges of the ESS / n bands


def evaluation(ar: ToyAR, proposal: BlurredDenoiser, estimator: str, n: int, seed: int) -> tuple[float, float]:
    """(mean ESS / n, z) of one evaluation: z = mean(estimate - exact) / its standard error, per token."""
    dist, schedule = ar.distribution(), LogLinearSchedule()
    g = torch.Generator().manual_seed(seed)
    x0 = dist.seqs[torch.multinomial(dist.probs, SEQUENCES, replacement=True, generator=g)]
    t = stratified_times(SEQUENCES, t_min=T_MIN, generator=g)
    xt, masked = mask_tokens(x0, t, schedule=schedule, mask_id=V, generator=g)
    figures = masked_set_terms(proposal, AREnergy(ar), x0, xt, masked, t, mask_id=V, num_proposals=n,
                               estimator=estimator, generator=g, pool=LocalPool(), proposal_generator=g)
    exact = exact_marginal_terms(dist, x0, xt, dist.probs.log().expand(SEQUENCES, -1))
    weight = torch.where(masked.any(-1), (1 - T_MIN) * schedule.weight(t.double()) / L, 0.0)
    error = weight * (figures.estimate - exact)
    return float(figures.ess.mean()) / n, float(error.mean() / (error.std() / math.sqrt(SEQUENCES)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimator", default="coupled", choices=("coupled", "conservative"))
    parser.add_argument("--evals", type=int, default=40, help="evaluations per toy and number of proposals")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in PROPOSALS}
    for seed, peaked, blur in itertools.product((0, 1), (1.5, 2.5, 4.0, 6.0), (0.2, 0.5, 0.8, 0.95)):
        ar = ToyAR(V, L, seed=seed, temperature=peaked)
        proposal = BlurredDenoiser(ar.distribution(), blur=blur)
        for n in PROPOSALS:
            results[n] += [evaluation(ar, proposal, args.estimator, n, 1000 * e + n) for e in range(args.evals)]
    print(f"{args.estimator}: share of evaluations whose 2-s.e. interval misses the exact value (count)")
    print("| mean ESS / n | " + " | ".join(f"n = {n}" for n in PROPOSALS) + " |")
    print("|---|" + "---|" * len(PROPOSALS))
    for low, high in zip(BANDS, BANDS[1:] + (1.01,)):
        cells = []
        for n in PROPOSALS:
            band = [abs(z) > 2 for share, z in results[n] if low <= share < high]
            cells.append(f"{sum(band) / len(band):.2f} ({len(band)})" if len(band) >= 20 else "")
        print(f"| {low:.2f}-{min(high, 1):.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
