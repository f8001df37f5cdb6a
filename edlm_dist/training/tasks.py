"""Training objectives by name: `mdlm` (masked diffusion NELBO), `ar` (next-token NLL) and
`nce` (the EDLM residual energy, by noise-contrastive estimation against a frozen MDLM).

A task says which model it trains, draws the noise of a batch's rows, and turns a batch into
per-example terms: `train_terms` (the "loss" to minimise and diagnostics) and `eval_terms`
(validation figures). A term that does not apply to an example is NaN and is not averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edlm_dist.config import TrainProgram
from edlm_dist.data import Batch
from edlm_dist.diffusion import (
    Schedule,
    TokenSpace,
    build_schedule,
    draw_candidates,
    effective_sample_size,
    gumbel_argmax,
    keyed_generator,
    mask_tokens,
    masked_token_nll,
    nce_loss,
    nelbo,
    pairwise_accuracy,
    sample,
    stratified_times,
    uniform,
    weighted_nelbo_terms,
)
from edlm_dist.energy import NCEEnergy
from edlm_dist.models import MODEL_KINDS, ARTransformer, DiT, EnergyNet, Transformer


Terms = dict[str, torch.Tensor]  # name -> per-example values [B] (NaN: not applicable)


@dataclass
class StepNoise:
    """The training noise of rows of one global batch: times [B], masking uniforms [B, L], and
    the global row indices [B] that key each example's heavier noise (NCE negatives).

    A function of (seed, step, global row index): drawn for the whole global batch from a
    generator keyed by (seed, step) (the times are stratified over the global batch), each rank
    keeping its rows, so the noise of an example does not depend on the world size, the
    micro-batching or where a run resumed.
    """

    step: int
    t: torch.Tensor
    uniforms: torch.Tensor
    index: torch.Tensor

    def select(self, rows: range) -> StepNoise:
        """The noise of global rows `rows`, a consecutive part of this noise's rows."""
        first = int(self.index[0])
        part = slice(rows.start - first, rows.stop - first)
        return StepNoise(self.step, self.t[part], self.uniforms[part], self.index[part])


class MDLMTask:
    """Masked diffusion: the loss is the continuous-time NELBO of each sequence, per token."""

    model_kind = MODEL_KINDS["mdlm"]
    headline = "nelbo_per_token"  # the validation figure the report leads with

    def __init__(self, schedule: Schedule, tokens: TokenSpace, t_min: float, seed: int) -> None:
        self.schedule, self.tokens, self.t_min, self.seed = schedule, tokens, t_min, seed

    def draw_noise(self, batch: Batch) -> StepNoise:
        """The noise of the batch's rows, keyed by its step and global row indices."""
        generator = keyed_generator(self.seed, "train-noise", batch.step)
        t = stratified_times(batch.global_size, t_min=self.t_min, generator=generator)
        uniforms = uniform((batch.global_size, batch.tokens.shape[1]), generator=generator, device="cpu")
        return StepNoise(batch.step, t, uniforms, torch.arange(batch.global_size)).select(batch.rows)

    def noised(self, x0: torch.Tensor, noise: StepNoise) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t [B], xt [B, L], masked [B, L]) of x0 under the given noise."""
        t = noise.t.to(x0.device)
        xt, masked = mask_tokens(x0, t, schedule=self.schedule, mask_id=self.tokens.mask_id, uniforms=noise.uniforms)
        return t, xt, masked

    def sequence_nll(self, model: Transformer, x0: torch.Tensor, noise: StepNoise) -> torch.Tensor:
        """One-draw NELBO of each sequence of x0 [B, L] under the given noise, nats [B]."""
        t, xt, masked = self.noised(x0, noise)
        nll = masked_token_nll(model(xt, t), x0, masked, tokens=self.tokens)
        return weighted_nelbo_terms(nll, t, schedule=self.schedule, t_min=self.t_min)

    def train_terms(self, model: Transformer, x0: torch.Tensor, noise: StepNoise) -> Terms:
        return {"loss": self.sequence_nll(model, x0, noise) / x0.shape[1]}

    def eval_terms(self, model: Transformer, x0: torch.Tensor, batch: int) -> Terms:
        """The NELBO per token of each validation sequence, noise keyed by the batch number."""
        nll = nelbo(model, x0, tokens=self.tokens, schedule=self.schedule, t_min=self.t_min,
                    generator=keyed_generator(self.seed, "eval", batch))
        return {self.headline: nll / x0.shape[1]}

    def generate(
        self, model: Transformer, num: int, seq_len: int, steps: int, generator: torch.Generator
    ) -> torch.Tensor:
        return sample(
            model, batch_size=num, seq_len=seq_len, tokens=self.tokens, steps=steps,
            schedule=self.schedule, generator=generator,
        )


class ARTask:
    """Autoregressive baseline: the exact NLL of each sequence, all L positions scored."""

    model_kind = MODEL_KINDS["ar"]
    headline = "nll_per_token"

    def draw_noise(self, batch: Batch) -> None:
        return None

    def sequence_nll(self, model: ARTransformer, x0: torch.Tensor, noise: None) -> torch.Tensor:
        return -model.log_prob(x0)

    def train_terms(self, model: ARTransformer, x0: torch.Tensor, noise: None) -> Terms:
        return {"loss": self.sequence_nll(model, x0, noise) / x0.shape[1]}

    def eval_terms(self, model: ARTransformer, x0: torch.Tensor, batch: int) -> Terms:
        return {self.headline: -model.log_prob(x0) / x0.shape[1]}

    @torch.no_grad()
    def generate(
        self, model: ARTransformer, num: int, seq_len: int, steps: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Left-to-right ancestral sampling (one full forward per token; `steps` is unused)."""
        device = next(model.parameters()).device
        x = torch.zeros(num, seq_len, dtype=torch.long, device=device)
        for i in range(seq_len):
            logits = model(x)[:, i, : model.vocab_size]
            x[:, i] = gumbel_argmax(logits, generator=generator)
        return x


