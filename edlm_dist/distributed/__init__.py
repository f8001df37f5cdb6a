"""Process group, devices and collectives; a single process is world size 1 of the same path."""

from edlm_dist.distributed.env import DistEnv, all_reduce_sum, init_distributed, resolve_device, shutdown

__all__ = ["DistEnv", "all_reduce_sum", "init_distributed", "resolve_device", "shutdown"]
