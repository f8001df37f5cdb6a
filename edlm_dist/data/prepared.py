"""Training on a corpus prepared by `tools/prepare_data.py`: pre-tokenised shards read in a
global block order (the primary path; resumable at any world size), or raw `.jsonl.zst` shards
tokenised on the fly (resumable exactly at the same layout, by documents otherwise)."""

from __future__ import annotations

import math
import os

import torch

from edlm_dist.config import DataConfig
from edlm_dist.data.batches import BatchPlan
from edlm_dist.data.corpus_format import Manifest, manifest_fingerprint
from edlm_dist.data.corpus_reader import TokenCorpus, read_manifest
from edlm_dist.data.dataset import Dataset
from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.integrity import ShardFile
from edlm_dist.data.loaders import TrainLoader
from edlm_dist.data.packed import PackedBlocks, PackedLoader
from edlm_dist.data.raw_stream import RawLoader, RawTextBlocks
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
    """The corpus's tokenizer, its files read from `data.tokenizer_path` where the config names
    them (GPT-2's: also its default places), checked against the manifest's fingerprint."""
    info = manifest.tokenizer
    if info["name"] == "gpt2" or (info["name"] == "hf" and cfg.tokenizer_path):
        tokenizer = build_tokenizer(info["name"], cfg.tokenizer_path)
    else:
        tokenizer = tokenizer_from_dict(info["config"])
    if tokenizer.fingerprint() != info["fingerprint"]:
        raise DataError(
            f"the corpus was tokenised with {info['name']} {info['fingerprint']}, but the tokenizer here is "
            f"{tokenizer.fingerprint()}"
        )
    return tokenizer


class PreparedCorpus:
    """Validation batches and the training loader of one prepared corpus."""

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

    def _token_corpus(self, split: str, shards_verified: bool = False) -> TokenCorpus:
        return TokenCorpus(self.folder, split, on_error=self.cfg.on_error, skipped=self.skipped, manifest=self.manifest,
                           shards_verified=shards_verified)

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
        """Validation batch `index` (training batches come from `train_loader`)."""
        if split != "val":
            raise ValueError("a prepared corpus streams its training data: use train_loader()")
        if self.manifest.splits["val"]["token_shards"]:
            if batch_size not in self._val_packed:
                corpus = self._token_corpus("val")
                self._val_packed[batch_size] = PackedBlocks(
                    corpus, seq_len=self.seq_len, plan=BatchPlan(batch_size), seed=self.cfg.seed
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
    def train_loader(self, plan: BatchPlan, fingerprint: str, allow_fingerprint_mismatch: bool) -> TrainLoader:
        cfg = self.cfg
        if self.format == "tokens":
            # under data.verify_shards the trainer hashes the train shards before it reads them
            corpus = self._token_corpus("train", shards_verified=cfg.verify_shards)
            blocks = PackedBlocks(corpus, seq_len=self.seq_len, plan=plan, seed=cfg.seed,
                                  allow_fingerprint_mismatch=allow_fingerprint_mismatch)
            return PackedLoader(blocks, cfg.num_workers, self.skipped)
        raw = RawTextBlocks(
            self._raw_files("train"), self.tokenizer, seq_len=self.seq_len, rank=plan.rank, world_size=plan.world_size,
            seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, on_error=cfg.on_error,
        )
        return RawLoader(plan, raw, cfg.num_workers, fingerprint, allow_fingerprint_mismatch)
