"""Parallelisation of each model family (its plan, `PLANS`), in torchtitan's fixed order:
activation checkpointing -> per-block torch.compile -> FSDP2 `fully_shard` per block and at the
root. `parallelize_model` applies the plan of a model's family.

Applied to a model still on the meta device; the caller then materialises it (`to_empty`)
and initialises the weights, so no rank ever holds the full model.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import checkpoint

from edlm_dist.config import ConfigError, ParallelConfig


def mesh_shape(cfg: ParallelConfig, world_size: int) -> tuple[int, int]:
    """(replicas, ranks sharding each) of the data-parallel mesh at `world_size`: `dp_shard = -1`
    takes every rank that `dp_replicate` leaves; a product other than the world size is refused."""
    shard = cfg.dp_shard if cfg.dp_shard != -1 else world_size // cfg.dp_replicate
    if cfg.dp_replicate * shard != world_size:
        raise ConfigError(
            f"parallel.dp_replicate ({cfg.dp_replicate}) x parallel.dp_shard ({cfg.dp_shard}) "
            f"must equal the world size ({world_size})"
        )
    return cfg.dp_replicate, shard


def build_mesh(cfg: ParallelConfig, world_size: int, device_type: str) -> DeviceMesh | None:
    """The data-parallel mesh `dp_replicate x dp_shard` (None in a single process without a
    process group; a process group of one rank, as torchrun at one process makes, gets a 1-rank
    mesh: the cluster path on one device).

    One replica of `world_size` shards is plain FSDP; `dp_shard = 1` replicates only (DDP-like);
    anything in between is HSDP.
    """
    if world_size == 1 and not dist.is_initialized():
        return None
    _, shard = mesh_shape(cfg, world_size)
    if cfg.dp_replicate == 1:
        return init_device_mesh(device_type, (shard,), mesh_dim_names=("dp_shard",))
    return init_device_mesh(device_type, (cfg.dp_replicate, shard), mesh_dim_names=("dp_replicate", "dp_shard"))


def _checkpointed(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(forward)
    def run(*args: torch.Tensor) -> torch.Tensor:
        return checkpoint(forward, *args, use_reentrant=False)

    return run


def apply_activation_checkpointing(blocks: nn.ModuleList, mode: str, every: int) -> None:
    """Recompute block activations in backward: every block ("full") or every n-th ("selective").

    The block's forward is wrapped in place, so parameter names (and checkpoints) do not change.
    """
    if mode == "none":
        return
    for index, block in enumerate(blocks):
        if mode == "full" or index % every == 0:
            block.forward = _checkpointed(block.forward)


def apply_compile(blocks: nn.ModuleList) -> None:
    """torch.compile each block in place (repeated blocks share one compiled graph)."""
    for block in blocks:
        block.compile()


def apply_fsdp(
    model: nn.Module, blocks: nn.ModuleList, mesh: DeviceMesh, param_dtype: torch.dtype, reshard_after_forward: bool,
    *, cast_block_inputs: bool = True,
) -> None:
    """Shard each block, then the root (embeddings, conditioning, output layer), with FSDP2.

    Parameters are float32 masters, gathered in `param_dtype` for compute (bf16 on the cluster
    path); gradients are reduced in float32 whatever the compute dtype. The last block keeps its
    parameters gathered after forward, since backward needs them at once. Without
    `cast_block_inputs` a block's float inputs keep their dtype (rotary tables stay float32).
    """
    # Our logits come out of a biased Linear on [B, L, H], which autograd counts as a view;
    # nothing modifies them in place, so FSDP2's warning about views is noise here.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                  cast_forward_inputs=cast_block_inputs)
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward and not last)
    # the root's float input is the time t, whose sinusoidal features are computed in float32:
    # it is not rounded to bf16 on the way in
    root_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    fully_shard(model, mesh=mesh, mp_policy=root_policy, reshard_after_forward=reshard_after_forward)


def parallelize_transformer(
    model: nn.Module, cfg: ParallelConfig, mesh: DeviceMesh | None, param_dtype: torch.dtype
) -> None:
    """The dit family's plan: parallelise a DiT / AR transformer / energy network in place."""
    apply_activation_checkpointing(model.blocks, cfg.activation_checkpoint, cfg.ac_every)
    if cfg.compile:
        apply_compile(model.blocks)
    if mesh is not None:
        apply_fsdp(model, model.blocks, mesh, param_dtype, cfg.reshard_after_forward)


def parallelize_decoder(
    model: nn.Module, cfg: ParallelConfig, mesh: DeviceMesh | None, param_dtype: torch.dtype
) -> None:
    """The plan of the llama and gpt2 families: as the DiT's, except that blocks take their inputs
    as they come: the hidden states leave the root's embedding in the compute dtype already, and
    the rotary tables stay float32 (Llama, LLaDA and Dream build them in float32). A tied output
    layer shares the root's unit with the embedding."""
    apply_activation_checkpointing(model.blocks, cfg.activation_checkpoint, cfg.ac_every)
    if cfg.compile:
        apply_compile(model.blocks)
    if mesh is not None:
        apply_fsdp(model, model.blocks, mesh, param_dtype, cfg.reshard_after_forward, cast_block_inputs=False)


Plan = Callable[[nn.Module, ParallelConfig, DeviceMesh | None, torch.dtype], None]
PLANS: dict[str, Plan] = {"dit": parallelize_transformer, "llama": parallelize_decoder, "gpt2": parallelize_decoder}


def parallelize_model(model: nn.Module, cfg: ParallelConfig, mesh: DeviceMesh | None, param_dtype: torch.dtype) -> None:
    """Parallelise `model` in place with the plan of its family (`model.config.family`)."""
    PLANS[model.config.family](model, cfg, mesh, param_dtype)


def reshard(model: nn.Module) -> None:
    """Put every FSDP-managed parameter back in its sharded form (after a forward that left some
    gathered), so code that walks the parameters sees the sharded DTensors."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Turn the gradient reduce-scatter/all-reduce of FSDP off for all but the last micro-batch."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)
