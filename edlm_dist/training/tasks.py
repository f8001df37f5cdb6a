"""Training objectives by name: `mdlm` (masked diffusion NELBO) and `ar` (next-token NLL).

A task says which model it trains, draws the noise of a global batch, scores sequences
(nats per sequence, for the loss and for evaluation) and generates samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edlm_dist.config import Config
from edlm_dist.diffusion import (
    Schedule,
    build_schedule,
    gumbel_argmax,
    keyed_generator,
    mask_tokens,
    masked_token_nll,
    nelbo,
    sample,
    stratified_times,
    uniform,
    weighted_nelbo_terms,
)
from edlm_dist.models import ARTransformer, Transformer


@dataclass
class StepNoise:
    """The training noise of one global batch: times [G] and masking uniforms [G, L].

    Drawn from a generator keyed by (seed, step) on every rank, each rank taking its rows,
    so the noise of an example does not depend on the world size or on where a run resumed.
    """

    t: torch.Tensor
    uniforms: torch.Tensor

    def rows(self, start: int, stop: int) -> StepNoise:
        return StepNoise(self.t[start:stop], self.uniforms[start:stop])


class MDLMTask:
    """Masked diffusion: the loss is the continuous-time NELBO of each sequence."""

    model_kind = "dit"

    def __init__(self, schedule: Schedule, mask_id: int, t_min: float, seed: int) -> None:
        self.schedule, self.mask_id, self.t_min, self.seed = schedule, mask_id, t_min, seed

    def draw_noise(self, global_batch: int, seq_len: int, step: int) -> StepNoise:
        generator = keyed_generator(self.seed, "train-noise", step)
        t = stratified_times(global_batch, t_min=self.t_min, generator=generator)
        return StepNoise(t, uniform((global_batch, seq_len), generator=generator, device="cpu"))

    def sequence_nll(self, model: Transformer, x0: torch.Tensor, noise: StepNoise) -> torch.Tensor:
        """One-draw NELBO of each sequence of x0 [B, L] under the given noise, nats [B]."""
        t = noise.t.to(x0.device)
        xt, masked = mask_tokens(
            x0, t, schedule=self.schedule, mask_id=self.mask_id, uniforms=noise.uniforms
        )
        nll = masked_token_nll(model(xt, t), x0, masked, mask_id=self.mask_id)
        return weighted_nelbo_terms(nll, t, schedule=self.schedule, t_min=self.t_min)

    def eval_nll(self, model: Transformer, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return nelbo(model, x0, mask_id=self.mask_id, schedule=self.schedule, t_min=self.t_min, generator=generator)

    def generate(
        self, model: Transformer, num: int, seq_len: int, steps: int, generator: torch.Generator
    ) -> torch.Tensor:
        return sample(
            model, batch_size=num, seq_len=seq_len, mask_id=self.mask_id, steps=steps,
            schedule=self.schedule, generator=generator,
        )


class ARTask:
    """Autoregressive baseline: the exact NLL of each sequence, all L positions scored."""

    model_kind = "ar"

    def draw_noise(self, global_batch: int, seq_len: int, step: int) -> None:
        return None

    def sequence_nll(self, model: ARTransformer, x0: torch.Tensor, noise: None) -> torch.Tensor:
        return -model.log_prob(x0)

    def eval_nll(self, model: ARTransformer, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return -model.log_prob(x0)

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


Task = MDLMTask | ARTask


def build_task(cfg: Config, mask_id: int) -> Task:
    """The task `training.task` names."""
    if cfg.training.task == "ar":
        return ARTask()
    schedule = build_schedule(cfg.diffusion.schedule, cfg.diffusion.eps)
    return MDLMTask(schedule, mask_id, cfg.diffusion.t_min, cfg.job.seed)
