"""Process group, device mesh, parallelisation (AC -> compile -> FSDP2) and pre-emption signals.

A single process is world size 1 of the same path: no process group, no mesh, no sharding.
"""

from edlm_dist.distributed.candidates import RankPool
from edlm_dist.distributed.env import (
    DistEnv,
    all_gather_object,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    init_distributed,
    resolve_device,
    shutdown,
)
from edlm_dist.distributed.parallelize import build_mesh, parallelize_transformer, reshard, set_gradient_sync
from edlm_dist.distributed.signals import PreemptionWatcher

__all__ = [
    "DistEnv",
    "PreemptionWatcher",
    "RankPool",
    "all_gather_object",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "build_mesh",
    "init_distributed",
    "parallelize_transformer",
    "reshard",
    "resolve_device",
    "set_gradient_sync",
    "shutdown",
]
