"""EDLM importance sampling with the k candidates of every step spread over the ranks.

Each rank draws and scores k / world_size candidates per sequence; the energies are
all-gathered (rank-major: rank r holds global candidates r * k_local ... ), every rank makes
the same choice from the shared generator, and the chosen sequence is assembled from the rank
that holds it with one all-reduce of masked contributions (one collective for the whole batch,
whichever ranks own the choices).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class RankPool:
    """A `CandidatePool` over the ranks of the default process group (gloo or NCCL)."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError("RankPool needs a process group (run under torchrun)")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def local_count(self, num_candidates: int) -> int:
        if num_candidates % self.world_size:
            raise ValueError(
                f"num_candidates ({num_candidates}) must be divisible by the world size ({self.world_size}) "
                f"in candidates mode"
            )
        return num_candidates // self.world_size

    def gather(self, energies: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(energies) for _ in range(self.world_size)]
        dist.all_gather(parts, energies.contiguous())
        return torch.cat(parts, dim=1)

    def select(self, candidates: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        batch, k_local, _ = candidates.shape
        owner, index = choice // k_local, choice % k_local
        mine = candidates[torch.arange(batch, device=candidates.device), index]
        chosen = torch.where((owner == self.rank)[:, None], mine, torch.zeros_like(mine))
        dist.all_reduce(chosen, op=dist.ReduceOp.SUM)
        return chosen
