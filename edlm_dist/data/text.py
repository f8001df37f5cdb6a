"""Fixed-length training blocks cut from one tokenised text held in memory.

A small-corpus path (tiny-shakespeare, a WikiText file) until the streaming shard pipeline
takes over for large corpora. Blocks follow the MDLM packing: EOS first and last, the inside
a contiguous window of the token stream.
"""

from __future__ import annotations

import math

import torch

from edlm_dist.data.dataset import InMemoryBlocks
from edlm_dist.diffusion.noise import keyed_generator

SPLITS = ("train", "val")


class TextBlocks(InMemoryBlocks):
    """Blocks [EOS, w_1 .. w_{seq_len-2}, EOS] of a token stream split into train and val.

    The train split is sampled at random offsets keyed by (seed, index); the val split is read
    in order, wrapping around, so every evaluation sees the same blocks.
    """

    def __init__(self, splits: dict[str, torch.Tensor], *, seq_len: int, eos_id: int, seed: int) -> None:
        for split in SPLITS:
            if split not in splits or len(splits[split]) < seq_len - 2:
                size = len(splits[split]) if split in splits else 0
                raise ValueError(f"the {split} split has {size} tokens, too few for one block of {seq_len}")
        self.seq_len, self.eos_id, self.seed = seq_len, eos_id, seed
        self.splits = splits

    @classmethod
    def from_stream(
        cls, tokens: torch.Tensor, *, seq_len: int, eos_id: int, val_fraction: float, seed: int
    ) -> TextBlocks:
        """Hold out the last `val_fraction` of one token stream (at least a block) for validation."""
        n_val = min(len(tokens), max(seq_len - 2, int(len(tokens) * val_fraction)))
        return cls({"train": tokens[:-n_val], "val": tokens[-n_val:]}, seq_len=seq_len, eos_id=eos_id, seed=seed)

    def batch(self, split: str, index: int, batch_size: int) -> torch.Tensor:
        """Blocks [batch_size, seq_len] for batch `index` of `split`: a pure function of its arguments."""
        if split not in SPLITS:
            raise ValueError(f"text blocks: split must be one of {SPLITS}, got {split!r}")
        stream, window = self.splits[split], self.seq_len - 2
        if split == "train":
            generator = keyed_generator(self.seed, split, index)
            starts = torch.randint(0, len(stream) - window + 1, (batch_size,), generator=generator)
        else:
            n_windows = len(stream) // window
            starts = (torch.arange(batch_size) + index * batch_size) % n_windows * window
        inside = stream[starts[:, None] + torch.arange(window)]
        eos = torch.full((batch_size, 1), self.eos_id, dtype=torch.long)
        return torch.cat((eos, inside, eos), dim=1)

    def unigram_nll_per_token(self) -> float:
        """Cross-entropy of the val tokens under the train split's unigram (add-one smoothed),
        nats per block position with BOS/EOS free: the context-free baseline."""
        vocab = int(max(s.max() for s in self.splits.values())) + 1
        counts = torch.bincount(self.splits["train"], minlength=vocab).double() + 1
        log_probs = (counts / counts.sum()).log()
        inner = -log_probs[self.splits["val"]].mean().item()
        return inner * (self.seq_len - 2) / self.seq_len

    def entropy_per_token(self) -> float:
        """Unknown for real text."""
        return math.nan
