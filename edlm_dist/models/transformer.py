"""DiT backbone (MDLM-style) shared by the bidirectional diffusion model and the causal AR baseline.

Initialisation (`init_weights(seed)`, see `init_rule`): N(0, 0.02) for embeddings and linears,
with the two residual-branch output projections (attention out, MLP down) scaled to
N(0, 0.02 / sqrt(2 * n_layers)) as in GPT-2; zeros for biases, the adaLN modulations and the
output layer; ones for LayerNorm weights. So at init every block is the identity (adaLN-zero
gates) and all logits are zero. Each parameter is drawn from a generator keyed by (seed, name),
so the weights do not depend on the device or on how the model is sharded. The constructor
initialises with seed 0 unless the model is built on the meta device; there the caller
materialises with `to_empty()` and then calls `init_weights(seed)` (as `build_model` does).
No buffers exist: the rotary tables are recomputed from the sequence length in forward.
"""

from __future__ import annotations

import math
import torch
import torch.nn as nn
from torch import Tensor

from edlm_dist.config.schema import ModelConfig, padded_vocab_size
from edlm_dist.models.attention import attention
from edlm_dist.models.base import CausalLM, LanguageModel
from edlm_dist.models.init import Init
from edlm_dist.models.layers import EnergyHead, LayerNorm, energy_init_rule, TimestepEmbedder, apply_rotary, modulate, rotary_tables

INIT_STD = 0.02


