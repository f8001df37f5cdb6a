"""Small building blocks: fp32 LayerNorm and RMSNorm, rotary embedding (with Llama 3's frequency
scaling), the DiT's timestep embedder and adaLN modulation."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edlm_dist.models.init import Init


class LayerNorm(nn.Module):
    """LayerNorm with a weight and, with `bias`, a bias (MDLM has none, GPT-2 has one), computed in
    float32 for stability under autocast; the output is cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.float()
        out = F.layer_norm(x.float(), (self.dim,), self.weight.float(), bias, self.eps)
        return out.to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm as Llama, Qwen2, LLaDA and Dream compute it: x / sqrt(mean(x^2) + eps) in float32,
    cast back to the input dtype, then times the weight (in the weight's dtype)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_frequencies(head_dim: int, theta: float, device: torch.device, scaling: str = "none", factor: float = 8.0,
                     low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                     original_max_positions: int = 8192) -> Tensor:
    """The float32 rotary frequencies 1 / theta^(2i / head_dim) [head_dim / 2] of Llama-family
    models; `scaling` "llama3" applies Llama 3.1's rescaling: wavelengths longer than
    original_max_positions / low_freq_factor are divided by `factor`, those shorter than
    original_max_positions / high_freq_factor kept, and those between interpolated smoothly."""
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    if scaling == "none":
        return inv_freq
    if scaling != "llama3":
        raise ValueError(f"unknown rotary scaling {scaling!r}; expected 'none' or 'llama3'")
    wavelength = 2 * math.pi / inv_freq
    low_freq_wavelength = original_max_positions / low_freq_factor
    high_freq_wavelength = original_max_positions / high_freq_factor
    smooth = (original_max_positions / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelength > low_freq_wavelength, inv_freq / factor, inv_freq)
    between = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
    return torch.where(between, smoothed, scaled)


def rotary_tables_of(inv_freq: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """float32 cos and sin tables [seq_len, 2 * len(inv_freq)] (rotate-half layout) of positions
    0..seq_len-1 at the frequencies `inv_freq`."""
    angles = torch.outer(torch.arange(seq_len, device=inv_freq.device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotary_tables(seq_len: int, head_dim: int, device: torch.device, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """The DiT's float32 cos and sin tables [seq_len, head_dim] for rotary embedding (rotate-half
    layout), at frequencies base^(-2i / head_dim).

    Computed from the sequence length on every call rather than stored, so a model built on the
    meta device has no buffers to materialise.
    """
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    return rotary_tables_of(inv_freq, seq_len)


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


def energy_init_rule(name: str, hidden: int) -> Init | None:
    """The initialisation of an energy network's own parameters, None for the backbone's: the
    `masked_marker` and the head's output layer at zero (the initial energy is 0, the initial
    joint the denoiser it starts from), the head's projection at unit-scale features, so the
    zero output layer learns at once."""
    if name == "masked_marker" or name.startswith("head.out"):
        return Init("zeros")
    if name == "head.proj.weight":
        return Init("normal", 1.0 / math.sqrt(hidden))
    return None


class EnergyHead(nn.Module):
    """Mean over positions of the final hidden states -> LayerNorm -> MLP -> one scalar [B].

    Computed in float32 whatever the parameter dtype (bf16 under FSDP mixed precision) or
    autocast: energies are compared across candidates a few nats apart.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = LayerNorm(hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            pooled = self.norm(x.float().mean(dim=1))
            h = F.gelu(F.linear(pooled, self.proj.weight.float(), self.proj.bias.float()), approximate="tanh")
            return F.linear(h, self.out.weight.float(), self.out.bias.float()).squeeze(-1)
