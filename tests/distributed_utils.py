"""Running test functions on several CPU processes (gloo), as torchrun would start them."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1",
    )
    import torch

    from edlm_dist.distributed import shutdown

    torch.set_num_threads(1)
    try:
        fn(*args)
    finally:
        shutdown()
    # Success: skip interpreter teardown, where gloo's threads occasionally abort the process
    # after the work is done (a failure still exits through spawn's error reporting above).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any) -> None:
    """Run `fn(*args)` on `world_size` spawned processes; any failure fails the caller."""
    mp.spawn(_worker, args=(world_size, free_port(), fn, args), nprocs=world_size, join=True)
