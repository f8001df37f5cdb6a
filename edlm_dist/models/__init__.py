"""Models: the bidirectional DiT denoiser, the causal AR baseline and the EDLM-NCE energy
network, sharing one backbone."""

from edlm_dist.models.attention import attention
from edlm_dist.models.layers import LayerNorm, TimestepEmbedder, apply_rotary, modulate, rotary_tables
from edlm_dist.models.transformer import (
    MODEL_KINDS,
    ARTransformer,
    DiT,
    DiTBlock,
    EnergyHead,
    EnergyNet,
    FinalLayer,
    Transformer,
    build_model,
    meta_model,
    padded_vocab_size,
)

__all__ = [
    "MODEL_KINDS",
    "ARTransformer",
    "DiT",
    "DiTBlock",
    "EnergyHead",
    "EnergyNet",
    "FinalLayer",
    "LayerNorm",
    "TimestepEmbedder",
    "Transformer",
    "apply_rotary",
    "attention",
    "build_model",
    "meta_model",
    "modulate",
    "padded_vocab_size",
    "rotary_tables",
]
