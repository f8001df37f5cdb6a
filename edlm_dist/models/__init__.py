"""Models: the model families (docs/hf_models.md). The dit family is MDLM's bidirectional DiT
denoiser, its causal AR baseline and the EDLM-NCE energy network, sharing one backbone; the
llama family is the Llama-family decoder (LLaDA and Dream denoisers, Llama and Qwen2 causal
LMs); the gpt2 family is GPT-2."""

from edlm_dist.config.schema import padded_vocab_size
from edlm_dist.models.attention import attention
from edlm_dist.models.base import CausalLM, LanguageModel
from edlm_dist.models.families import FAMILIES, MODEL_KINDS, build_model, meta_model, model_tokens
from edlm_dist.models.gpt2 import GPT2, GPT2Block
from edlm_dist.models.layers import (
    EnergyHead,
    LayerNorm,
    RMSNorm,
    TimestepEmbedder,
    apply_rotary,
    modulate,
    rope_frequencies,
    rotary_tables,
)
from edlm_dist.models.llama import LlamaBlock, LlamaCausalLM, LlamaDenoiser, LlamaEnergy, LlamaTransformer
from edlm_dist.models.transformer import ARTransformer, DiT, DiTBlock, EnergyNet, FinalLayer, Transformer

__all__ = [
    "FAMILIES",
    "GPT2",
    "MODEL_KINDS",
    "ARTransformer",
    "CausalLM",
    "DiT",
    "DiTBlock",
    "EnergyHead",
    "EnergyNet",
    "FinalLayer",
    "GPT2Block",
    "LanguageModel",
    "LayerNorm",
    "LlamaBlock",
    "LlamaCausalLM",
    "LlamaDenoiser",
    "LlamaEnergy",
    "LlamaTransformer",
    "RMSNorm",
    "TimestepEmbedder",
    "Transformer",
    "apply_rotary",
    "attention",
    "build_model",
    "meta_model",
    "model_tokens",
    "modulate",
    "padded_vocab_size",
    "rope_frequencies",
    "rotary_tables",
]
