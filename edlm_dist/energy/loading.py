"""The energies and the frozen denoiser that EDLM sampling, evaluation and NCE training read from
runs: the MDLM a program names (sampling's --checkpoint, an nce run's denoiser when scored), the
energy of `energy.kind` from `energy.checkpoint`, and the model config an NCE run takes from its
denoiser (`nce.denoiser`)."""

from __future__ import annotations

from dataclasses import replace

import torch

from edlm_dist.config import ConfigError, EnergyConfig, TrainProgram, validate_config
from edlm_dist.config.schema import ModelConfig
from edlm_dist.energy.autoregressive import AREnergy, DataTokenScorer
from edlm_dist.energy.nce import NCEEnergy
from edlm_dist.energy.shared_tokens import check_same_tokens, run_tokens
from edlm_dist.models import Transformer
from edlm_dist.diffusion import TokenSpace
from edlm_dist.runs.weights import (
    Checkpoint,
    WeightsError,
    checkpoint_tokens,
    checkpoint_vocab_size,
    load_weights,
    run_of_task,
)


def nce_model_config(cfg: TrainProgram, denoiser: TrainProgram) -> ModelConfig:
    """The energy network's architecture of the NCE run `cfg`: its `denoiser`'s (whose backbone it
    starts from), with only dropout and time conditioning its own, and no logit shift (Dream's:
    the energy has no logits)."""
    return replace(denoiser.model, dropout=cfg.model.dropout, time_conditioning=cfg.nce.time_conditioning,
                   logit_shift=False)


def continued_model_config(cfg: TrainProgram, initial: TrainProgram) -> ModelConfig:
    """The architecture of a run continued from the run config `initial` (`training.init_from`):
    `initial`'s, with only dropout this run's own."""
    return replace(initial.model, dropout=cfg.model.dropout)


def initial_weights_run(cfg: TrainProgram) -> Checkpoint | None:
    """The checkpoint `training.init_from` names (None when empty), which must be a run of this task."""
    if not cfg.training.init_from:
        return None
    try:
        return run_of_task(cfg.training.init_from, cfg.training.task, "training.init_from")
    except WeightsError as err:
        raise ConfigError(str(err)) from None


def resolve_model_config(cfg: TrainProgram) -> TrainProgram:
    """The config a run trains with, resolved before anything is built (the entry point does it, so
    the run folder's config.toml is what the trainer builds): an NCE run's [model] comes from
    its denoiser (`nce_model_config`), a continued run's from `training.init_from` (all but its
    dropout); other runs as given. The result is validated again, as the family's rules now apply."""
    if cfg.training.task == "nce":
        try:
            denoiser = run_of_task(cfg.nce.denoiser, "mdlm", "nce.denoiser").config
        except WeightsError as err:
            raise ConfigError(str(err)) from None
        model = nce_model_config(cfg, denoiser)
    elif (initial := initial_weights_run(cfg)) is not None:
        model = continued_model_config(cfg, initial.config)
    else:
        return cfg
    resolved = replace(cfg, model=model)
    validate_config(resolved)
    return resolved


def denoiser_checkpoint(path: str, key: str, cfg: EnergyConfig) -> Checkpoint:
    """The checkpoint of the MDLM at `path` (the config key `key`; empty with an NCE energy: the
    MDLM that energy was trained against); only run configs are read."""
    if not path and cfg.kind == "nce" and cfg.checkpoint:
        path = run_of_task(cfg.checkpoint, "nce", "energy.checkpoint").config.nce.denoiser
    return run_of_task(path, "mdlm", key)


def load_denoiser(path: str, key: str, cfg: EnergyConfig, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> tuple[Transformer, Checkpoint]:
    """The MDLM of `denoiser_checkpoint(path, key, cfg)`, in eval mode on `device`, its weights in `dtype`."""
    ckpt = denoiser_checkpoint(path, key, cfg)
    model, _ = load_weights(ckpt, cfg.weights, device=device, dtype=dtype)
    return model, ckpt


def energy_token_space(cfg: EnergyConfig, denoiser: Checkpoint) -> TokenSpace:
    """The token space EDLM draws and scores in with the energy of `cfg`: the denoiser's, less the
    data ids past an AR energy's vocabulary, which it cannot score (Dream's `<|beginoftext|>`,
    151,665, beside Qwen2.5's 151,665 ids): never drawn, never scored. Plain MDLM and an NCE
    energy (trained on the denoiser's space) keep the denoiser's."""
    tokens = checkpoint_tokens(denoiser)
    if cfg.kind == "nce" or not cfg.checkpoint:
        return tokens
    scorer_ids = checkpoint_vocab_size(run_of_task(cfg.checkpoint, "ar", "energy.checkpoint"))
    return tokens.without([i for i in tokens.data_ids().tolist() if i >= scorer_ids])


def load_energy(cfg: EnergyConfig, denoiser: Checkpoint, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> AREnergy | NCEEnergy:
    """The energy callable `energy.kind` names, built from `energy.checkpoint` (the AR run for
    ar/coar, the NCE run for nce; its network's weights in `dtype`) and checked against the
    `denoiser` run it will correct: the same tokenizer (`check_same_tokens`) and sequence length.
    An AR energy scores in `energy_token_space`, its conditionals normalised over its data tokens
    (`DataTokenScorer`)."""
    task = "nce" if cfg.kind == "nce" else "ar"
    ckpt = run_of_task(cfg.checkpoint, task, "energy.checkpoint")
    tokens = energy_token_space(cfg, denoiser)
    check_same_tokens(run_tokens(ckpt, f"energy.checkpoint {ckpt.run_dir}"),
                      run_tokens(denoiser, f"the denoiser {denoiser.run_dir}"), tokens)
    model, _ = load_weights(ckpt, cfg.weights, device=device, dtype=dtype)
    if cfg.kind == "nce":
        return NCEEnergy(model, max_batch=cfg.max_batch)
    return AREnergy(DataTokenScorer(model, tokens), carry_over=cfg.kind == "coar", max_batch=cfg.max_batch,
                    tokens=tokens)
