"""What every model of the package shares, whatever its family: the base class (token layout,
initialisation by rule, parameter and FLOP counts) and the scoring of a causal language model.

A model reads token ids and returns logits over `padded_vocab` columns: the tokenizer's
`vocab_size` ids first (the mask id `mask_id` among them for LLaDA and Dream, right after them
for MDLM), then padding rows of the output layer. Nothing here knows what the logits mean.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from edlm_dist.config.schema import ModelConfig
from edlm_dist.models.init import Init, initialize_parameters


class LanguageModel(nn.Module):
    """Base of every model: `config`, the token layout (`vocab_size`, `mask_id`, `padded_vocab`),
    `reads_time`, the input embedding `embed`, the repeated `blocks` (what parallelisation wraps)
    and `init_rule(name)`, from which `init_weights(seed)` sets every parameter."""

    config: ModelConfig
    vocab_size: int
    mask_id: int
    padded_vocab: int
    reads_time: bool
    embed: nn.Embedding
    blocks: nn.ModuleList

    def init_rule(self, name: str) -> Init:
        """The initialisation of the parameter called `name`."""
        raise NotImplementedError

    def tie_weights(self) -> None:
        """Make the output layer the input embedding's weight when `config.tie_embeddings` (again
        after `to_empty`, which materialises the two as separate tensors outside FSDP)."""
        if self.config.tie_embeddings:
            self.head.weight = self.embed.weight

    def init_weights(self, seed: int = 0) -> None:
        """(Re)initialise every parameter, sharded or not, identically for a given seed."""
        initialize_parameters(self, self.init_rule, seed)

    def lookup_tables(self) -> list[nn.Parameter]:
        """Parameters only indexed, never multiplied (they cost no FLOPs): the input embedding,
        unless the output layer shares it."""
        return [self.embed.weight]

    def num_params(self, exclude_input_embedding: bool = True) -> int:
        """Parameter count (a shared tensor once), by default without the lookup tables."""
        n = sum(p.numel() for p in self.parameters())
        return n - sum(p.numel() for p in self.lookup_tables()) if exclude_input_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 N for the matmuls plus 12 * layers * heads * head_dim * L for attention."""
        cfg = self.config
        return 6.0 * self.num_params() + 12.0 * cfg.n_layers * cfg.n_heads * (cfg.hidden_size // cfg.n_heads) * seq_len

    def check_start_token(self) -> int:
        """The id a causal model reads before the first token: `config.start_token`, by default the
        mask id (absent from data); it must be a row of the input embedding."""
        start = self.mask_id if self.config.start_token < 0 else self.config.start_token
        rows = self.embed.num_embeddings
        if start >= rows:
            raise ValueError(f"model.start_token {self.config.start_token} is not an input id (0..{rows - 1})")
        return start


class CausalLM:
    """Scoring by a causal language model (mixed into a `LanguageModel` that defines
    `_next_token_logits`), over all L positions.

    The input is [s, x0[:, :-1]] with the start token `start_token`, so logits[:, i] predicts
    x0[:, i] from x0[:, :i]. The timestep is never read.
    """

    start_token: int
    vocab_size: int
    reads_time = False

    def _next_token_logits(self, tokens: Tensor) -> Tensor:
        """Logits [B, L, padded_vocab] of the tokens as given: logits[:, i] predicts tokens[:, i + 1]."""
        raise NotImplementedError

    def forward(self, x0: Tensor, next_token: bool = False) -> Tensor:
        """x0 [B, L] data ids -> logits [B, L, padded_vocab], logits[:, i] predicting x0[:, i]; with
        `next_token`, of x0 as given without the start token: logits[:, i] predicts x0[:, i + 1]
        (the convention of Hugging Face's causal LMs). Through the module call, so FSDP2 gathers."""
        if next_token:
            return self._next_token_logits(x0)
        start = torch.full_like(x0[:, :1], self.start_token)
        return self._next_token_logits(torch.cat((start, x0[:, :-1]), dim=1))

    def token_log_probs(self, x0: Tensor) -> Tensor:
        """log p_AR(x0_i | x0_<i) [B, L], float32: log-softmax over the `vocab_size` token columns only
        (computed with autocast off), so each position is a normalised conditional."""
        return self.conditional_log_probs(x0, x0)[0]

    def conditional_log_probs(self, x0: Tensor, *targets: Tensor) -> list[Tensor]:
        """For each of `targets` [B, L]: log p_AR(targets_i | x0_<i) [B, L] float32, from one
        forward over x0 (e.g. the data token at i after a proposal's prefix)."""
        logits = self(x0)
        with torch.autocast(device_type=x0.device.type, enabled=False):
            log_probs = torch.log_softmax(logits[..., : self.vocab_size].float(), dim=-1)
            return [log_probs.gather(-1, target[..., None]).squeeze(-1) for target in targets]

    def log_prob(self, x0: Tensor, valid_mask: Tensor | None = None) -> Tensor:
        """log p_AR(x0) [B]: sum over (valid) positions of `token_log_probs`, so it is a
        normalised joint over V^L sequences."""
        token_lp = self.token_log_probs(x0)
        if valid_mask is not None:
            token_lp = token_lp.masked_fill(~valid_mask, 0.0)
        return token_lp.sum(dim=-1)
