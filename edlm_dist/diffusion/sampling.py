"""Ancestral sampling of masked diffusion, plain (MDLM) or with EDLM importance sampling.

Time runs over `steps` uniform steps from t = 1 to t = 0. At a step t -> s every masked token
unmasks with probability (alpha_s - alpha_t) / (1 - alpha_t) to a token drawn from the
denoiser (or, inside the importance-sampling window, to the token of the candidate that the
energy chose); unmasked tokens never change. The last step goes to s = 0 by the same rule, so
no mask is left and no argmax clean-up is needed.
"""

from __future__ import annotations

from typing import Callable

import torch

from edlm_dist.diffusion.loss import Denoiser
from edlm_dist.diffusion.noise import gumbel_argmax, uniform
from edlm_dist.diffusion.schedules import LogLinearSchedule, Schedule

Energy = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def reads_time(fn: object) -> bool:
    """Whether a network's output depends on t; unknown callables are assumed to read it."""
    return bool(getattr(fn, "reads_time", True))


def _infer_device(
    denoiser: Denoiser, init: torch.Tensor | None, generator: torch.Generator | None
) -> torch.device:
    if init is not None:
        return init.device
    if isinstance(denoiser, torch.nn.Module):
        for p in denoiser.parameters():
            return p.device
    return generator.device if generator is not None else torch.device("cpu")


def _check_args(
    batch_size: int, seq_len: int, steps: int, init: torch.Tensor | None,
    energy: Energy | None, num_candidates: int, window: float,
) -> None:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= window <= 1.0:
        raise ValueError(f"window must be in [0, 1], got {window}")
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if num_candidates > 1 and energy is None:
        raise ValueError("num_candidates > 1 needs an energy to choose among the candidates")
    if init is not None and tuple(init.shape) != (batch_size, seq_len):
        raise ValueError(f"init has shape {tuple(init.shape)}, expected ({batch_size}, {seq_len})")


def _draw_candidates(
    logits: torch.Tensor, xt: torch.Tensor, masked: torch.Tensor, num_candidates: int,
    mask_id: int, generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k full denoisings x0^j ~ p_theta(. | xt) per sequence and their log-probabilities.

    Returns candidates [B, k, L] (unmasked tokens carried over) and log p_theta(x0^j | xt)
    summed over masked positions, float64 [B, k].
    """
    logp = torch.log_softmax(logits[masked][:, :mask_id].double(), dim=-1)  # [n, V]
    draws = gumbel_argmax(logp.expand(num_candidates, *logp.shape), generator=generator)  # [k, n]
    draw_logp = logp.gather(-1, draws.T).T  # [k, n]
    candidates = xt.unsqueeze(0).repeat(num_candidates, 1, 1)  # [k, B, L]
    candidates[:, masked] = draws
    per_position = torch.zeros(candidates.shape, dtype=torch.float64, device=xt.device)
    per_position[:, masked] = draw_logp
    return candidates.transpose(0, 1), per_position.sum(-1).T


def _choose_by_energy(
    energy: Energy, candidates: torch.Tensor, proposal_logp: torch.Tensor, xt: torch.Tensor,
    t: torch.Tensor, generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick one candidate per sequence with probability softmax(-energy) (lower = likelier)."""
    batch, k, length = candidates.shape
    energies = energy(
        candidates.reshape(batch * k, length),
        xt.repeat_interleave(k, dim=0),
        t.repeat_interleave(k, dim=0),
        proposal_logp.reshape(batch * k),
    )
    choice = gumbel_argmax(-energies.double().reshape(batch, k), generator=generator)
    return candidates[torch.arange(batch, device=xt.device), choice]


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    *,
    batch_size: int,
    seq_len: int,
    mask_id: int,
    steps: int,
    schedule: Schedule | None = None,
    init: torch.Tensor | None = None,
    energy: Energy | None = None,
    num_candidates: int = 1,
    window: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw sequences [batch_size, seq_len] by ancestral sampling of the reverse process.

    `init` holds `mask_id` where tokens are to be generated and fixed tokens elsewhere
    (prompts, infilling); by default everything is generated. With `energy`, steps whose t
    lies in [1 - window, 1] use importance sampling (paper Algorithm 1): `num_candidates`
    denoisings are drawn, `energy(x0, xt, t, proposal_logp) -> [N]` scores them, and the step
    moves toward the one picked with probability softmax(-energy). A denoiser output (or a
    chosen candidate) is reused while no token changes, unless a network reads t (see
    `reads_time`).
    """
    _check_args(batch_size, seq_len, steps, init, energy, num_candidates, window)
    schedule = schedule or LogLinearSchedule()
    device = torch.device(device) if device is not None else _infer_device(denoiser, init, generator)
    x = init.clone().to(device) if init is not None else torch.full(
        (batch_size, seq_len), mask_id, dtype=torch.long, device=device
    )
    keep_outputs = not reads_time(denoiser) and (energy is None or not reads_time(energy))
    logits = chosen = None
    for i in range(steps):
        masked = x == mask_id
        if not masked.any():
            break
        t, s = 1.0 - i / steps, 1.0 - (i + 1) / steps
        t_batch = torch.full((batch_size,), t, dtype=torch.float32, device=device)
        alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
        unmask_prob = (alpha_s - alpha_t) / (1.0 - alpha_t)
        if logits is None:
            logits = denoiser(x, t_batch)
        in_window = energy is not None and i / steps <= window
        if not in_window:
            chosen = None
        elif chosen is None:
            candidates, proposal_logp = _draw_candidates(
                logits, x, masked, num_candidates, mask_id, generator
            )
            chosen = _choose_by_energy(energy, candidates, proposal_logp, x, t_batch, generator)
        unmask = masked & (
            uniform(tuple(x.shape), generator=generator, device=device, dtype=torch.float64)
            < unmask_prob
        )
        if chosen is not None:
            x = torch.where(unmask, chosen, x)
        else:
            x = x.masked_scatter(unmask, gumbel_argmax(logits[unmask][:, :mask_id], generator=generator))
        if unmask.any() or not keep_outputs:
            logits = chosen = None
    return x
