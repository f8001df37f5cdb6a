"""AdamW and its learning-rate schedule: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math

import torch

from edlm_dist.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm weights and biases are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def lr_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Factor on the peak lr at optimizer step `step` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of `cfg` over `total_steps`, at optimizer step `step` (where a resumed run is)."""
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, cfg, total_steps), last_epoch=step - 1
    )


def follow_config(optimizer: torch.optim.AdamW, cfg: OptimConfig) -> None:
    """Give a restored optimizer the hyperparameters of `cfg`: a checkpoint brings back those it
    was saved with, and a resumed run follows its config (e.g. betas changed after a divergence)."""
    for group, decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):
        group.update(betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=decay)