def draw_denoisings(
    logits: torch.Tensor, xt: torch.Tensor, tokens: TokenSpace, keys: list[tuple[object, ...]]
) -> torch.Tensor:
    """One x0 ~ p_theta(. | xt) per row of xt [B, L]: masked positions drawn from the logits of
    the data tokens by float64 Gumbel-max with the row's own generator (keyed by `keys[row]`, on
    the logits' device), unmasked tokens carried over. Per-row keys make a row's draw independent
    of the batch it sits in, hence of the world size and of micro-batching."""
    out = xt.clone()
    for row, key in enumerate(keys):
        masked = xt[row] == tokens.mask_id
        if masked.any():
            generator = keyed_generator(*key, device=logits.device)
            draws = gumbel_argmax(tokens.data_logits(logits[row, masked]), generator=generator)
            out[row, masked] = tokens.token_ids(draws)
    return out


class NCETask(MDLMTask):
    """EDLM-NCE: the energy network learns to tell data x0 (lower energy) from denoisings drawn
    by the frozen MDLM at the same xt, with `num_negatives` draws per example.

    t and the masks come from the same stratified (seed, step) noise as MDLM training; the
    negatives' Gumbel noise is keyed by (seed, step, global example index, draw).
    """

    model_kind = MODEL_KINDS["nce"]
    headline = "accuracy"
    ESS_TIMES = (0.25, 0.5, 0.75, 1.0)  # where the diagnostics measure the ESS of k candidates

    def __init__(
        self, schedule: Schedule, tokens: TokenSpace, t_min: float, seed: int, denoiser: DiT, *,
        num_negatives: int = 1, ess_candidates: int = 16, ess_sequences: int = 8, max_batch: int = 256,
        sample_candidates: int = 4, sample_window: float = 1.0,
    ) -> None:
        super().__init__(schedule, tokens, t_min, seed)
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.num_negatives = num_negatives
        self.ess_candidates, self.ess_sequences, self.max_batch = ess_candidates, ess_sequences, max_batch
        self.sample_candidates, self.sample_window = sample_candidates, sample_window

    def generate(
        self, model: EnergyNet, num: int, seq_len: int, steps: int, generator: torch.Generator
    ) -> torch.Tensor:
        """EDLM samples: the frozen denoiser proposes, the energy chooses (importance sampling)."""
        return sample(
            self.denoiser, batch_size=num, seq_len=seq_len, tokens=self.tokens, steps=steps,
            schedule=self.schedule, generator=generator, energy=NCEEnergy(model, max_batch=self.max_batch),
            num_candidates=self.sample_candidates, window=self.sample_window,
        )

    @torch.no_grad()
    def _negatives(self, xt: torch.Tensor, t: torch.Tensor, keys: list[tuple[object, ...]]) -> torch.Tensor:
        """`num_negatives` denoisings per row of xt, draw-major: [m, B, L]."""
        logits = self.denoiser(xt, t)
        return torch.stack([
            draw_denoisings(logits, xt, self.tokens, [(*key, j) for key in keys]) for j in range(self.num_negatives)
        ])

    def _energies(self, model: EnergyNet, candidates: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Energies [c, B] of candidates [c, B, L] (one forward over all c * B rows)."""
        count = candidates.shape[0]
        flat = model(candidates.flatten(0, 1), xt.repeat(count, 1), t.repeat(count))
        return flat.view(count, -1)

    def _terms(self, model: EnergyNet, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
               keys: list[tuple[object, ...]]) -> Terms:
        negatives = self._negatives(xt, t, keys)
        energies = self._energies(model, torch.cat((x0[None], negatives)), xt, t).float()
        positive, negative = energies[0], energies[1:].T  # [B], [B, m]
        return {
            "loss": nce_loss(positive, negative),
            "accuracy": pairwise_accuracy(positive, negative).float(),
            "energy_pos": positive.detach(),
            "energy_neg": negative.detach().mean(dim=-1),
            "energy_gap": (negative.detach().mean(dim=-1) - positive.detach()),
        }

    def train_terms(self, model: EnergyNet, x0: torch.Tensor, noise: StepNoise) -> Terms:
        t, xt, _ = self.noised(x0, noise)
        keys = [(self.seed, "nce-negatives", noise.step, int(i)) for i in noise.index]
        return self._terms(model, x0, xt, t, keys)

    @torch.no_grad()
    def eval_terms(self, model: EnergyNet, x0: torch.Tensor, batch: int) -> Terms:
        """NCE figures on held-out pairs (t stratified over [t_min, 1]; accuracy also at t >= 0.5),
        and the ESS of `ess_candidates` proposal draws at the fixed ESS_TIMES for the first
        `ess_sequences` sequences (NaN for the others)."""
        generator = keyed_generator(self.seed, "eval", batch)
        t = stratified_times(x0.shape[0], t_min=self.t_min, generator=generator).to(x0.device)
        xt, _ = mask_tokens(x0, t, schedule=self.schedule, mask_id=self.tokens.mask_id, generator=generator)
        keys = [(self.seed, "eval-negatives", batch, row) for row in range(x0.shape[0])]
        terms = self._terms(model, x0, xt, t, keys)
        terms["accuracy_t_ge_0.5"] = terms["accuracy"].masked_fill(t < 0.5, float("nan"))
        if self.ess_candidates:
            terms.update(self._ess(model, x0, batch))
        return terms

    def _ess(self, model: EnergyNet, x0: torch.Tensor, batch: int) -> Terms:
        """ESS of k candidate energies at each of ESS_TIMES for the first rows of x0 (candidates by
        inverse CDF: the same distribution as Gumbel-max at 1/k of the noise, which matters for
        large vocabularies)."""
        rows, k = min(self.ess_sequences, x0.shape[0]), self.ess_candidates
        energy = NCEEnergy(model, max_batch=self.max_batch)
        terms = {}
        for t_value in self.ESS_TIMES:
            generator = keyed_generator(self.seed, "ess", batch, t_value)
            t = torch.full((rows,), t_value, device=x0.device)
            xt, masked = mask_tokens(x0[:rows], t, schedule=self.schedule, mask_id=self.tokens.mask_id,
                                     generator=generator)
            candidates, _ = draw_candidates(self.denoiser(xt, t), xt, masked, k, self.tokens, generator,
                                           method="inverse_cdf")
            energies = energy(candidates.flatten(0, 1), xt.repeat_interleave(k, 0), t.repeat_interleave(k))
            ess = torch.full((x0.shape[0],), math.nan, device=x0.device)
            ess[:rows] = effective_sample_size(energies.view(rows, k)).float()
            terms[f"ess_t{t_value:.2f}"] = ess
        return terms


Task = MDLMTask | ARTask | NCETask


def build_task(cfg: TrainProgram, tokens: TokenSpace, denoiser: DiT | None = None) -> Task:
    """The task `training.task` names, over the token space `tokens` of the data; `nce` needs the
    frozen `denoiser` that draws its negatives."""
    if cfg.training.task == "ar":
        return ARTask()
    schedule = build_schedule(cfg.diffusion.schedule, cfg.diffusion.eps)
    if cfg.training.task == "nce":
        if denoiser is None:
            raise ValueError("the nce task needs the frozen denoiser")
        e = cfg.nce
        return NCETask(schedule, tokens, cfg.diffusion.t_min, cfg.job.seed, denoiser,
                       num_negatives=e.num_negatives, ess_candidates=e.ess_candidates,
                       ess_sequences=e.ess_sequences, max_batch=e.max_batch,
                       sample_candidates=cfg.sample.num_candidates, sample_window=cfg.sample.window)
    return MDLMTask(schedule, tokens, cfg.diffusion.t_min, cfg.job.seed)
