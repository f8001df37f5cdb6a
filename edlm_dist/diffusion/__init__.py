"""The math of masked diffusion and EDLM: the token space (which logit columns are data tokens),
schedules, the NELBO, ancestral and importance sampling, the NCE objective, and the EDLM
likelihood (log Z bounds, valid bound, paper estimate).

Model-agnostic (networks are passed in as callables) and free of distributed code.
"""

from edlm_dist.diffusion.energy import effective_sample_size, nce_loss, pairwise_accuracy
from edlm_dist.diffusion.likelihood import EDLMNelbo, LogZBounds, edlm_nelbo, logz_bounds
from edlm_dist.diffusion.loss import masked_token_nll, nelbo, weighted_nelbo_terms
from edlm_dist.diffusion.noise import (
    gumbel_argmax,
    keyed_generator,
    mask_tokens,
    seed_from_key,
    stratified_times,
    uniform,
)
from edlm_dist.diffusion.sampling import CandidatePool, LocalPool, SamplingStats, draw_candidates, reads_time, sample
from edlm_dist.diffusion.schedules import (
    SCHEDULES,
    CosineSchedule,
    LogLinearSchedule,
    Schedule,
    build_schedule,
)
from edlm_dist.diffusion.tokens import TokenSpace

__all__ = [
    "CandidatePool",
    "CosineSchedule",
    "EDLMNelbo",
    "LocalPool",
    "LogLinearSchedule",
    "LogZBounds",
    "SCHEDULES",
    "SamplingStats",
    "Schedule",
    "TokenSpace",
    "build_schedule",
    "draw_candidates",
    "edlm_nelbo",
    "effective_sample_size",
    "gumbel_argmax",
    "keyed_generator",
    "logz_bounds",
    "mask_tokens",
    "masked_token_nll",
    "nce_loss",
    "nelbo",
    "pairwise_accuracy",
    "reads_time",
    "sample",
    "seed_from_key",
    "stratified_times",
    "uniform",
    "weighted_nelbo_terms",
]
