"""Training on a corpus prepared by `tools/prepare_data.py`: pre-tokenised shards read in a
global block order (the primary path; resumable at any world size), or raw `.jsonl.zst` shards
tokenised on the fly (resumable exactly at the same layout, by documents otherwise)."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from edlm_dist.config import DataConfig
from edlm_dist.data.dataset import Dataset
from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.integrity import ShardFile
from edlm_dist.data.pipeline import TrainStream, check_fingerprint
from edlm_dist.data.raw_stream import (
    RawTextBlocks,
    build_raw_loader,
    dataset_states_from_loader_state,
    merge_states,
)
from edlm_dist.data.shards import Manifest, TokenCorpus, manifest_fingerprint, read_manifest
from edlm_dist.data.stream import PackedBlocks, build_loader
from edlm_dist.data.tokenizers import Tokenizer, build_tokenizer, tokenizer_from_dict


def prepared_dataset(cfg: DataConfig) -> Dataset:
    """The `Dataset` of a prepared corpus folder (`data.path`)."""
    if not cfg.path:
        raise DataError(
            f"data.dataset = {cfg.dataset!r} needs data.path: a folder made by tools/prepare_data.py "
            f"(for OpenWebText: --hf-dataset Skylion007/openwebtext)"
        )
    folder = os.path.expandvars(cfg.path)
    skipped = SkipCounter()
    manifest = read_manifest(folder, on_error=cfg.on_error, skipped=skipped)
    tokenizer = _manifest_tokenizer(manifest, cfg)
    source = PreparedCorpus(folder, manifest, tokenizer, cfg, skipped)
    return Dataset(tokenizer, source, source.fingerprint, source.shard_files())


def _manifest_tokenizer(manifest: Manifest, cfg: DataConfig) -> Tokenizer:
    info = manifest.tokenizer
    tokenizer = build_tokenizer("gpt2", cfg.tokenizer_path) if info["name"] == "gpt2" else tokenizer_from_dict(info["config"])
    if tokenizer.fingerprint() != info["fingerprint"]:
        raise DataError(
            f"the corpus was tokenised with {info['name']} {info['fingerprint']}, but the tokenizer here is "
            f"{tokenizer.fingerprint()}"
        )
    return tokenizer


class PreparedCorpus:
    """Validation batches and training streams of one prepared corpus."""

    def __init__(
        self, folder: str, manifest: Manifest, tokenizer: Tokenizer, cfg: DataConfig, skipped: SkipCounter
    ) -> None:
        self.folder, self.manifest, self.tokenizer, self.cfg = folder, manifest, tokenizer, cfg
        self.seq_len = cfg.seq_len
        self.fingerprint = manifest_fingerprint(manifest)
        self.format = self._resolve_format()
        self.skipped = skipped
        self._val_packed: dict[int, PackedBlocks] = {}
        self._val_raw: list[torch.Tensor] = []
        self._val_raw_iter = None

    def _resolve_format(self) -> str:
        train = self.manifest.splits["train"]
        has = {"tokens": bool(train["token_shards"]), "raw": bool(train["raw_shards"])}
        fmt = self.cfg.format if self.cfg.format != "auto" else ("tokens" if has["tokens"] else "raw")
        if not has[fmt]:
            raise DataError(f"data.format = {fmt!r}, but {self.folder} has no {fmt} shards for the train split")
        return fmt

    def _token_corpus(self, split: str) -> TokenCorpus:
        return TokenCorpus(self.folder, split, on_error=self.cfg.on_error, skipped=self.skipped, manifest=self.manifest)

    def shard_files(self) -> tuple[ShardFile, ...]:
        """The shards training reads (its format's train shards, the val shards `batch` reads),
        with the sha256 of their manifest."""
        train = "token_shards" if self.format == "tokens" else "raw_shards"
        val = "token_shards" if self.manifest.splits["val"]["token_shards"] else "raw_shards"
        entries = [*self.manifest.splits["train"][train], *self.manifest.splits["val"][val]]
        return tuple(ShardFile(self._url(s["path"]), s["sha256"]) for s in entries)

    def _url(self, name: str) -> str:
        return f"{self.folder.rstrip('/')}/{name}"

    def _raw_files(self, split: str) -> list[str]:
        return [self._url(s["path"]) for s in self.manifest.splits[split]["raw_shards"]]

    # ---- validation --------------------------------------------------------------------
    def batch(self, split: str, index: int, batch_size: int) -> torch.Tensor:
        """Validation batch `index` (training batches come from `train_stream`)."""
        if split != "val":
            raise ValueError("a prepared corpus streams its training data: use train_stream()")
        if self.manifest.splits["val"]["token_shards"]:
            if batch_size not in self._val_packed:
                corpus = self._token_corpus("val")
                self._val_packed[batch_size] = PackedBlocks(
                    corpus, seq_len=self.seq_len, global_batch=batch_size, seed=self.cfg.seed
                )
            return self._val_packed[batch_size].batch(index)
        return self._raw_val_batch(index, batch_size)

    def _raw_val_batch(self, index: int, batch_size: int) -> torch.Tensor:
        """The first validation blocks of the raw shards, in file order (no shuffling), cached."""
        if self._val_raw_iter is None:
            self._val_raw_iter = iter(RawTextBlocks(
                self._raw_files("val"), self.tokenizer, seq_len=self.seq_len, seed=self.cfg.seed,
                shuffle_buffer=1, on_error=self.cfg.on_error,
            ))
        needed = (index + 1) * batch_size
        while len(self._val_raw) < needed:
            self._val_raw.append(next(self._val_raw_iter))
        return torch.stack(self._val_raw[index * batch_size : needed])

    def entropy_per_token(self) -> float:
        return math.nan

    def unigram_nll_per_token(self) -> float:
        return math.nan

    # ---- training ----------------------------------------------------------------------
    def train_stream(self, *, global_batch: int, rank: int, world_size: int) -> TrainStream:
        cfg = self.cfg
        if self.format == "tokens":
            blocks = PackedBlocks(
                self._token_corpus("train"), seq_len=self.seq_len, global_batch=global_batch, rank=rank, world_size=world_size,
                seed=cfg.seed, allow_fingerprint_mismatch=cfg.allow_fingerprint_mismatch,
            )
            return PackedStream(blocks, cfg.num_workers, self.skipped)
        blocks = RawTextBlocks(
            self._raw_files("train"), self.tokenizer, seq_len=self.seq_len, rank=rank, world_size=world_size,
            seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, on_error=cfg.on_error,
        )
        return RawStream(blocks, global_batch // world_size, cfg.num_workers, rank, world_size, self.fingerprint,
                         cfg.allow_fingerprint_mismatch)


class PackedStream:
    """Pre-tokenised blocks in the global order, prefetched by dataloader workers.

    The state is the next global step, so it resumes at any world size or worker count.
    """

    def __init__(self, blocks: PackedBlocks, num_workers: int, skipped: SkipCounter) -> None:
        self.blocks, self.num_workers, self.skipped = blocks, num_workers, skipped
        self.step = 0
        self._batches = None

    def next_batch(self) -> torch.Tensor:
        if self._batches is None:
            self.blocks.load_state_dict({**self.blocks.state_dict(), "step": self.step})
            self._batches = iter(build_loader(self.blocks, self.num_workers))
        batch = next(self._batches)
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


class RawStream:
    """Raw text tokenised on the fly; each rank's loader state is saved.

    Resumed at the same layout (world size, workers) it continues exactly; at another layout it
    restarts each file at the documents already consumed (documents in flight are re-read).
    """

    def __init__(self, blocks: RawTextBlocks, local_batch: int, num_workers: int, rank: int, world_size: int,
                 fingerprint: str, allow_fingerprint_mismatch: bool) -> None:
        self.blocks, self.local_batch, self.num_workers = blocks, local_batch, num_workers
        self.rank, self.world_size = rank, world_size
        self.fingerprint, self.allow_fingerprint_mismatch = fingerprint, allow_fingerprint_mismatch
        self.loader = build_raw_loader(blocks, local_batch, num_workers)
        self._batches = None

    def skipped_records(self) -> int:
        """Bad records skipped so far; with dataloader workers the counts live in the workers and
        are read from the states they report to the loader."""
        if self.num_workers == 0:
            return self.blocks.skipped.count
        return sum(int(s.get("skipped", 0)) for s in dataset_states_from_loader_state(self.loader.state_dict()))

    def next_batch(self) -> torch.Tensor:
        if self._batches is None:
            self._batches = iter(self.loader)
        return next(self._batches)

    def state_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world_size, "num_workers": self.num_workers,
                "fingerprint": self.fingerprint, "loader": self.loader.state_dict()}

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        check_fingerprint(states[0]["fingerprint"], self.fingerprint, self.allow_fingerprint_mismatch)
        same_layout = len(states) == self.world_size and states[0]["num_workers"] == self.num_workers
        if same_layout:
            self.loader.load_state_dict(states[self.rank]["loader"])
        else:
            slots = [s for state in states for s in dataset_states_from_loader_state(state["loader"])]
            self.blocks.load_state_dict(merge_states(slots))
            self.loader = build_raw_loader(self.blocks, self.local_batch, self.num_workers)
        self._batches = None

    def close(self) -> None:
        self._batches = None
