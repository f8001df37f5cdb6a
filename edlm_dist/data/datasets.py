"""Datasets by name: a tokenizer plus a source of fixed-length blocks, built from `[data]`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from edlm_dist.config import DataConfig
from edlm_dist.data.errors import DataError
from edlm_dist.data.synthetic import MarkovSource, SyntheticBlocks, SyntheticTokenizer
from edlm_dist.data.text import TextBlocks
from edlm_dist.data.tokenizers import Tokenizer, build_tokenizer


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


def build_dataset(cfg: DataConfig) -> Dataset:
    """The tokenizer and block source that `cfg` names."""
    if cfg.dataset == "synthetic":
        if cfg.tokenizer != "synthetic":
            raise DataError(f"data.dataset = 'synthetic' needs data.tokenizer = 'synthetic', got {cfg.tokenizer!r}")
        source = MarkovSource(
            cfg.synthetic_states, cfg.synthetic_branching, cfg.synthetic_concentration, cfg.seed
        )
        return Dataset(SyntheticTokenizer(source), SyntheticBlocks(source, cfg.seq_len, cfg.seed))
    return _text_dataset(cfg)


def _text_dataset(cfg: DataConfig) -> Dataset:
    path = Path(os.path.expandvars(cfg.path)).expanduser()
    if not path.is_file():
        raise DataError(f"data.path: text file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"data.path: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if cfg.tokenizer == "synthetic":
        raise DataError("data.tokenizer = 'synthetic' only works with data.dataset = 'synthetic'")
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.tokenizer_path, corpus=text)
    tokens = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    try:
        blocks = TextBlocks(
            tokens, seq_len=cfg.seq_len, eos_id=tokenizer.eos_id, val_fraction=cfg.val_fraction, seed=cfg.seed
        )
    except ValueError as err:
        raise DataError(f"data.path {path}: {err}") from None
    return Dataset(tokenizer, blocks)
