"""Tiny random checkpoints in every Hugging Face layout tools/import_hf.py reads, each with an
independent statement of its forward pass.

Llama, Qwen2 and GPT-2 are transformers' own models, written by `save_pretrained`. LLaDA and
Dream ship their modeling code with their checkpoints; their weights are written here under
their own parameter names and config keys (LLaDA's modeling_llada.py and configuration_llada.py,
Dream's modeling_dream.py and configuration_dream.py), from a transformers Llama (LLaDA) or
Qwen2 (Dream) model whose forward, run with a non-causal attention mask (and for Dream shifted by
one position as its sampler does), is the reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 96  # embedding rows of every tiny model
MASK = 90  # LLaDA's and Dream's mask id, inside the vocabulary as in theirs
EOS = 91
LENGTH = 12
SIZES = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
LAYOUTS = ["llama", "qwen2", "qwen2-sharded", "gpt2", "llada", "llada-sharded", "dream", "dream-sharded"]

# transformers' Llama names -> LLaDA's (LLaDAModel: transformer.wte / blocks / ln_f / ff_out;
# LLaDALlamaBlock: attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm, ff_proj (the SiLU
# gate), up_proj, ff_out)
LLADA_NAMES = [("model.embed_tokens.", "model.transformer.wte."), ("model.layers.", "model.transformer.blocks."),
               ("self_attn.o_proj.", "attn_out."), ("self_attn.", ""), ("input_layernorm.", "attn_norm."),
               ("post_attention_layernorm.", "ff_norm."), ("mlp.gate_proj.", "ff_proj."), ("mlp.up_proj.", "up_proj."),
               ("mlp.down_proj.", "ff_out."), ("model.norm.", "model.transformer.ln_f."),
               ("lm_head.", "model.transformer.ff_out.")]


def _randomised(model: torch.nn.Module, seed: int, dtype: torch.dtype) -> torch.nn.Module:
    """`model` in eval mode with N(0, 0.2) weights exactly representable in `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_((torch.randn(param.shape, generator=generator) * 0.2).to(dtype).float())
    return model.eval()


def save_sharded(state: dict[str, torch.Tensor], folder: Path, shards: int) -> None:
    """`state` as model-0000i-of-0000n.safetensors files and the index save_pretrained writes."""
    names = sorted(state)
    weight_map = {name: f"model-{i % shards + 1:05d}-of-{shards:05d}.safetensors" for i, name in enumerate(names)}
    for file in sorted(set(weight_map.values())):
        save_file({n: state[n].contiguous() for n in names if weight_map[n] == file}, folder / file,
                  metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _save(folder: Path, state: dict[str, torch.Tensor], config: dict, shards: int, dtype: torch.dtype) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {name: tensor.to(dtype).contiguous() for name, tensor in state.items()}
    if shards > 1:
        save_sharded(state, folder, shards)
    else:
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def llada_config(**changes) -> dict:
    """LLaDA-8B's config.json keys (configuration_llada.py's ModelConfig) at tiny sizes."""
    config = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": SIZES["hidden_size"],
              "n_layers": SIZES["num_hidden_layers"], "n_heads": SIZES["num_attention_heads"],
              "n_kv_heads": SIZES["num_key_value_heads"], "mlp_hidden_size": SIZES["intermediate_size"],
              "mlp_ratio": 4, "vocab_size": VOCAB, "embedding_size": VOCAB, "rms_norm_eps": 1e-5,
              "rope_theta": 500000.0, "weight_tying": False, "block_type": "llama", "activation_type": "silu",
              "layer_norm_type": "rms", "rope": True, "rope_full_precision": True, "alibi": False,
              "include_bias": False, "include_qkv_bias": False, "bias_for_layer_norm": False,
              "attention_layer_norm": False, "input_emb_norm": False, "scale_logits": False,
              "mask_token_id": MASK, "eos_token_id": EOS, "pad_token_id": EOS, "max_sequence_length": 64,
              "residual_dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0, "use_cache": False}
    return config | changes


def dream_config(**changes) -> dict:
    """Dream-7B's config.json keys (configuration_dream.py's DreamConfig) at tiny sizes."""
    config = {"model_type": "Dream", "architectures": ["DreamModel"], **SIZES, "vocab_size": VOCAB,
              "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "tie_word_embeddings": False,
              "hidden_act": "silu", "max_position_embeddings": 64, "mask_token_id": MASK, "pad_token_id": EOS,
              "bos_token_id": EOS, "eos_token_id": EOS, "use_sliding_window": False, "attention_dropout": 0.0}
    return config | changes


def non_causal(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's logits with every position attending to every other (a zero 4D float mask)."""
    def forward(ids: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(ids.shape[0], 1, ids.shape[1], ids.shape[1])
        with torch.no_grad():
            return model(ids, attention_mask=mask).logits
    return forward


def write_layout(name: str, folder: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write the tiny checkpoint `name` (of LAYOUTS) into `folder`; returns its reference forward:
    ids [B, L] -> the logits a port must give (a causal LM's next-token logits, a denoiser's
    logits of each position's token)."""
    layout, _, sharded = name.partition("-")
    shards = 2 if sharded else 1
    if layout == "llama":
        config = LlamaConfig(**SIZES, vocab_size=VOCAB, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                             max_position_embeddings=64, rope_theta=500000.0,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
        model = _randomised(LlamaForCausalLM(config), 1, torch.float32)
    elif layout == "qwen2":
        config = Qwen2Config(**SIZES, vocab_size=VOCAB, tie_word_embeddings=True, bos_token_id=EOS, eos_token_id=EOS,
                             max_position_embeddings=64)
        model = _randomised(Qwen2ForCausalLM(config), 2, torch.float32)
    elif layout == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=EOS,
                            eos_token_id=EOS)
        model = _randomised(GPT2LMHeadModel(config), 3, torch.float32)
    if layout in ("llama", "qwen2", "gpt2"):
        model.save_pretrained(folder, max_shard_size="20KB" if sharded else "5GB")
        return lambda ids: model(ids).logits.detach()
    dtype = torch.bfloat16 if sharded else torch.float32
    if layout == "llada":
        reference = _randomised(LlamaForCausalLM(LlamaConfig(**SIZES, vocab_size=VOCAB, rms_norm_eps=1e-5,
                                                             rope_theta=500000.0, attn_implementation="eager")),
                                4, dtype)
        state = {}
        for key, tensor in reference.state_dict().items():
            for theirs, llada in LLADA_NAMES:
                key = key.replace(theirs, llada)
            state[key] = tensor
        _save(folder, state, llada_config(), shards, dtype)
        return non_causal(reference)
    reference = _randomised(Qwen2ForCausalLM(Qwen2Config(**SIZES, vocab_size=VOCAB, rope_theta=1000000.0,
                                                         attn_implementation="eager")), 5, dtype)
    _save(folder, dict(reference.state_dict()), dream_config(), shards, dtype)
    forward = non_causal(reference)

    def dream(ids: torch.Tensor) -> torch.Tensor:  # generation_utils.py: logits[:, :1], then logits[:, :-1]
        logits = forward(ids)
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return dream
