"""GPT-2 (`model.family = "gpt2"`), the causal language model whose tokenizer MDLM's `mdlm-owt`
shares, as an AR energy: token and learned position embeddings, pre-norm blocks of LayerNorm
(with bias), causal attention and a tanh-GELU MLP (every linear with a bias), a final LayerNorm
and the output layer, tied to the token embedding as in GPT-2 (or not).

The forward pass is transformers' GPT2LMHeadModel (docs/hf_models.md); its Conv1D weights map
onto these Linear layers transposed, in `interop.hf_layout`. Initialisation as GPT-2's: N(0, 0.02),
the residual outputs at 0.02 / sqrt(2 n_layers), LayerNorms at one and biases at zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edlm_dist.config.schema import ModelConfig, padded_vocab_size
from edlm_dist.models.attention import attention
from edlm_dist.models.base import CausalLM, LanguageModel
from edlm_dist.models.init import Init
from edlm_dist.models.layers import LayerNorm

INIT_STD = 0.02


class GPT2Block(nn.Module):
    """x + attention(LN(x)), then + MLP(LN(x)), causal: `forward(x)` with x [B, L, hidden]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, self.n_heads = config.hidden_size, config.n_heads
        width = config.intermediate_size or config.mlp_ratio * hidden
        self.ln_1 = LayerNorm(hidden, config.norm_eps, bias=True)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.ln_2 = LayerNorm(hidden, config.norm_eps, bias=True)
        self.fc = nn.Linear(hidden, width)
        self.proj = nn.Linear(width, hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, hidden = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(batch, length, 3, self.n_heads, -1).unbind(dim=2)
        x = x + self.dropout(self.attn_out(attention(q, k, v, causal=True).reshape(batch, length, hidden)))
        return x + self.dropout(self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh")))


class GPT2(CausalLM, LanguageModel):
    """GPT-2 scoring all L positions after its start token (`CausalLM`; GPT-2's BOS 50256 when
    imported). L must not exceed `config.max_positions`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.mask_id = config.mask_id if config.mask_id >= 0 else config.vocab_size
        self.padded_vocab = config.embedding_rows or padded_vocab_size(config.vocab_size)
        self.embed = nn.Embedding(self.padded_vocab, config.hidden_size)
        self.positions = nn.Embedding(config.max_positions, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPT2Block(config) for _ in range(config.n_layers))
        self.norm = LayerNorm(config.hidden_size, config.norm_eps, bias=True)
        self.head = nn.Linear(config.hidden_size, self.padded_vocab, bias=False)
        self.tie_weights()
        self.start_token = self.check_start_token()
        if self.embed.weight.device.type != "meta":
            self.init_weights()

    def init_rule(self, name: str) -> Init:
        if name.endswith(".bias"):
            return Init("zeros")
        if "ln_" in name or name.startswith("norm."):
            return Init("ones")
        if name.endswith(("attn_out.weight", "proj.weight")):
            return Init("normal", INIT_STD / math.sqrt(2 * self.config.n_layers))
        return Init("normal", INIT_STD)

    def lookup_tables(self) -> list[nn.Parameter]:
        return [self.positions.weight] + ([] if self.config.tie_embeddings else [self.embed.weight])

    def _next_token_logits(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        if length > self.config.max_positions:
            raise ValueError(f"{length} tokens exceed GPT-2's {self.config.max_positions} positions")
        x = self.dropout(self.embed(tokens) + self.positions(torch.arange(length, device=tokens.device)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
