"""The process's place in the job (rank, world size, device), initialised from torchrun's env."""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from edlm_dist.config import RuntimeConfig


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """"auto" picks this rank's CUDA device when there is one, else the CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device = 'cuda' but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(
    device_preference: str = "auto", backend: str = "auto", timeout_s: float = 600
) -> DistEnv:
    """Join the process group that torchrun describes (backend "auto": NCCL on CUDA, gloo on CPU).

    Under torchrun this happens at any world size, one rank included (the cluster path on one
    device: FSDP2 on a 1-rank mesh); without torchrun's variables it is world size 1 and no
    process group is created. A collective that waits longer than `timeout_s` fails instead of
    hanging the job.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ and "MASTER_ADDR" in os.environ
    if (world_size > 1 or under_torchrun) and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return DistEnv(rank, world_size, local_rank, device)


def init_runtime(runtime: RuntimeConfig) -> DistEnv:
    """`init_distributed` as a program's [runtime] says: how train, sample and eval all start."""
    return init_distributed(runtime.device, runtime.backend, runtime.collective_timeout_s)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks in place (a no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum of `tensor` over all ranks in place (a no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (a one-element list in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


_T = TypeVar("_T")


class RankZeroError(RuntimeError):
    """The error rank 0 met in work that only it does, raised with its message on the other ranks."""

    user_error = True


def on_main_rank(fn: Callable[[], _T], is_main: bool) -> _T:
    """`fn()` run on rank 0 only (work on shared files that must happen once, such as checking a
    run or output folder), its result on every rank. When it raises, rank 0 raises that error and
    every other rank a RankZeroError with its message, so no rank waits at a collective for one
    that has stopped."""
    result, error = None, None
    if is_main:
        try:
            result = fn()
        except BaseException as err:  # shared with the other ranks first, then raised
            error = err
    shared, message = all_gather_object((result, None if error is None else str(error) or type(error).__name__))[0]
    if error is not None:
        raise error
    if message is not None:
        raise RankZeroError(message)
    return shared


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if any.

    Unreachable objects that hold process groups or their tensors (FSDP modules, DTensors in
    reference cycles) are collected first, while the interpreter is fully alive: left to
    interpreter teardown, gloo's worker threads can abort the process at exit.
    """
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