class DiTBlock(nn.Module):
    """Pre-LN transformer block with adaLN-zero conditioning and rotary attention.

    `forward(x, c, cos, sin)`: x [B, L, hidden], c [B, cond_dim], rotary tables [L, head_dim].
    """

    def __init__(
        self, hidden: int, n_heads: int, cond_dim: int, mlp_ratio: int, dropout: float, causal: bool
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.norm1 = LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.attn_out = nn.Linear(hidden, hidden, bias=False)
        self.norm2 = LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_ratio * hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * hidden, hidden),
        )
        self.dropout = nn.Dropout(dropout)
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * hidden)

    def forward(self, x: Tensor, c: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        batch, length, hidden = x.shape
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)

        h = modulate(self.norm1(x), shift_a, scale_a)
        q, k, v = self.qkv(h).view(batch, length, 3, self.n_heads, -1).unbind(dim=2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        h = attention(q, k, v, causal=self.causal).reshape(batch, length, hidden)
        x = x + gate_a * self.dropout(self.attn_out(h))

        h = self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x + gate_m * self.dropout(h)


class FinalLayer(nn.Module):
    """LayerNorm + adaLN (shift, scale) + output projection to the padded vocabulary."""

    def __init__(self, hidden: int, cond_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm(hidden)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden)
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class Transformer(LanguageModel):
    """DiT backbone over V + 1 input tokens (data tokens and the mask id V), returning raw logits
    [B, L, padded_vocab]. Input and output embeddings are untied.

    Subclasses choose `causal` and whether the timestep is read (`reads_time`); when it is
    not, the conditioning is the embedding of t = 0 for every example (MDLM's convention).
    """

    reads_time: bool

    def __init__(self, config: ModelConfig, vocab_size: int, *, causal: bool) -> None:
        super().__init__()
        if config.hidden_size % config.n_heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of n_heads {config.n_heads}")
        self.config = config
        self.vocab_size = vocab_size
        self.mask_id = vocab_size
        self.padded_vocab = padded_vocab_size(vocab_size)
        self.causal = causal
        self.head_dim = config.hidden_size // config.n_heads
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for rotary embedding")

        self.embed = nn.Embedding(vocab_size + 1, config.hidden_size)
        self.time_embed = TimestepEmbedder(config.cond_dim)
        self.blocks = nn.ModuleList(
            DiTBlock(config.hidden_size, config.n_heads, config.cond_dim, config.mlp_ratio, config.dropout, causal)
            for _ in range(config.n_layers)
        )
        self._build_output()
        if self.embed.weight.device.type != "meta":
            self.init_weights()

    def _build_output(self) -> None:
        """The output module(s) on top of the blocks: here the vocabulary projection `final`."""
        self.final = FinalLayer(self.config.hidden_size, self.config.cond_dim, self.padded_vocab)

    def init_rule(self, name: str) -> Init:
        """The initialisation of the parameter called `name` (scheme in the module docstring)."""
        if "adaLN_modulation" in name or name.startswith("final.linear") or name.endswith(".bias"):
            return Init("zeros")
        if "norm" in name:
            return Init("ones")
        if name.startswith("blocks.") and name.endswith(("attn_out.weight", "mlp.2.weight")):
            return Init("normal", INIT_STD / math.sqrt(2 * self.config.n_layers))
        return Init("normal", INIT_STD)

    def _trunk(self, x: Tensor, t: Tensor | None) -> tuple[Tensor, Tensor]:
        """The blocks over input embeddings x [B, L, hidden] at times t [B] (None = t 0):
        final hidden states [B, L, hidden] and the conditioning vector c [B, cond_dim]."""
        batch, length, _ = x.shape
        if t is None:
            t = torch.zeros(batch, device=x.device)
        c = self.time_embed(t.expand(batch))
        cos, sin = rotary_tables(length, self.head_dim, x.device)
        for block in self.blocks:
            x = block(x, c, cos, sin)
        return x, c

    def _logits(self, tokens: Tensor, t: Tensor | None) -> Tensor:
        """Backbone pass: tokens [B, L] and t [B] (None = t 0) -> logits [B, L, padded_vocab]."""
        return self.final(*self._trunk(self.embed(tokens), t))


class DiT(Transformer):
    """Bidirectional denoiser for masked diffusion: `forward(xt, t) -> raw logits`.

    `reads_time` mirrors `config.time_conditioning`; when False, t is ignored, so a sampler
    may reuse outputs across steps where xt did not change.
    """

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__(config, vocab_size, causal=False)
        self.reads_time = config.time_conditioning

    def forward(self, xt: Tensor, t: Tensor | None = None) -> Tensor:
        """xt [B, L] over V + 1 ids, t [B] (or a scalar) in [0, 1] -> logits [B, L, padded_vocab]."""
        if not self.reads_time:
            return self._logits(xt, None)
        if t is None:
            raise ValueError("this DiT is time-conditioned: pass t")
        return self._logits(xt, t)


class ARTransformer(CausalLM, Transformer):
    """Causal autoregressive baseline scoring all L positions (`CausalLM`).

    The start token (`config.start_token`) is by default the mask id V, absent from data; MDLM's
    AR reads BOS. The timestep is never read.
    """

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__(config, vocab_size, causal=True)
        self.reads_time = False
        self.start_token = self.check_start_token()

    def _next_token_logits(self, tokens: Tensor) -> Tensor:
        return self._logits(tokens, None)


class EnergyNet(Transformer):
    """EDLM-NCE residual energy E(x0, xt, t): a bidirectional DiT reading the candidate x0, told
    which positions were masked in xt, mean-pooled to one scalar per sequence.

    The input at position i is embed(x0_i), plus the learned vector `masked_marker` where xt_i
    is the mask. `embed`, `time_embed` and `blocks` share names and shapes with the DiT, so a
    trained MDLM initialises them; `masked_marker` and the head's output layer start at zero,
    so the initial energy is 0 and the initial joint p_theta exp(-E) / Z is the MDLM itself.
    `reads_time` mirrors `config.time_conditioning`.
    """

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__(config, vocab_size, causal=False)
        self.reads_time = config.time_conditioning

    def _build_output(self) -> None:
        self.masked_marker = nn.Parameter(torch.empty(self.config.hidden_size))
        self.head = EnergyHead(self.config.hidden_size)

    def init_rule(self, name: str) -> Init:
        return energy_init_rule(name, self.config.hidden_size) or super().init_rule(name)

    def forward(self, x0: Tensor, xt: Tensor, t: Tensor | None = None) -> Tensor:
        """x0 [B, L] data ids, xt [B, L] (mask id = vocab size), t [B] -> energies [B] (fp32)."""
        if x0.shape != xt.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and xt {tuple(xt.shape)} must have the same shape")
        if self.reads_time and t is None:
            raise ValueError("this energy is time-conditioned: pass t")
        masked = (xt == self.mask_id).unsqueeze(-1)
        x = self.embed(x0) + masked * self.masked_marker
        hidden, _ = self._trunk(x, t if self.reads_time else None)
        return self.head(hidden)
