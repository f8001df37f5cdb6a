"""The math of EDLM's residual energy that training and diagnostics share: the NCE objective
and the effective sample size of importance weights exp(-E)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nce_loss(positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Per-example NCE loss of energies: positive [B] (data x0) and negatives [B, m] (draws
    from the proposal p_theta(. | xt)), in nats [B].

    Binary classification of data against proposal draws, with the classifier's logit
    log(p_theta exp(-E) / (m p_theta)) = -E - log m:
    loss = -log sigmoid(-E+ - log m) - sum_j log sigmoid(E-_j + log m).
    For m = 1 (the paper) that is -log sigmoid(-E+) - log sigmoid(E-): data gets lower energy.
    At the optimum exp(-E) = p_data / p_theta up to the normaliser, whatever m.
    """
    if negatives.dim() != 2 or negatives.shape[0] != positive.shape[0]:
        raise ValueError(f"negatives {tuple(negatives.shape)} must be [B, m] for positive {tuple(positive.shape)}")
    log_m = math.log(negatives.shape[1])
    return F.softplus(positive + log_m) + F.softplus(-(negatives + log_m)).sum(dim=-1)


def pairwise_accuracy(positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Per-example fraction of negatives [B, m] whose energy is above the positive's [B]."""
    return (positive[:, None] < negatives).double().mean(dim=-1)


def effective_sample_size(energies: torch.Tensor) -> torch.Tensor:
    """ESS (sum w)^2 / sum w^2 of the self-normalised weights w = softmax(-E) over the last
    dim (k candidates): k for equal energies, 1 when one candidate takes all the weight, 0 when
    none has any (every energy +inf: the weights cannot be normalised)."""
    weights = torch.softmax(-energies.double(), dim=-1)
    return torch.where((energies == math.inf).all(dim=-1), 0.0, 1.0 / weights.square().sum(dim=-1))
