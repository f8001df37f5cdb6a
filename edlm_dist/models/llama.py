"""The Llama-family decoder (`model.family = "llama"`): pre-norm blocks of RMSNorm, rotary
grouped-query attention with optional query/key/value biases, and a SwiGLU MLP; a final RMSNorm
and an output layer, tied to the input embedding or not.

Bidirectional without time conditioning it is the denoiser of LLaDA and Dream (`LlamaDenoiser`,
with Dream's shifted logits when `model.logit_shift`); causal it is Llama's and Qwen2's language
model (`LlamaCausalLM`); with a scalar head over its mean-pooled states it is the EDLM-NCE
energy fine-tuned from LLaDA or Dream (`LlamaEnergy`), as `EnergyNet` is from MDLM's DiT. The
forward pass is the one of transformers' LlamaForCausalLM and Qwen2ForCausalLM, LLaDA's
LLaDALlamaBlock and Dream's DreamModel (docs/hf_models.md names the file behind each detail); their checkpoints map onto these parameters in `interop.hf_layout`.

Initialisation (`init_rule`): N(0, 0.02) for the embedding and the linears, the two
residual-branch outputs (o_proj, down_proj) at 0.02 / sqrt(2 n_layers); ones for norms, zeros for
biases. No buffers: the rotary tables are recomputed from the sequence length in forward.
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
from edlm_dist.models.layers import EnergyHead, RMSNorm, energy_init_rule, apply_rotary, rope_frequencies, rotary_tables_of

INIT_STD = 0.02


class LlamaBlock(nn.Module):
    """x + attention(RMSNorm(x)), then + SwiGLU(RMSNorm(x)): `forward(x, cos, sin)` with x
    [B, L, hidden] and rotary tables [L, head_dim]."""

    def __init__(self, config: ModelConfig, causal: bool) -> None:
        super().__init__()
        hidden, self.n_heads = config.hidden_size, config.n_heads
        self.n_kv_heads = config.n_kv_heads or config.n_heads
        self.head_dim = hidden // self.n_heads
        self.causal = causal
        width = config.intermediate_size or config.mlp_ratio * hidden
        self.attn_norm = RMSNorm(hidden, config.norm_eps)
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, self.n_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=False)
        self.mlp_norm = RMSNorm(hidden, config.norm_eps)
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        batch, length, _ = x.shape
        h = self.attn_norm(x)
        q = apply_rotary(self.q_proj(h).view(batch, length, self.n_heads, self.head_dim), cos, sin)
        k = apply_rotary(self.k_proj(h).view(batch, length, self.n_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(h).view(batch, length, self.n_kv_heads, self.head_dim)
        h = attention(q, k, v, causal=self.causal).reshape(batch, length, -1)
        x = x + self.dropout(self.o_proj(h))
        h = self.mlp_norm(x)
        return x + self.dropout(self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h)))


class LlamaTransformer(LanguageModel):
    """The embedding, the blocks, the final norm and the output layer `head` (the embedding's
    weight when `config.tie_embeddings`), over `config.embedding_rows` ids. Subclasses choose
    `causal`."""

    def __init__(self, config: ModelConfig, *, causal: bool) -> None:
        super().__init__()
        if config.hidden_size % config.n_heads or (config.hidden_size // config.n_heads) % 2:
            raise ValueError(f"hidden_size {config.hidden_size} over {config.n_heads} heads must give an even "
                             "head size (rotary embedding)")
        self.config = config
        self.vocab_size = config.vocab_size
        self.mask_id = config.mask_id if config.mask_id >= 0 else config.vocab_size
        self.padded_vocab = config.embedding_rows or padded_vocab_size(config.vocab_size)
        self.head_dim = config.hidden_size // config.n_heads
        self.embed = nn.Embedding(self.padded_vocab, config.hidden_size)
        self.blocks = nn.ModuleList(LlamaBlock(config, causal) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self._build_output()
        self.tie_weights()
        if self.embed.weight.device.type != "meta":
            self.init_weights()

    def _build_output(self) -> None:
        self.head = nn.Linear(self.config.hidden_size, self.padded_vocab, bias=False)

    def init_rule(self, name: str) -> Init:
        if name.endswith(".bias"):
            return Init("zeros")
        if "norm" in name:
            return Init("ones")
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            return Init("normal", INIT_STD / math.sqrt(2 * self.config.n_layers))
        return Init("normal", INIT_STD)

    def lookup_tables(self) -> list[nn.Parameter]:
        return [] if self.config.tie_embeddings else [self.embed.weight]

    def rotary_tables(self, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """float32 cos, sin [seq_len, head_dim] at the configured base and scaling."""
        cfg = self.config
        inv_freq = rope_frequencies(self.head_dim, cfg.rope_theta, device, cfg.rope_scaling, cfg.rope_factor,
                                    cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                                    cfg.rope_original_max_positions)
        return rotary_tables_of(inv_freq, seq_len)

    def hidden_states(self, tokens: Tensor) -> Tensor:
        """The final normed hidden states [B, L, hidden] of tokens [B, L]."""
        return self._trunk(self.embed(tokens))

    def _trunk(self, x: Tensor) -> Tensor:
        """The blocks and the final norm over input states x [B, L, hidden]."""
        cos, sin = self.rotary_tables(x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def _logits(self, tokens: Tensor) -> Tensor:
        """tokens [B, L] -> logits [B, L, padded_vocab], position i read from position i's hidden state."""
        return self.head(self.hidden_states(tokens))


