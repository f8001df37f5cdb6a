"""Process group, device mesh, parallelisation (AC -> compile -> FSDP2), pre-emption signals and
the heartbeat that names a stuck rank.

A single process is world size 1 of the same path: no process group, no mesh, no sharding.
"""

from edlm_dist.distributed.candidates import RankPool
from edlm_dist.distributed.env import (
    DistEnv,
    RankZeroError,
    all_gather_object,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    init_distributed,
    init_runtime,
    on_main_rank,
    resolve_device,
    shutdown,
)
from edlm_dist.distributed.finite import first_nonfinite
from edlm_dist.distributed.heartbeat import CollectiveError, Heartbeat, Watchdog, is_collective_failure
from edlm_dist.distributed.precision import autocast, compute_dtype
from edlm_dist.distributed.parallelize import (
    PLANS,
    build_mesh,
    parallelize_model,
    parallelize_transformer,
    reshard,
    set_gradient_sync,
)
from edlm_dist.distributed.shards import local_rows
from edlm_dist.distributed.signals import PreemptionWatcher

__all__ = [
    "PLANS",
    "CollectiveError",
    "DistEnv",
    "Heartbeat",
    "PreemptionWatcher",
    "RankPool",
    "RankZeroError",
    "Watchdog",
    "all_gather_object",
    "autocast",
    "compute_dtype",
    "first_nonfinite",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "build_mesh",
    "init_distributed",
    "init_runtime",
    "is_collective_failure",
    "local_rows",
    "on_main_rank",
    "parallelize_model",
    "parallelize_transformer",
    "reshard",
    "resolve_device",
    "set_gradient_sync",
    "shutdown",
]
