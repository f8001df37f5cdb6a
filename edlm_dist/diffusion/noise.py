"""Random draws of masked diffusion: stratified times, the forward masking process, and
float64 Gumbel-max categorical sampling.

Every function takes an optional `torch.Generator`; draws happen on the generator's device and
are moved to the data's device, so a CPU generator gives the same numbers on any device.
"""

from __future__ import annotations

import hashlib

import torch

from edlm_dist.diffusion.schedules import Schedule


def seed_from_key(*key: object) -> int:
    """A 63-bit seed that is a stable function of `key` (unlike `hash`, the same in every process)."""
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def keyed_generator(*key: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from `key`, e.g. (seed, "train", step): the noise of a step is then a
    function of the step alone, whatever the world size or where a run was resumed."""
    return torch.Generator(device=device).manual_seed(seed_from_key(*key))


def uniform(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """U[0, 1) draws of `shape`, taken from `generator` (on its device) and moved to `device`."""
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def stratified_times(
    batch_size: int,
    *,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Times in [t_min, 1) for a batch, stratified with ONE uniform: u'_b = (u + b/B) mod 1.

    Every example of the batch lands in its own 1/B-wide stratum, which lowers the variance
    of the batch-mean loss without biasing any single term.
    """
    u = uniform((1,), generator=generator, device=device, dtype=torch.float64)
    offsets = torch.arange(batch_size, device=device, dtype=torch.float64) / batch_size
    strata = torch.remainder(u + offsets, 1.0)
    return (t_min + (1.0 - t_min) * strata).float()


def mask_tokens(
    x0: torch.Tensor,
    t: torch.Tensor,
    *,
    schedule: Schedule,
    mask_id: int,
    valid_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward process q(xt | x0): each valid token becomes `mask_id` w.p. 1 - alpha(t).

    Returns `(xt, masked)` with `masked` the boolean [B, L] map of masked positions. The
    U[0, 1) draws come from `generator`, or are given as `uniforms` [B, L] (a rank's slice
    of noise drawn for a whole global batch).
    """
    move_chance = (1 - schedule.alpha(t.double())).float()
    if uniforms is None:
        uniforms = uniform(tuple(x0.shape), generator=generator, device=x0.device)
    masked = uniforms.to(x0.device) < move_chance[:, None]
    if valid_mask is not None:
        masked &= valid_mask
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def gumbel_argmax(
    logits: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One categorical draw per row of `logits` (last dim = classes) via float64 Gumbel-max.

    Low-precision Gumbel noise truncates the tails of the distribution (a known cause of
    generative perplexities that do not reproduce), hence float64 throughout.
    """
    u = uniform(tuple(logits.shape), generator=generator, device=logits.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
    return (logits.double() + gumbel).argmax(dim=-1)
