"""What a dataset gives the programs that read it: its tokenizer, its block source, a fingerprint
of the data and, for a prepared corpus, the shards training reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from edlm_dist.data.integrity import ShardFile
from edlm_dist.data.tokenizers import Tokenizer


class BlockSource(Protocol):
    """Batches of fixed-length blocks, a pure function of (split, index, batch_size)."""

    seq_len: int

    def batch(self, split: str, index: int, batch_size: int) -> torch.Tensor: ...

    def entropy_per_token(self) -> float: ...

    def unigram_nll_per_token(self) -> float: ...


@dataclass
class Dataset:
    tokenizer: Tokenizer
    blocks: BlockSource
    fingerprint: str  # identifies the data, so a resumed run can tell it is reading the same
    shards: tuple[ShardFile, ...] = ()  # a prepared corpus's shards read by training, with their manifest sha256
