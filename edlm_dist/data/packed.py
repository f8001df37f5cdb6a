"""Pre-tokenised corpora read as fixed-length blocks in a deterministic global order.

The corpus's token stream (each document followed by one EOS) is cut into blocks of
`seq_len - 2` tokens, each framed by EOS (EOS doubles as BOS), MDLM's "wrap" packing. Every
epoch visits the blocks in a permutation that is a function of (seed, epoch), and global step g
reads a fixed slice of it; each rank takes its rows of the `BatchPlan`. A batch is thus a pure
function of (seed, step, rank layout) and the only state is the next step, which does not
depend on the number of ranks or dataloader workers: a run resumed at another layout continues
with no block skipped or repeated.
"""

from __future__ import annotations

from itertools import count
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from edlm_dist.data.batches import Batch, BatchPlan
from edlm_dist.data.corpus_reader import TokenCorpus
from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.loaders import TrainLoader, next_from_workers, worker_slot
from edlm_dist.diffusion.noise import keyed_generator


class PackedBlocks(IterableDataset):
    """This rank's rows (`plan`) of global steps `start_step`, `start_step + 1`, ... (endless).

    Block k is `[EOS] + stream[k*(L-2) : (k+1)*(L-2)] + [EOS]` for k < num_blocks =
    length // (L-2); the tail of the stream that does not fill a block is never read. Epoch e
    orders the blocks by `torch.randperm(num_blocks)` drawn from keyed_generator(seed, "blocks",
    e); step g reads positions [(g mod S)*G, (g mod S + 1)*G) of epoch g // S, with G the global
    batch and S = num_blocks // G the steps per epoch, so the last num_blocks - S*G positions of
    each epoch's permutation are not used in that epoch (other blocks land there next epoch).

    Under a DataLoader with W workers, worker w yields the steps g with (g - first) % W == w
    (`first` being the step the iteration started at); with `batch_size=None` the loader's
    round-robin then returns the steps in order.

    State: `{"step", "seed", "seq_len", "global_batch", "fingerprint"}`, "step" being the next
    global step this object will produce. Iterating in the main process advances it; copies in
    worker processes advance their own (the position of their next round of W steps, which a
    torchdata `StatefulDataLoader` saves and restores per worker), and the copy in the main
    process stays where the iteration started. The consumer therefore counts the batches it took
    and saves `{**dataset.state_dict(), "step": first + consumed}`, valid at any layout.
    """

    def __init__(
        self,
        corpus: TokenCorpus,
        *,
        seq_len: int,
        plan: BatchPlan,
        seed: int = 0,
        start_step: int = 0,
        allow_fingerprint_mismatch: bool = False,
    ) -> None:
        if seq_len < 3:
            raise ValueError(f"seq_len = {seq_len}: a block needs at least BOS, one token and EOS")
        if start_step < 0:
            raise ValueError(f"start_step = {start_step} < 0")
        self.corpus, self.seq_len, self.plan, self.seed = corpus, seq_len, plan, seed
        self.global_batch = plan.global_batch
        self.allow_fingerprint_mismatch = allow_fingerprint_mismatch
        self.span = seq_len - 2
        self.num_blocks = corpus.length // self.span
        self.steps_per_epoch = self.num_blocks // plan.global_batch
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the corpus is too small for the batch: {corpus.length} tokens make {self.num_blocks} blocks of "
                f"seq_len {seq_len}, fewer than the global batch of {plan.global_batch}"
            )
        self.step = start_step
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation), rebuilt on demand

    def __getstate__(self) -> dict[str, Any]:
        # Workers rebuild the permutation rather than receive it (megabytes on a large corpus).
        return {**self.__dict__, "_order": None}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of block ids that epoch `epoch` reads (the last one is cached)."""
        if self._order is None or self._order[0] != epoch:
            generator = keyed_generator(self.seed, "blocks", epoch)
            self._order = (epoch, torch.randperm(self.num_blocks, generator=generator).numpy())
        return self._order[1]

    def batch(self, step: int) -> torch.Tensor:
        """This rank's rows of global step `step`: LongTensor [local batch, seq_len]."""
        epoch, position = divmod(step, self.steps_per_epoch)
        first, rows = position * self.global_batch, self.plan.rows
        blocks = self.epoch_order(epoch)[first + rows.start : first + rows.stop]
        out = np.empty((len(rows), self.seq_len), dtype=np.int64)
        out[:, 0] = out[:, -1] = self.corpus.eos_id
        for row, block in enumerate(blocks.tolist()):
            out[row, 1:-1] = self.corpus.read(block * self.span, (block + 1) * self.span)
        return torch.from_numpy(out)

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker, workers = worker_slot()
        for step in count(self.step + worker, workers):
            batch = self.batch(step)
            # Set before the yield: a StatefulDataLoader snapshots the state as soon as we yield.
            self.step = step + workers - worker
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch": self.global_batch,
            "fingerprint": self.corpus.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at `state["step"]`; refuse a state whose block order differs from ours."""
        if state["fingerprint"] != self.corpus.fingerprint and not self.allow_fingerprint_mismatch:
            raise DataError(
                f"the saved data state is of data with fingerprint {state['fingerprint']}, but this corpus has "
                f"fingerprint {self.corpus.fingerprint}; allow_fingerprint_mismatch=True resumes anyway"
            )
        for key in ("seed", "seq_len", "global_batch"):
            if state[key] != getattr(self, key):
                raise DataError(
                    f"the saved data state has {key} = {state[key]}, but this run has {key} = {getattr(self, key)}; "
                    f"changing it changes the block order, so the run cannot resume its data position"
                )
        self.step = int(state["step"])


def build_loader(dataset: PackedBlocks, num_workers: int = 0, pin_memory: bool = False) -> Any:
    """A loader that yields `dataset`'s batches in step order, prepared by `num_workers` workers.

    A torchdata `StatefulDataLoader` where torchdata is installed, else a plain DataLoader. The
    trainer does not save the loader's state (worker-specific: it resumes only at the same
    layout) but the number of steps consumed (see `PackedBlocks`), which resumes exactly at any
    layout with either loader.
    """
    try:
        from torchdata.stateful_dataloader import StatefulDataLoader as Loader
    except ImportError:
        from torch.utils.data import DataLoader as Loader
    return Loader(
        dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory
    )


class PackedLoader(TrainLoader):
    """Pre-tokenised blocks in the global order, prefetched by dataloader workers.

    The state is the next global step, so it resumes at any world size or worker count.
    """

    def __init__(self, blocks: PackedBlocks, num_workers: int, skipped: SkipCounter) -> None:
        super().__init__(blocks.plan)
        self.blocks, self.num_workers, self.skipped = blocks, num_workers, skipped
        self.step = 0
        self._batches: Iterator[torch.Tensor] | None = None

    def next_batch(self) -> Batch:
        if self._batches is None:
            self.blocks.load_state_dict({**self.blocks.state_dict(), "step": self.step})
            self._batches = iter(build_loader(self.blocks, self.num_workers))
        batch = Batch(next_from_workers(self._batches), self.plan.rows, self.step, self.plan.global_batch)
        self.step += 1
        return batch

    def skipped_records(self) -> int:
        """Out-of-range token ids replaced so far; counted in this process (with dataloader workers,
        each worker counts its own reads and reports them through its warnings only)."""
        return self.skipped.count

    def state_dict(self) -> dict[str, Any]:
        return {**self.blocks.state_dict(), "step": self.step}

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        self.blocks.load_state_dict(states[0])
        self.step = int(states[0]["step"])
        self._batches = None

    def close(self) -> None:
        self._batches = None
