"""Which figures may be reported as results. A figure in nats is the -log of a probability (an
NLL, a NELBO, a bound or an estimate of one, Gen PPL's NLL): finite and at least 0, so its
perplexity is at least 1. One that is not is never printed or written as a number: its value is
withheld (null) and `NOT_REPORTED` says why, so that a failed estimator or a diverged model never
reads as a result."""

from __future__ import annotations

import math

import torch

NOT_REPORTED = "not_reported"  # the key of the reason a figure is withheld


def non_finite_reason(values: torch.Tensor, items: str) -> str | None:
    """Why a mean over `values` (one per item: sequences, samples) cannot be reported because
    some are NaN or infinite, or None when all are finite."""
    bad = int((~torch.isfinite(values)).sum())
    if not bad:
        return None
    nan = int(values.isnan().sum())
    what = "NaN" if nan == bad else "infinite" if not nan else "NaN or infinite"
    return f"not finite: {what} for {bad} of {values.numel()} {items}"


def impossible_reason(nats: float) -> str | None:
    """Why a mean -log probability `nats` cannot be reported (not finite, or below 0, which no
    probability gives), or None when it can. The value is named in the reason, never as a figure."""
    if not math.isfinite(nats):
        return f"not finite ({nats})"
    if nats < 0:
        return f"impossible: {nats:+.4f} nats per token, below 0 (a perplexity below 1)"
    return None


def finite_or_none(value: float) -> float | None:
    """`value`, or None where it is NaN or infinite (JSON has no such numbers)."""
    return value if math.isfinite(value) else None
