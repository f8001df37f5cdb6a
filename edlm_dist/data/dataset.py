"""What a dataset gives the programs that read it: its tokenizer, its block source (validation
batches and the training loader of its kind), a fingerprint of the data and, for a prepared
corpus, the shards training reads."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import torch

from edlm_dist.data.batches import BatchPlan
from edlm_dist.data.integrity import ShardFile
from edlm_dist.data.loaders import StepIndexedLoader, TrainLoader
from edlm_dist.data.tokenizers import Tokenizer


class BlockSource(Protocol):
    """Fixed-length blocks of a dataset: validation batches by index, training through a loader."""

    seq_len: int

    def batch(self, split: str, index: int, batch_size: int) -> torch.Tensor:
        """Blocks [batch_size, seq_len] of batch `index` of `split`, a pure function of the arguments."""

    def train_loader(self, plan: BatchPlan, fingerprint: str, allow_fingerprint_mismatch: bool) -> TrainLoader:
        """The loader of this rank's training batches."""

    def entropy_per_token(self) -> float: ...

    def unigram_nll_per_token(self) -> float: ...


class InMemoryBlocks(ABC):
    """A block source that makes any batch of any split on demand, training batches included:
    its training loader reads global batch `step` of the train split at step `step`."""

    seq_len: int

    @abstractmethod
    def batch(self, split: str, index: int, batch_size: int) -> torch.Tensor: ...

    def train_loader(self, plan: BatchPlan, fingerprint: str, allow_fingerprint_mismatch: bool) -> TrainLoader:
        return StepIndexedLoader(plan, lambda step: self.batch("train", step, plan.global_batch), fingerprint,
                                 allow_fingerprint_mismatch)


@dataclass
class Dataset:
    tokenizer: Tokenizer
    blocks: BlockSource
    fingerprint: str  # identifies the data, so a resumed run can tell it is reading the same
    shards: tuple[ShardFile, ...] = ()  # a prepared corpus's shards read by training, with their manifest sha256

    def train_loader(self, plan: BatchPlan, allow_fingerprint_mismatch: bool = False) -> TrainLoader:
        """This rank's training batches under `plan`; a resume refuses other data than the saved
        state's unless `allow_fingerprint_mismatch`."""
        return self.blocks.train_loader(plan, self.fingerprint, allow_fingerprint_mismatch)
