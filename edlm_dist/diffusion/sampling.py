"""Ancestral sampling of masked diffusion, plain (MDLM) or with EDLM importance sampling.

Time runs over `steps` uniform steps from t = 1 to t = 0. At a step t -> s every masked token
unmasks with probability (alpha_s - alpha_t) / (1 - alpha_t) to a token drawn from the
denoiser (or, inside the importance-sampling window, to the token of the candidate that the
energy chose); unmasked tokens never change. The last step goes to s = 0 by the same rule, so
no mask is left and no argmax clean-up is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from edlm_dist.diffusion.energy import effective_sample_size
from edlm_dist.diffusion.loss import Denoiser
from edlm_dist.diffusion.noise import gumbel_argmax, uniform
from edlm_dist.diffusion.schedules import LogLinearSchedule, Schedule
from edlm_dist.diffusion.tokens import TokenSpace, resolve_tokens

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


MAX_NOISE_ELEMENTS = 2**24
"""Most float64 Gumbel noise values the sampler draws at once. `gumbel_argmax` keeps about five
arrays of that size alive (noise, temporaries, float64 logits): ~640 MiB at 2**24, against
16 * 1024 * 50257 values (6.6 GB each) for k = 16 GPT-2 candidates drawn in one go. With a CPU
generator the draws do not depend on it."""


def _flat_rows(logits: torch.Tensor) -> torch.Tensor:
    """Logits [B, L, W] as rows [B * L, W] (a view), one per position in row-major order."""
    return logits.reshape(-1, logits.shape[-1])


def _flat_positions(which: torch.Tensor) -> torch.Tensor:
    """Indices of the set entries of a boolean [B, L] map into its flattening, row-major."""
    return which.reshape(-1).nonzero().squeeze(-1)


def _by_row_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor], logit_rows: torch.Tensor, rows: torch.Tensor, tokens: TokenSpace,
    max_elements: int,
) -> torch.Tensor:
    """`fn` of the data logits of `logit_rows[rows]`, computed on consecutive slices of `rows` of
    at most `max_elements` data logits each, so that no [len(rows), V] float64 tensor (nor a copy
    of every row's data logits) is ever built. Mask, padded and excluded columns never reach `fn`."""
    per_chunk = max(1, max_elements // tokens.num_data)
    return torch.cat([fn(tokens.data_logits(logit_rows[chunk])) for chunk in rows.split(per_chunk)])


def _gumbel_rows(
    logit_rows: torch.Tensor, rows: torch.Tensor, tokens: TokenSpace, generator: torch.Generator | None,
    max_elements: int,
) -> torch.Tensor:
    """One float64 Gumbel-max draw of a data token from each `logit_rows[r]`, r in `rows`, noise
    taken in order (one value per data token); returns token ids.

    The slices are consecutive and a CPU generator's stream is serial, so the draws equal those
    of one `gumbel_argmax` over all of `rows` bit for bit, whatever `max_elements`. A CUDA
    generator (Philox) gives numbers that depend on the call shapes: reproducible for a fixed
    `max_elements` only.
    """
    return tokens.token_ids(_by_row_chunks(
        lambda chunk: gumbel_argmax(chunk, generator=generator), logit_rows, rows, tokens, max_elements
    ))


def _inverse_cdf_rows(
    logit_rows: torch.Tensor, positions: torch.Tensor, num_candidates: int, tokens: TokenSpace,
    generator: torch.Generator | None, max_elements: int,
) -> torch.Tensor:
    """`num_candidates` draws of data tokens from each `logit_rows[p]`, p in `positions`, as token
    ids, candidate-major [k * n]: float64 inverse-CDF sampling, the k uniforms of a row searched
    in its cumulative softmax over the data tokens, which is computed once for all k (O(n V +
    k n log V) work against Gumbel-max's O(k n V)). Exact in distribution, as Gumbel-max is; a
    zero-probability token is never drawn. The [k, n] uniforms are drawn first, in that order;
    rows are processed at most `max_elements` data logits at a time."""
    n = len(positions)
    uniforms = uniform((num_candidates, n), generator=generator, device=logit_rows.device, dtype=torch.float64)
    if n == 0:
        return positions.new_zeros(0)
    per_chunk = max(1, max_elements // tokens.num_data)
    draws = []
    for start in range(0, n, per_chunk):
        data_logits = tokens.data_logits(logit_rows[positions[start: start + per_chunk]])
        cdf = torch.softmax(data_logits.double(), dim=-1).cumsum_(dim=-1)
        targets = uniforms[:, start: start + per_chunk].T * cdf[:, -1:]  # [c, k], below each row's total
        draws.append(torch.searchsorted(cdf, targets.contiguous(), right=True).clamp_(max=cdf.shape[-1] - 1))
    return tokens.token_ids(torch.cat(draws).T.reshape(-1))


CANDIDATE_DRAWS = ("gumbel", "inverse_cdf")


def draw_candidates(
    logits: torch.Tensor, xt: torch.Tensor, masked: torch.Tensor, num_candidates: int,
    tokens: TokenSpace | int, generator: torch.Generator | None, *, max_noise_elements: int = MAX_NOISE_ELEMENTS,
    method: str = "gumbel", per_position: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k = `num_candidates` independent full denoisings x0^j ~ p_theta(. | xt) per sequence.

    `logits` [B, L, >= tokens.num_tokens] are the denoiser's output at `xt` [B, L]; only the
    data tokens of `tokens` (an int: MDLM's mask id V, data ids 0..V-1) are drawn and normalised
    over. Positions where `masked` [B, L] is set are drawn, the others carried over from `xt`.
    Returns the candidates [B, k, L], sample-major (row b holds candidates for sequence b only),
    and log p_theta(x0^j | xt) summed over the masked positions, float64 [B, k] (0 for a sequence
    with nothing masked); with `per_position`, per position [B, k, L] (0 at unmasked positions).

    Tokens are float64 Gumbel-max draws with noise taken in the order of one [k, n_masked, V]
    draw (candidate, then masked position in row-major order, then data token), at most
    `max_noise_elements` values at a time: bounded memory for large vocabularies and, with a
    CPU generator, the same draws whatever the bound (see `_gumbel_rows`). `method =
    "inverse_cdf"` draws from the same distributions, also in float64, with k times less
    work and noise (see `_inverse_cdf_rows`), but a different random stream.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if method not in CANDIDATE_DRAWS:
        raise ValueError(f"method must be one of {CANDIDATE_DRAWS}, got {method!r}")
    tokens = resolve_tokens(tokens)
    logit_rows = _flat_rows(logits)
    positions = _flat_positions(masked)  # [n]
    rows = positions.repeat(num_candidates)  # [k * n], candidate-major
    if method == "gumbel":
        draws = _gumbel_rows(logit_rows, rows, tokens, generator, max_noise_elements)
    else:
        draws = _inverse_cdf_rows(logit_rows, positions, num_candidates, tokens, generator, max_noise_elements)
    log_norm = _by_row_chunks(
        lambda chunk: torch.logsumexp(chunk.double(), dim=-1), logit_rows, positions, tokens, max_noise_elements
    )
    draw_logp = logit_rows[rows, draws].double().view(num_candidates, -1) - log_norm  # [k, n]
    seq, pos = positions // xt.shape[1], positions % xt.shape[1]
    candidates = xt.unsqueeze(1).repeat(1, num_candidates, 1)  # [B, k, L]
    candidates[seq, :, pos] = draws.view(num_candidates, -1).T
    logp = torch.zeros(candidates.shape, dtype=torch.float64, device=xt.device)
    logp[seq, :, pos] = draw_logp.T
    return candidates, logp if per_position else logp.sum(-1)


class CandidatePool(Protocol):
    """Where the k candidates of an importance-sampling step live: all in this process
    (`LocalPool`), or spread over ranks (`edlm_dist.distributed.RankPool`)."""

    def local_count(self, num_candidates: int) -> int:
        """How many of the k candidates this process draws and scores."""
        ...

    def gather(self, energies: torch.Tensor) -> torch.Tensor:
        """Local energies [B, k_local] -> all k energies [B, k], identical in every process."""
        ...

    def select(self, candidates: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """Local candidates [B, k_local, L] and global choices [B] -> the chosen sequences [B, L]."""
        ...


class LocalPool:
    """All k candidates drawn and scored in this process."""

    def local_count(self, num_candidates: int) -> int:
        return num_candidates

    def gather(self, energies: torch.Tensor) -> torch.Tensor:
        return energies

    def select(self, candidates: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        return candidates[torch.arange(candidates.shape[0], device=candidates.device), choice]


@dataclass
class SamplingStats:
    """What a `sample` call cost and how the importance weights looked, summed over calls."""

    steps: int = 0  # steps taken (sampling stops early once nothing is masked)
    denoiser_calls: int = 0  # denoiser forwards over the batch
    denoiser_rows: int = 0  # sequences that went through those forwards
    energy_calls: int = 0  # importance-sampling choices (each scores k candidates per sequence)
    energy_rows: int = 0  # candidate sequences scored by this process
    ess_sum: float = 0.0  # sum over choices and sequences of the ESS of softmax(-E) over the k
    ess_count: int = 0

    @property
    def mean_ess(self) -> float:
        return self.ess_sum / self.ess_count if self.ess_count else math.nan


def candidate_energies(
    energy: Energy, candidates: torch.Tensor, logp: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Energies float64 [B, k] of candidates [B, k, L] of xt [B, L] at t [B], with their
    proposal log-probs [B, k]."""
    batch, k, length = candidates.shape
    out = energy(
        candidates.reshape(batch * k, length), xt.repeat_interleave(k, dim=0),
        t.repeat_interleave(k, dim=0), logp.reshape(batch * k),
    )
    return out.double().reshape(batch, k)


def _choose_by_energy(
    energy: Energy, candidates: torch.Tensor, proposal_logp: torch.Tensor, xt: torch.Tensor,
    t: torch.Tensor, generator: torch.Generator | None, pool: CandidatePool, stats: SamplingStats,
) -> torch.Tensor:
    """Pick one candidate per sequence with probability softmax(-energy) (lower = likelier),
    over the candidates of every process in the pool."""
    batch, k, _ = candidates.shape
    energies = pool.gather(candidate_energies(energy, candidates, proposal_logp, xt, t))
    stats.energy_calls += 1
    stats.energy_rows += batch * k
    stats.ess_sum += float(effective_sample_size(energies).sum())
    stats.ess_count += batch
    choice = gumbel_argmax(-energies, generator=generator)
    return pool.select(candidates, choice)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    *,
    batch_size: int,
    seq_len: int,
    steps: int,
    tokens: TokenSpace | None = None,
    mask_id: int | None = None,
    schedule: Schedule | None = None,
    init: torch.Tensor | None = None,
    energy: Energy | None = None,
    num_candidates: int = 1,
    window: float = 1.0,
    generator: torch.Generator | None = None,
    candidate_generator: torch.Generator | None = None,
    pool: CandidatePool | None = None,
    stats: SamplingStats | None = None,
    candidate_draw: str = "gumbel",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw sequences [batch_size, seq_len] by ancestral sampling of the reverse process.

    `tokens` says which ids are drawn (the data tokens) and which is the mask (`mask_id` = V is
    shorthand for MDLM's `TokenSpace.mdlm(V)`). `init` holds the mask id where tokens are to be
    generated and fixed tokens elsewhere (prompts, infilling); by default everything is
    generated. With `energy`, steps whose t
    lies in [1 - window, 1] use importance sampling (paper Algorithm 1): `num_candidates`
    denoisings are drawn, `energy(x0, xt, t, proposal_logp) -> [N]` scores them, and the step
    moves toward the one picked with probability softmax(-energy). A denoiser output (or a
    chosen candidate) is reused while no token changes, unless a network reads t (see
    `reads_time`). Gumbel noise is drawn `MAX_NOISE_ELEMENTS` values at a time.

    `generator` drives every shared decision (unmasking, the choice among candidates, plain
    steps); candidates are drawn from `candidate_generator` (default: `generator`). With a
    `pool` spreading the k candidates over ranks, each rank passes the same `generator` and
    its own `candidate_generator`, and all ranks return the same sequences. `stats`, if
    given, accumulates the cost and the ESS of the importance weights. `candidate_draw` is
    `draw_candidates`'s method: float64 Gumbel-max, or the cheaper float64 inverse CDF.
    """
    _check_args(batch_size, seq_len, steps, init, energy, num_candidates, window)
    tokens = resolve_tokens(tokens, mask_id)
    pool = pool or LocalPool()
    stats = stats if stats is not None else SamplingStats()
    candidate_generator = candidate_generator or generator
    local_candidates = pool.local_count(num_candidates)
    schedule = schedule or LogLinearSchedule()
    device = torch.device(device) if device is not None else _infer_device(denoiser, init, generator)
    x = init.clone().to(device) if init is not None else torch.full(
        (batch_size, seq_len), tokens.mask_id, dtype=torch.long, device=device
    )
    keep_outputs = not reads_time(denoiser) and (energy is None or not reads_time(energy))
    logits = chosen = None
    for i in range(steps):
        masked = x == tokens.mask_id
        if not masked.any():
            break
        t, s = 1.0 - i / steps, 1.0 - (i + 1) / steps
        t_batch = torch.full((batch_size,), t, dtype=torch.float32, device=device)
        alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
        unmask_prob = (alpha_s - alpha_t) / (1.0 - alpha_t)
        stats.steps += 1
        if logits is None:
            logits = denoiser(x, t_batch)
            stats.denoiser_calls += 1
            stats.denoiser_rows += batch_size
        in_window = energy is not None and i / steps <= window
        if not in_window:
            chosen = None
        elif chosen is None:
            candidates, proposal_logp = draw_candidates(
                logits, x, masked, local_candidates, tokens, candidate_generator,
                max_noise_elements=MAX_NOISE_ELEMENTS, method=candidate_draw,
            )
            chosen = _choose_by_energy(energy, candidates, proposal_logp, x, t_batch, generator, pool, stats)
        unmask = masked & (
            uniform(tuple(x.shape), generator=generator, device=device, dtype=torch.float64)
            < unmask_prob
        )
        if chosen is not None:
            x = torch.where(unmask, chosen, x)
        else:
            draws = _gumbel_rows(_flat_rows(logits), _flat_positions(unmask), tokens, generator, MAX_NOISE_ELEMENTS)
            x = x.masked_scatter(unmask, draws)
        if unmask.any() or not keep_outputs:
            logits = chosen = None
    return x
