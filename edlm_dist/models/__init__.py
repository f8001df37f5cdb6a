"""Models: the bidirectional DiT denoiser and the causal AR baseline, sharing one backbone."""

from edlm_dist.models.attention import attention
from edlm_dist.models.layers import LayerNorm, TimestepEmbedder, apply_rotary, modulate, rotary_tables
from edlm_dist.models.transformer import (
    ARTransformer,
    DiT,
    DiTBlock,
    FinalLayer,
    Transformer,
    build_model,
    padded_vocab_size,
)

__all__ = [
    "ARTransformer",
    "DiT",
    "DiTBlock",
    "FinalLayer",
    "LayerNorm",
    "TimestepEmbedder",
    "Transformer",
    "apply_rotary",
    "attention",
    "build_model",
    "modulate",
    "padded_vocab_size",
    "rotary_tables",
]
