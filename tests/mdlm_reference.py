"""An independent statement of MDLM's two backbones, written for the tests from MDLM's published
architecture (kuleshov-group/mdlm, `models/dit.py` and `models/autoregressive.py`), with its
module and parameter names, so that a strict `load_state_dict` checks every key and buffer.

Plain PyTorch in float32 (MDLM uses flash-attn's kernels and bf16 autocast on GPUs): LayerNorm
without bias, its weight applied after normalising; rotary embedding on q and k (not v) in the
rotate-half layout; adaLN-zero blocks `x + gate * f(norm(x) * (1 + scale) + shift)` conditioned
on `silu(sigma_map(sigma))`; an output layer over the vocabulary including the mask. The AR has
no time embedder and no adaLN, attends causally, and returns log-probabilities with the mask
column at -1000.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float = 10_000) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)))

    def forward(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        angles = torch.outer(torch.arange(length).float(), self.inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # [L, head_dim]
        return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, H, D] rotated position by position (rotate-half pairs i and i + D/2)."""
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[None, :, None, :] + turned * sin[None, :, None, :]


class LayerNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), [self.dim]) * self.weight[None, None, :]


class TimestepEmbedder(nn.Module):
    def __init__(self, cond_dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.freq_dim = freq_dim

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = sigma[:, None].float() * freqs[None]
        return self.mlp(torch.cat((torch.cos(args), torch.sin(args)), dim=-1))


class EmbeddingLayer(nn.Module):
    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(vocab, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding[ids]


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, cond_dim: int, causal: bool) -> None:
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        if not causal:
            self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], c: torch.Tensor | None) -> torch.Tensor:
        b, length, dim = x.shape
        if c is None:  # the AR: no modulation, unit gates
            shift_a = scale_a = shift_m = scale_m = torch.zeros(1, 1, dim)
            gate_a = gate_m = torch.ones(1, 1, dim)
        else:
            shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        h = self.norm1(x) * (1 + scale_a) + shift_a
        q, k, v = self.attn_qkv(h).view(b, length, 3, self.n_heads, -1).unbind(dim=2)
        q, k = rotate(q, *cos_sin), rotate(k, *cos_sin)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=self.causal)
        x = x + gate_a * self.attn_out(att.transpose(1, 2).reshape(b, length, dim))
        return x + gate_m * self.mlp(self.norm2(x) * (1 + scale_m) + shift_m)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, vocab: int, cond_dim: int, causal: bool) -> None:
        super().__init__()
        self.norm_final = LayerNorm(dim)
        self.linear = nn.Linear(dim, vocab)
        if not causal:
            self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if c is None:
            return self.linear(self.norm_final(x))
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class Backbone(nn.Module):
    """MDLM's DIT (`causal=False`: forward(ids, sigma) -> logits [B, L, vocab]) or AR
    (`causal=True`: forward(ids) -> log-probabilities, the mask column at -1000)."""

    def __init__(self, vocab: int, dim: int, n_blocks: int, n_heads: int, cond_dim: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.vocab_embed = EmbeddingLayer(dim, vocab)
        if not causal:
            self.sigma_map = TimestepEmbedder(cond_dim)
        self.rotary_emb = Rotary(dim // n_heads)
        self.blocks = nn.ModuleList(Block(dim, n_heads, cond_dim, causal) for _ in range(n_blocks))
        self.output_layer = FinalLayer(dim, vocab, cond_dim, causal)

    def forward(self, ids: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        x = self.vocab_embed(ids)
        c = None if self.causal else F.silu(self.sigma_map(sigma))
        cos_sin = self.rotary_emb(ids.shape[1])
        for block in self.blocks:
            x = block(x, cos_sin, c)
        out = self.output_layer(x, c)
        if not self.causal:
            return out
        out[:, :, -1] = -1000.0  # the mask index is the last id
        return out.log_softmax(-1)


def random_backbone(causal: bool, seed: int, *, vocab: int = 50258, hidden: int = 32, n_blocks: int = 2, n_heads: int = 4,
                    cond_dim: int = 16) -> Backbone:
    """A backbone with every parameter random (adaLN included, so no term vanishes)."""
    torch.manual_seed(seed)
    model = Backbone(vocab, hidden, n_blocks, n_heads, cond_dim, causal)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * (0.5 if "norm" in name else 0.1) + (1.0 if "norm" in name else 0.0))
    return model.eval()
