"""Training batches as a stream with a resumable state, whatever the source.

Every rank calls `next_batch()` once per step and gets its rows of the global batch. The
state of each rank goes into the checkpoint (the trainer gathers them); `load_state_dict` gets
the states of all ranks of the run that saved them, so a stream can resume at a different
world size where its source allows it.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch

from edlm_dist.data.errors import DataError


class TrainStream(Protocol):
    def next_batch(self) -> torch.Tensor: ...

    def skipped_records(self) -> int:
        """Bad records skipped so far on this rank (`data.on_error = "skip"`)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, states: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class StepIndexedStream:
    """Batches that are a pure function of the step (in-memory sources, prepared token corpora).

    The state is the next step and the data's fingerprint, the same on every rank and for any
    world size.
    """

    def __init__(self, batch_of_step: Callable[[int], torch.Tensor], fingerprint: str,
                 allow_fingerprint_mismatch: bool = False) -> None:
        self.batch_of_step, self.fingerprint = batch_of_step, fingerprint
        self.allow_fingerprint_mismatch = allow_fingerprint_mismatch
        self.step = 0

    def next_batch(self) -> torch.Tensor:
        batch = self.batch_of_step(self.step)
        self.step += 1
        return batch

    def skipped_records(self) -> int:
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "fingerprint": self.fingerprint}

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        state = states[0]
        check_fingerprint(state["fingerprint"], self.fingerprint, self.allow_fingerprint_mismatch)
        self.step = int(state["step"])

    def close(self) -> None:
        pass


def check_fingerprint(saved: str, current: str, allow: bool) -> None:
    """Refuse to resume on other data than the checkpoint saw, unless explicitly allowed."""
    if saved != current and not allow:
        raise DataError(
            f"the checkpoint was trained on data with fingerprint {saved}, but data.* now gives {current}; "
            f"set data.allow_fingerprint_mismatch=true to resume anyway"
        )


def rows_of_rank(global_batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous rows of a global batch."""
    local = global_batch.shape[0] // world_size
    return global_batch[rank * local : (rank + 1) * local]


def build_train_stream(dataset: Any, *, global_batch: int, rank: int, world_size: int,
                       allow_fingerprint_mismatch: bool = False) -> TrainStream:
    """The training stream of `dataset`: its own streaming one (prepared corpora), or this rank's
    rows of the step-indexed global batches of an in-memory source."""
    if hasattr(dataset.blocks, "train_stream"):
        return dataset.blocks.train_stream(global_batch=global_batch, rank=rank, world_size=world_size)
    return StepIndexedStream(
        lambda step: rows_of_rank(dataset.blocks.batch("train", step, global_batch), rank, world_size),
        dataset.fingerprint,
        allow_fingerprint_mismatch,
    )
