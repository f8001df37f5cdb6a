"""Writing a prepared corpus: shards split by split (`CorpusWriter`), then the manifest, last."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from array import array
from collections.abc import Callable
from typing import Any

import numpy as np

from edlm_dist.data.corpus_format import (
    INDEX_DTYPE,
    MANIFEST_NAME,
    RAW_FRAME_BYTES,
    SPLITS,
    Manifest,
    check_name,
    chunk_checks,
    dtype_name,
    index_name,
    join,
    raw_shard_name,
    token_shard_name,
)
from edlm_dist.data.sources import filesystem
from edlm_dist.data.zstd_frames import zstandard_module
from edlm_dist.data.tokenizers import Tokenizer
from edlm_dist.fileio import atomic_output, atomic_write_text

ZSTD_LEVEL = 3


def write_manifest(folder: str, manifest: Manifest) -> None:
    """Write `manifest.json` whole: atomically on local disks, as one object put elsewhere."""
    fs, root, local = filesystem(folder)
    if local:
        atomic_write_text(os.path.join(root, MANIFEST_NAME), manifest.to_json())
    else:
        fs.pipe_file(join(root, MANIFEST_NAME), manifest.to_json().encode("utf-8"))


class CorpusWriter:
    """Writes one split's shards: `add` documents in order, `close` at the end.

    A shard is closed once it holds at least `shard_tokens` stream tokens (and at the end), so
    token and raw shard `i` hold the same documents. Each file is written whole under a
    temporary name and renamed into place (local disks) or put as one object (fsspec), so an
    interrupted run never leaves a partial file under a shard's name; a shard whose files cannot
    all be written (a full disk) leaves none of them.

    Each finished shard gets a record: {"split", "shard", "documents", "tokens", "token_shard",
    "raw_shard"} (the manifest entries, None when not written). `on_shard` is called with it
    (e.g. to record progress); `completed` continues a split after those records' shards.
    """

    def __init__(
        self, folder: str, tokenizer: Tokenizer, *, shard_tokens: int, write_tokens: bool = True,
        write_raw: bool = False, split: str, completed: list[dict[str, Any]] | None = None,
        on_shard: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        if not (write_tokens or write_raw):
            raise ValueError("CorpusWriter: nothing to write (write_tokens and write_raw are both off)")
        self.folder, self.tokenizer, self.split = folder, tokenizer, split
        self.shard_tokens, self.write_tokens, self.write_raw = shard_tokens, write_tokens, write_raw
        self.on_shard = on_shard
        self.dtype = np.dtype(dtype_name(tokenizer.vocab_size)).newbyteorder("<")
        self._typecode = next(c for c in "HILQ" if array(c).itemsize == self.dtype.itemsize)
        self._fs, self._root, self._local = filesystem(folder)
        if self._local:
            os.makedirs(self._root, exist_ok=True)
        self.records: list[dict[str, Any]] = list(completed or [])
        if [r["shard"] for r in self.records] != list(range(len(self.records))):
            raise ValueError(f"completed shards of {split} are not numbered 0..{len(self.records) - 1}")
        self.token_shards = [r["token_shard"] for r in self.records if r["token_shard"]]
        self.raw_shards = [r["raw_shard"] for r in self.records if r["raw_shard"]]
        self._compressor = (zstandard_module().ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
                            if write_raw else None)
        self._start_shard()

    def _start_shard(self) -> None:
        self._tokens = array(self._typecode)
        self._offsets = [0]
        self._count = 0
        self._raw_lines = bytearray()  # JSON lines not yet compressed: the next raw frame's content
        self._raw_frames: list[bytes] = []

    def add(self, text: str, ids: list[int] | None = None) -> None:
        """Append a document (`ids`: its tokens when already encoded, e.g. by a thread pool)."""
        if ids is None:
            ids = self.tokenizer.encode(text)
        self._count += len(ids) + 1
        self._offsets.append(self._count)
        if self.write_tokens:
            self._tokens.extend(ids)
            self._tokens.append(self.tokenizer.eos_id)
        if self.write_raw:
            self._raw_lines += _json_line(text)
            if len(self._raw_lines) >= RAW_FRAME_BYTES:
                self._compress_frame()
        if self._count >= self.shard_tokens:
            self._finish_shard()

    def close(self) -> list[dict[str, Any]]:
        """Write the last shard (if it has documents; calling again is harmless); the manifest
        entries of the token shards (of the raw ones when only raw text is written). Both lists
        stay in `token_shards` and `raw_shards`."""
        if len(self._offsets) > 1:
            self._finish_shard()
        return self.token_shards if self.write_tokens else self.raw_shards

    def split_info(self) -> dict[str, Any]:
        """The manifest entry of this split (after `close`)."""
        return {
            "documents": sum(r["documents"] for r in self.records),
            "tokens": sum(r["tokens"] for r in self.records),
            "token_shards": self.token_shards,
            "raw_shards": self.raw_shards,
        }

    def _compress_frame(self) -> None:
        """The pending JSON lines as one zstd frame (content size and checksum in it)."""
        self._raw_frames.append(self._compressor.compress(bytes(self._raw_lines)))
        self._raw_lines.clear()

    def _finish_shard(self) -> None:
        i, documents = len(self.records), len(self._offsets) - 1
        record: dict[str, Any] = {
            "split": self.split, "shard": i, "documents": documents, "tokens": self._count,
            "token_shard": None, "raw_shard": None,
        }
        files: dict[str, bytes] = {}
        if self.write_tokens:
            tokens = np.frombuffer(self._tokens, dtype=self.dtype.newbyteorder("=")).astype(self.dtype)
            if tokens.max() >= self.tokenizer.vocab_size:
                raise ValueError(f"{self.tokenizer.name} tokenizer produced id {tokens.max()} >= its vocab size")
            name, index, checks = token_shard_name(self.split, i), index_name(self.split, i), check_name(self.split, i)
            files = {name: tokens.tobytes(), index: np.asarray(self._offsets, INDEX_DTYPE).tobytes(),
                     checks: chunk_checks(tokens).tobytes()}
            record["token_shard"] = {
                "path": name, "index": index, "documents": documents, "tokens": self._count,
                "sha256": _sha256(files[name]), "index_sha256": _sha256(files[index]),
                "checks": checks, "checks_sha256": _sha256(files[checks]),
            }
        if self.write_raw:
            if self._raw_lines:
                self._compress_frame()
            name = raw_shard_name(self.split, i)
            files[name] = b"".join(self._raw_frames)
            record["raw_shard"] = {"path": name, "documents": documents, "bytes": len(files[name]),
                                   "sha256": _sha256(files[name])}
        self._put_all(files)
        if record["token_shard"]:
            self.token_shards.append(record["token_shard"])
        if record["raw_shard"]:
            self.raw_shards.append(record["raw_shard"])
        self.records.append(record)
        self._start_shard()
        if self.on_shard is not None:
            self.on_shard(record)

    def _put_all(self, files: dict[str, bytes]) -> None:
        """Write whole files: all of them, or (on an error, which is raised) none."""
        written: list[str] = []
        try:
            for name, data in files.items():
                self._put(name, data)
                written.append(name)
        except BaseException:
            for name in written:
                with contextlib.suppress(OSError):
                    self._fs.rm_file(join(self._root, name))
            raise

    def _put(self, name: str, data: bytes) -> None:
        if self._local:
            with atomic_output(os.path.join(self._root, name)) as tmp, open(tmp, "wb") as f:
                f.write(data)
        else:
            self._fs.pipe_file(join(self._root, name), data)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_line(text: str) -> bytes:
    """`{"text": text}` as a UTF-8 JSON line (escaped ASCII when the text holds lone surrogates)."""
    try:
        return json.dumps({"text": text}, ensure_ascii=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps({"text": text}).encode("ascii") + b"\n"


def write_corpus(
    folder: str, tokenizer: Tokenizer, splits: dict[str, list[str]], *, shard_tokens: int,
    write_tokens: bool = True, write_raw: bool = False, source: str = "",
) -> Manifest:
    """Write documents already in memory as a prepared corpus (`splits`: name -> texts), manifest
    included: for tests and small corpora (tools/prepare_data.py streams large ones)."""
    infos: dict[str, dict[str, Any]] = {}
    for split in dict.fromkeys([*SPLITS, *splits]):
        writer = CorpusWriter(folder, tokenizer, shard_tokens=shard_tokens, write_tokens=write_tokens,
                              write_raw=write_raw, split=split)
        for text in splits.get(split, []):
            writer.add(text)
        writer.close()
        infos[split] = writer.split_info()
    manifest = Manifest.create(source or folder, tokenizer, infos, val_documents=infos["val"]["documents"])
    write_manifest(folder, manifest)
    return manifest
