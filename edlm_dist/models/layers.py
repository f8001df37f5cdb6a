"""Small building blocks of the DiT: fp32 LayerNorm, rotary embedding, timestep embedder, adaLN modulation."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias (as in MDLM), computed in float32 for stability under
    autocast; the output is cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        out = F.layer_norm(x.float(), (self.dim,), self.weight.float(), None, self.eps)
        return out.to(x.dtype)


def rotary_tables(seq_len: int, head_dim: int, device: torch.device, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """float32 cos and sin tables [seq_len, head_dim] for rotary embedding (rotate-half layout).

    Computed from the sequence length on every call rather than stored, so a model built on the
    meta device has no buffers to materialise.
    """
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, L, H, D] by the tables [L, D] in float32; returns x's dtype."""
    xf = x.float()
    cos, sin = cos[:, None, :], sin[:, None, :]
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation: x * (1 + scale) + shift."""
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Maps t in [0, 1] to a conditioning vector: sinusoidal features of `time_scale * t` -> MLP -> SiLU.

    t is scaled up (to ~[0, 1000], the DiT range) so the low-frequency features still vary
    over [0, 1]. The trailing SiLU is MDLM's, applied before every adaLN projection.
    """

    def __init__(
        self, cond_dim: int, freq_dim: int = 256, time_scale: float = 1000.0, max_period: float = 10000.0
    ) -> None:
        super().__init__()
        if freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {freq_dim}")
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def frequency_embedding(self, t: Tensor) -> Tensor:
        """[B] -> [B, freq_dim] float32 cos/sin features at geometric frequencies."""
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        args = (self.time_scale * t.float())[:, None] * freqs[None]
        return torch.cat((args.cos(), args.sin()), dim=-1)

    def forward(self, t: Tensor) -> Tensor:
        """[B] -> [B, cond_dim]; the float32 features meet the MLP in its dtype (bf16 under FSDP2)."""
        return F.silu(self.mlp(self.frequency_embedding(t).to(self.mlp[0].weight.dtype)))
