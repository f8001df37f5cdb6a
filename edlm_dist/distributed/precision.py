"""The precision the matmuls run in, from `training.mixed_precision`, by one rule on every device.

bf16 is the cluster path: FSDP2 casts sharded fp32 master weights to bf16 for compute and reduces
gradients in fp32 (`parallelize_transformer`'s MixedPrecisionPolicy); a single process autocasts
to bf16 instead. Only the autocast device type depends on the device. "auto" means bf16 on CUDA
and fp32 on a CPU, where bf16 is slower and is asked for only to test the path. Whatever the
setting, LayerNorm, rotary tables, energies, log-normalisers and sampling noise stay in float32
or float64 (DESIGN.md).
"""

from __future__ import annotations

import contextlib

import torch


def compute_dtype(setting: str, device: torch.device) -> torch.dtype:
    """bfloat16 for "bf16", and for "auto" on CUDA; float32 otherwise."""
    if setting == "bf16" or (setting == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device`'s type when `dtype` is bf16, else no change."""
    if dtype == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
