"""Training batches and how they split over ranks and micro-batches.

A step's global batch has `global_batch` rows; rank r of R owns the contiguous global rows
[r * B/R, (r + 1) * B/R) and splits them into micro-batches for gradient accumulation. Every
loader yields `Batch`es that say which global rows they hold, so the trainer keys each row's
noise by its global index and never re-derives the rank slice by arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from edlm_dist.config import ConfigError, TrainingConfig
from edlm_dist.data.errors import DataError


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch splits: `world_size` ranks, each `accum_steps` micro-batches of
    `micro` rows (`micro` 0: one micro-batch of the whole per-rank batch). Every divisibility
    rule lives here."""

    global_batch: int
    world_size: int = 1
    rank: int = 0
    micro: int = 0

    def __post_init__(self) -> None:
        if self.global_batch < 1:
            raise ValueError(f"global_batch = {self.global_batch} < 1")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size = {self.world_size})")
        if self.global_batch % self.world_size:
            raise DataError(f"the global batch {self.global_batch} does not split evenly over {self.world_size} ranks")
        if self.micro == 0:
            object.__setattr__(self, "micro", self.local_batch)
        if self.micro < 1 or self.local_batch % self.micro:
            raise DataError(f"the micro-batch {self.micro} does not divide the per-rank batch {self.local_batch}")

    @classmethod
    def from_config(cls, training: TrainingConfig, world_size: int, rank: int) -> BatchPlan:
        """The plan of `[training]` at this world size; a batch that does not split names its keys."""
        try:
            return cls(training.global_batch_size, world_size, rank, training.micro_batch_size)
        except DataError as err:
            raise ConfigError(f"training.global_batch_size = {training.global_batch_size}, training.micro_batch_size = "
                              f"{training.micro_batch_size} at world size {world_size}: {err}") from None

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world_size

    @property
    def accum_steps(self) -> int:
        return self.local_batch // self.micro

    @property
    def rows(self) -> range:
        """The global rows this rank owns."""
        return range(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)

    def batch(self, global_tokens: torch.Tensor, step: int) -> Batch:
        """This rank's `Batch` of a whole global batch of tokens [global_batch, L]."""
        return Batch(global_tokens[self.rows.start : self.rows.stop], self.rows, step, self.global_batch)


@dataclass(frozen=True)
class Batch:
    """Rows of the global batch of step `step`: `tokens` [len(rows), L] holds global rows `rows`
    of a global batch of `global_size` rows."""

    tokens: torch.Tensor
    rows: range
    step: int
    global_size: int

    def __post_init__(self) -> None:
        if self.tokens.shape[0] != len(self.rows):
            raise ValueError(f"{self.tokens.shape[0]} token rows for the {len(self.rows)} global rows {self.rows}")

    def to(self, device: torch.device) -> Batch:
        return Batch(self.tokens.to(device, non_blocking=True), self.rows, self.step, self.global_size)

    def split(self, size: int) -> Iterator[Batch]:
        """Consecutive sub-batches of `size` rows (micro-batches)."""
        for start in range(0, len(self.rows), size):
            yield Batch(self.tokens[start : start + size], self.rows[start : start + size], self.step, self.global_size)
