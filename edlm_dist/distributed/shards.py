"""Which part of a sharded parameter a rank holds, so that it can read just that part of a
checkpoint from disk instead of the whole tensor."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def local_rows(param: torch.Tensor) -> tuple[int, int]:
    """The rows start..end-1 of the full tensor that this rank's local part of `param` holds: all
    of them for a plain tensor; for a DTensor sharded on dimension 0 (FSDP2 shards each mesh
    dimension it uses in torch.chunk's way: chunks of ceil(rows / ranks), the last ones shorter or
    empty), this rank's chunk. Other placements than Shard(0) and Replicate are refused."""
    start, end = 0, param.shape[0]
    if not isinstance(param, DTensor):
        return start, end
    mesh = param.device_mesh
    for mesh_dim, placement in enumerate(param.placements):
        if placement.is_replicate():
            continue
        if not placement.is_shard(0):
            raise ValueError(f"cannot locate the rows of a parameter placed {param.placements}")
        chunk = -(-(end - start) // mesh.size(mesh_dim))
        rank = mesh.get_local_rank(mesh_dim)
        start, end = min(start + rank * chunk, end), min(start + (rank + 1) * chunk, end)
    if param.to_local().shape[0] != end - start:
        raise ValueError(f"local part of {tuple(param.shape)} has {param.to_local().shape[0]} rows, not {end - start}")
    return start, end
