"""The prepared-corpus format: token and raw-text shards plus `manifest.json`, in a folder that
is a local path or an fsspec URL (read by `corpus_reader`, written by `corpus_writer`).

- `{split}-{i:05d}.tokens`: the split's token stream (each document's tokens, then one EOS) as
  raw little-endian uint16 (vocab_size <= 65536) or uint32; a shard holds whole documents.
- `{split}-{i:05d}.index`: little-endian int64 offsets where each document starts within the
  shard, plus the shard length (documents + 1 entries).
- `{split}-{i:05d}.check`: little-endian uint32 CRC-32 of each chunk of `check_tokens` tokens of
  the token shard (the last chunk shorter), so that a reader verifies what it reads at the cost
  of hashing a chunk once, whatever the shard's size.
- `{split}-{i:05d}.jsonl.zst`: `{"text": ...}` per line, zstd-compressed in frames of about
  `RAW_FRAME_BYTES` of whole lines, each with its content checksum, so that a reader verifies a
  frame before it uses any of it while holding little.
- `manifest.json` (format "edlm_dist-corpus-v2"): tokenizer, dtype, `check_tokens`, and per split
  the document and stream-token counts and the shard lists (paths relative to the folder, with
  sha256; token shards also name their index and check files, with their sha256).
  Written last: a folder without it is not a (complete) corpus.

Format v1 (before check files and multi-frame raw shards) is still read: its token shards are
verified whole against their sha256, its raw shards (one frame each) by their zstd checksum.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edlm_dist.data.errors import DataError
from edlm_dist.data.sources import open_binary
from edlm_dist.data.tokenizers import Tokenizer

FORMAT = "edlm_dist-corpus-v2"
FORMAT_V1 = "edlm_dist-corpus-v1"  # no check files, one zstd frame per raw shard
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
INDEX_DTYPE = np.dtype("<i8")
CHECK_DTYPE = np.dtype("<u4")
CHECK_TOKENS = 1024  # tokens per CRC-32 of a check file: what a read hashes beyond its own tokens, once
RAW_FRAME_BYTES = 1 << 20  # uncompressed bytes per zstd frame of a raw shard (at least, but the last)
HASH_BLOCK = 1 << 22


def join(folder: str, name: str) -> str:
    """`name` inside `folder` (a local path or a URL)."""
    return f"{folder.rstrip('/')}/{name}"


def dtype_name(vocab_size: int) -> Literal["uint16", "uint32"]:
    """The narrowest token dtype of the format that holds ids below `vocab_size`."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def token_shard_name(split: str, i: int) -> str:
    return f"{split}-{i:05d}.tokens"


def index_name(split: str, i: int) -> str:
    return f"{split}-{i:05d}.index"


def check_name(split: str, i: int) -> str:
    return f"{split}-{i:05d}.check"


def raw_shard_name(split: str, i: int) -> str:
    return f"{split}-{i:05d}.jsonl.zst"