class LlamaDenoiser(LlamaTransformer):
    """Bidirectional denoiser for masked diffusion (LLaDA, Dream): `forward(xt, t=None) -> logits`;
    t is never read. With `config.logit_shift` (Dream), the logit at position i > 0 comes from
    position i - 1 and position 0 keeps its own, as Dream's sampler shifts its model's output."""

    reads_time = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, causal=False)

    def forward(self, xt: Tensor, t: Tensor | None = None) -> Tensor:
        """xt [B, L] -> logits [B, L, padded_vocab], logits[:, i] over the token at position i."""
        logits = self._logits(xt)
        if self.config.logit_shift:
            logits = torch.cat((logits[:, :1], logits[:, :-1]), dim=1)
        return logits


class LlamaCausalLM(CausalLM, LlamaTransformer):
    """Causal language model (Llama, Qwen2) scoring all L positions after its start token (`CausalLM`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, causal=True)
        self.start_token = self.check_start_token()

    def _next_token_logits(self, tokens: Tensor) -> Tensor:
        return self._logits(tokens)


class LlamaEnergy(LlamaTransformer):
    """EDLM-NCE residual energy E(x0, xt) on a bidirectional Llama-family trunk (LLaDA, Dream):
    embed(x0_i), plus the learned `masked_marker` where xt_i is the mask, through the blocks and
    the final norm, mean-pooled by `EnergyHead` to one scalar per sequence.

    `embed`, `blocks` and `norm` share names and shapes with `LlamaDenoiser`, so an imported or
    trained denoiser initialises them; `masked_marker` and the head's output layer start at zero,
    so the initial energy is 0 and the initial joint is the denoiser's. The time is never read
    (the family has no time conditioning), and neither the output layer nor Dream's shift exist here.
    """

    reads_time = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, causal=False)

    def _build_output(self) -> None:
        self.masked_marker = nn.Parameter(torch.empty(self.config.hidden_size))
        self.head = EnergyHead(self.config.hidden_size)

    def tie_weights(self) -> None:
        """Nothing to tie: the energy has no output layer over the vocabulary."""

    def lookup_tables(self) -> list[nn.Parameter]:
        return [self.embed.weight]

    def init_rule(self, name: str) -> Init:
        return energy_init_rule(name, self.config.hidden_size) or super().init_rule(name)

    def forward(self, x0: Tensor, xt: Tensor, t: Tensor | None = None) -> Tensor:
        """x0 [B, L] data ids, xt [B, L] (the mask at `mask_id`); t is not read -> energies [B] (fp32)."""
        if x0.shape != xt.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and xt {tuple(xt.shape)} must have the same shape")
        masked = (xt == self.mask_id).unsqueeze(-1)
        return self.head(self._trunk(self.embed(x0) + masked * self.masked_marker))
