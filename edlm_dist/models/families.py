"""The model families and how a model is built: `build_model(kind, config, vocab_size)` picks the
module of `config.family` for the role `kind` ("dit": the bidirectional denoiser a `mdlm` run
trains, "ar": a causal LM, "energy": the NCE energy network), builds it on the meta device,
lets the caller parallelise it there, materialises and initialises it.

A family is its config (the [model] keys it reads), its modules (here) and its parallelisation
plan (`distributed.parallelize.PLANS`), as in torchtitan's ModelSpec.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from edlm_dist.config import ConfigError
from edlm_dist.config.schema import ModelConfig
from edlm_dist.diffusion.tokens import TokenSpace
from edlm_dist.models.base import LanguageModel
from edlm_dist.models.gpt2 import GPT2
from edlm_dist.models.llama import LlamaCausalLM, LlamaDenoiser, LlamaEnergy
from edlm_dist.models.transformer import ARTransformer, DiT, EnergyNet

Kind = Literal["dit", "ar", "energy"]
MODEL_KINDS: dict[str, Kind] = {"mdlm": "dit", "ar": "ar", "nce": "energy"}  # training.task -> the role it trains

# family -> role -> the module's constructor; the dit family's modules also take the tokenizer's
# vocabulary, the others state theirs in the config (model.vocab_size)
FAMILIES: dict[str, dict[str, Callable[[ModelConfig, int], LanguageModel]]] = {
    "dit": {"dit": DiT, "ar": ARTransformer, "energy": EnergyNet},
    "llama": {"dit": lambda config, _: LlamaDenoiser(config), "ar": lambda config, _: LlamaCausalLM(config),
              "energy": lambda config, _: LlamaEnergy(config)},
    "gpt2": {"ar": lambda config, _: GPT2(config)},
}


def model_tokens(config: ModelConfig, vocab_size: int) -> TokenSpace:
    """The token space of a model of `config` over a tokenizer of `vocab_size` ids: the mask inside
    the vocabulary at `model.mask_id` (LLaDA, Dream), else MDLM's convention (the mask after them)."""
    if config.mask_id >= 0:
        return TokenSpace(config.mask_id, config.vocab_size)
    return TokenSpace.mdlm(vocab_size)


def meta_model(kind: Kind, config: ModelConfig, vocab_size: int) -> LanguageModel:
    """The model of `config.family` in the role `kind` on the meta device: its shapes without any
    memory (what `build_model` starts from, and what a memory plan counts). `vocab_size` is the
    tokenizer's number of ids; a family other than dit must state the same in `config.vocab_size`."""
    if kind not in MODEL_KINDS.values():
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(set(MODEL_KINDS.values()))}")
    roles = FAMILIES[config.family]
    if kind not in roles:
        task = next(task for task, role in MODEL_KINDS.items() if role == kind)
        raise ConfigError(f"model.family = {config.family!r} has no model for training.task = {task!r} "
                          f"(it has {', '.join(repr(t) for t, r in MODEL_KINDS.items() if r in roles)})")
    if config.family != "dit" and vocab_size != config.vocab_size:
        raise ConfigError(f"the tokenizer has {vocab_size} ids but model.vocab_size is {config.vocab_size}")
    with torch.device("meta"):
        return roles[kind](config, vocab_size)


def build_model(
    kind: Kind,
    config: ModelConfig,
    vocab_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    prepare: Callable[[LanguageModel], None] | None = None,
    *,
    initialize: bool = True,
) -> LanguageModel:
    """Build on meta, let `prepare` transform it there (e.g. shard it), materialise on `device`
    and (unless `initialize` is false: the caller fills every parameter) initialise with `seed`.

    The weights depend on the seed alone (not on the device, the sharding or the global RNG,
    which is left untouched).
    """
    model = meta_model(kind, config, vocab_size)
    if prepare is not None:
        prepare(model)
    model.to_empty(device=torch.device(device))
    model.tie_weights()
    if initialize:
        model.init_weights(seed)
    return model
