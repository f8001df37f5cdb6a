"""Training loaders: the batches of one rank as a stream with a resumable state.

Every rank calls `next_batch()` once per step and gets a `Batch` of its rows of the global
batch. The state of each rank goes into the checkpoint (the trainer gathers them);
`load_state_dict` gets the states of all ranks of the run that saved them, so a loader can
resume at a different world size where its source allows it. Each kind of source has its own
subclass: `StepIndexedLoader` here (in-memory sources), `PackedLoader` (pre-tokenised shards,
`data.packed`) and `RawLoader` (raw text tokenised on the fly, `data.raw_stream`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import get_worker_info

from edlm_dist.data.batches import Batch, BatchPlan
from edlm_dist.data.errors import DataError


def worker_slot() -> tuple[int, int]:
    """(worker id, number of workers) of the dataloader worker we run in; (0, 1) outside one."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def next_from_workers(batches: Iterator[torch.Tensor]) -> torch.Tensor:
    """The next batch of a DataLoader; a DataError raised in one of its worker processes is raised
    again as the one-line error it was (torch re-raises it with the worker's whole traceback as its
    message, the original line last)."""
    try:
        return next(batches)
    except DataError as err:
        lines = str(err).splitlines()
        prefix = f"{DataError.__module__}.{DataError.__qualname__}: "
        original = [line[len(prefix):] for line in lines if line.startswith(prefix)]
        if not (lines[0].startswith("Caught DataError in DataLoader worker") and original):
            raise
        raise DataError(original[-1]) from err


def check_fingerprint(saved: str, current: str, allow: bool) -> None:
    """Refuse to resume on other data than the checkpoint saw, unless explicitly allowed."""
    if saved != current and not allow:
        raise DataError(
            f"the checkpoint was trained on data with fingerprint {saved}, but data.* now gives {current}; "
            f"set data.allow_fingerprint_mismatch=true to resume anyway"
        )


class TrainLoader(ABC):
    """One rank's training batches, step after step, resumable from the states of all ranks."""

    def __init__(self, plan: BatchPlan) -> None:
        self.plan = plan

    @abstractmethod
    def next_batch(self) -> Batch:
        """This rank's rows of the next step's global batch."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """This rank's position, to be saved with the checkpoint."""

    @abstractmethod
    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        """Continue from the saved states of every rank of the run that saved them."""

    def skipped_records(self) -> int:
        """Bad records skipped so far on this rank (`data.on_error = "skip"`)."""
        return 0

    def close(self) -> None:
        """Stop any dataloader workers."""


class StepIndexedLoader(TrainLoader):
    """Batches that are a pure function of the step (in-memory sources).

    The state is the next step and the data's fingerprint, the same on every rank and for any
    world size.
    """

    def __init__(self, plan: BatchPlan, global_batch_of_step: Callable[[int], torch.Tensor], fingerprint: str,
                 allow_fingerprint_mismatch: bool = False) -> None:
        super().__init__(plan)
        self.global_batch_of_step, self.fingerprint = global_batch_of_step, fingerprint
        self.allow_fingerprint_mismatch = allow_fingerprint_mismatch
        self.step = 0

    def next_batch(self) -> Batch:
        batch = self.plan.batch(self.global_batch_of_step(self.step), self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "fingerprint": self.fingerprint}

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        state = states[0]
        check_fingerprint(state["fingerprint"], self.fingerprint, self.allow_fingerprint_mismatch)
        self.step = int(state["step"])