def chunk_checks(tokens: np.ndarray, check_tokens: int = CHECK_TOKENS) -> np.ndarray:
    """The CRC-32 of each chunk of `check_tokens` tokens of a shard's `tokens` (a check file's content)."""
    count = -(-len(tokens) // check_tokens)
    return np.fromiter((zlib.crc32(tokens[i * check_tokens : (i + 1) * check_tokens]) for i in range(count)),
                       CHECK_DTYPE, count)


def tokenizer_info(tokenizer: Tokenizer) -> dict[str, Any]:
    """The manifest's description of `tokenizer`."""
    return {
        "name": tokenizer.name,
        "fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "config": tokenizer.to_dict(),
    }


# Required keys and their types, checked when a manifest is read.
_TOP_KEYS = {"format": str, "source": str, "tokenizer": dict, "dtype": str, "val_documents": int, "splits": dict}
_TOKENIZER_KEYS = {"name": str, "fingerprint": str, "vocab_size": int, "eos_id": int, "config": dict}
_SPLIT_KEYS = {"documents": int, "tokens": int, "token_shards": list, "raw_shards": list}
_TOKEN_SHARD_KEYS = {"path": str, "index": str, "documents": int, "tokens": int, "sha256": str}
_CHECKED_SHARD_KEYS = {"index_sha256": str, "checks": str, "checks_sha256": str}  # format v2
_RAW_SHARD_KEYS = {"path": str, "documents": int, "bytes": int, "sha256": str}


def _check_keys(obj: Any, keys: dict[str, type], where: str) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key, kind in keys.items():
        if key not in obj:
            raise DataError(f"{where}: missing key {key!r}")
        if not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            raise DataError(f"{where}: {key!r} should be a {kind.__name__}, got {obj[key]!r}")


@dataclass
class Manifest:
    """`manifest.json` of a prepared corpus; splits and shard entries are kept as the JSON dicts.
    `check_tokens` is None in format v1 (its token shards have no check files)."""

    source: str
    tokenizer: dict[str, Any]
    dtype: Literal["uint16", "uint32"]
    val_documents: int
    splits: dict[str, dict[str, Any]]
    format: str = FORMAT
    check_tokens: int | None = CHECK_TOKENS

    @classmethod
    def create(
        cls, source: str, tokenizer: Tokenizer, splits: dict[str, dict[str, Any]], val_documents: int
    ) -> Manifest:
        """A manifest for shards written with `tokenizer` (`splits` as `CorpusWriter.split_info`)."""
        return cls(source, tokenizer_info(tokenizer), dtype_name(tokenizer.vocab_size), val_documents, splits)

    def to_json(self) -> str:
        checks = {} if self.check_tokens is None else {"check_tokens": self.check_tokens}
        return json.dumps(
            {"format": self.format, "source": self.source, "tokenizer": self.tokenizer, "dtype": self.dtype,
             **checks, "val_documents": self.val_documents, "splits": self.splits},
            indent=1, ensure_ascii=False,
        ) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST_NAME) -> Manifest:
        """Parse and validate; any problem is a DataError naming `where` and the key."""
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise DataError(f"{where}: not valid JSON ({e})") from e
        _check_keys(obj, _TOP_KEYS, where)
        if obj["format"] not in (FORMAT, FORMAT_V1):
            raise DataError(f"{where}: format {obj['format']!r} is not {FORMAT!r} (or {FORMAT_V1!r})")
        checked = obj["format"] == FORMAT
        if checked:
            _check_keys(obj, {"check_tokens": int}, where)
            if obj["check_tokens"] < 1:
                raise DataError(f"{where}: 'check_tokens' should be >= 1, got {obj['check_tokens']}")
        if obj["dtype"] not in ("uint16", "uint32"):
            raise DataError(f"{where}: dtype {obj['dtype']!r} is not 'uint16' or 'uint32'")
        _check_keys(obj["tokenizer"], _TOKENIZER_KEYS, f"{where}: tokenizer")
        shard_keys = {**_TOKEN_SHARD_KEYS, **_CHECKED_SHARD_KEYS} if checked else _TOKEN_SHARD_KEYS
        for split, info in obj["splits"].items():
            _check_keys(info, _SPLIT_KEYS, f"{where}: splits.{split}")
            for n, shard in enumerate(info["token_shards"]):
                _check_keys(shard, shard_keys, f"{where}: splits.{split}.token_shards[{n}]")
            for n, shard in enumerate(info["raw_shards"]):
                _check_keys(shard, _RAW_SHARD_KEYS, f"{where}: splits.{split}.raw_shards[{n}]")
        return cls(obj["source"], obj["tokenizer"], obj["dtype"], obj["val_documents"], obj["splits"], obj["format"],
                   obj["check_tokens"] if checked else None)

    def expected_files(self) -> dict[str, int]:
        """Every shard file the manifest lists, with its size in bytes."""
        itemsize = np.dtype(self.dtype).itemsize
        sizes: dict[str, int] = {}
        for info in self.splits.values():
            for shard in info["token_shards"]:
                sizes[shard["path"]] = shard["tokens"] * itemsize
                sizes[shard["index"]] = (shard["documents"] + 1) * INDEX_DTYPE.itemsize
                if self.check_tokens is not None:
                    sizes[shard["checks"]] = -(-shard["tokens"] // self.check_tokens) * CHECK_DTYPE.itemsize
            for shard in info["raw_shards"]:
                sizes[shard["path"]] = shard["bytes"]
        return sizes


def manifest_fingerprint(manifest: Manifest) -> str:
    """16 hex digits identifying the data: tokenizer, dtype and every shard (path, size, hash) in order.
    Stored with checkpoints, so a resumed run can tell whether it reads what it read before."""
    splits = {
        split: {
            "tokens": [[s["path"], s["tokens"], s["sha256"]] for s in info["token_shards"]],
            "raw": [[s["path"], s["documents"], s["sha256"]] for s in info["raw_shards"]],
        }
        for split, info in sorted(manifest.splits.items())
    }
    key = {"tokenizer": manifest.tokenizer["fingerprint"], "dtype": manifest.dtype, "splits": splits}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(url: str) -> str | None:
    """Hex sha256 of a file's bytes, or None when it does not exist."""
    digest = hashlib.sha256()
    try:
        with open_binary(url) as f:
            while block := f.read(HASH_BLOCK):
                digest.update(block)
    except DataError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            return None
        raise
    return digest.hexdigest()
