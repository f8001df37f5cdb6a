"""The prepared-corpus format: token and raw-text shards plus `manifest.json`, in a folder that
is a local path or an fsspec URL.

- `{split}-{i:05d}.tokens`: the split's token stream (each document's tokens, then one EOS) as
  raw little-endian uint16 (vocab_size <= 65536) or uint32; a shard holds whole documents.
- `{split}-{i:05d}.index`: little-endian int64 offsets where each document starts within the
  shard, plus the shard length (documents + 1 entries).
- `{split}-{i:05d}.jsonl.zst`: `{"text": ...}` per line, zstd-compressed (with checksums).
- `manifest.json` (format "edlm_dist-corpus-v1"): tokenizer, dtype, and per split the document
  and stream-token counts and the shard lists (paths relative to the folder, with sha256).
  Written last: a folder without it is not a (complete) corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from array import array
from bisect import bisect_right
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.sources import filesystem, open_binary, zstandard_module
from edlm_dist.data.tokenizers import Tokenizer
from edlm_dist.fileio import atomic_output, atomic_write_text

FORMAT = "edlm_dist-corpus-v1"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
INDEX_DTYPE = np.dtype("<i8")
ZSTD_LEVEL = 3
HASH_BLOCK = 1 << 22

log = logging.getLogger(__name__)


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


def raw_shard_name(split: str, i: int) -> str:
    return f"{split}-{i:05d}.jsonl.zst"


def tokenizer_info(tokenizer: Tokenizer) -> dict[str, Any]:
    """The manifest's description of `tokenizer`."""
    return {
        "name": tokenizer.name,
        "fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "config": tokenizer.to_dict(),
    }


def empty_split() -> dict[str, Any]:
    return {"documents": 0, "tokens": 0, "token_shards": [], "raw_shards": []}


# Required keys and their types, checked when a manifest is read.
_TOP_KEYS = {"format": str, "source": str, "tokenizer": dict, "dtype": str, "val_documents": int, "splits": dict}
_TOKENIZER_KEYS = {"name": str, "fingerprint": str, "vocab_size": int, "eos_id": int, "config": dict}
_SPLIT_KEYS = {"documents": int, "tokens": int, "token_shards": list, "raw_shards": list}
_TOKEN_SHARD_KEYS = {"path": str, "index": str, "documents": int, "tokens": int, "sha256": str}
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
    """`manifest.json` of a prepared corpus; splits and shard entries are kept as the JSON dicts."""

    source: str
    tokenizer: dict[str, Any]
    dtype: Literal["uint16", "uint32"]
    val_documents: int
    splits: dict[str, dict[str, Any]]
    format: str = FORMAT

    @classmethod
    def create(
        cls, source: str, tokenizer: Tokenizer, splits: dict[str, dict[str, Any]], val_documents: int
    ) -> Manifest:
        """A manifest for shards written with `tokenizer` (`splits` as `CorpusWriter.split_info`)."""
        return cls(source, tokenizer_info(tokenizer), dtype_name(tokenizer.vocab_size), val_documents, splits)

    def to_json(self) -> str:
        return json.dumps(
            {"format": self.format, "source": self.source, "tokenizer": self.tokenizer, "dtype": self.dtype,
             "val_documents": self.val_documents, "splits": self.splits},
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
        if obj["format"] != FORMAT:
            raise DataError(f"{where}: format {obj['format']!r} is not {FORMAT!r}")
        if obj["dtype"] not in ("uint16", "uint32"):
            raise DataError(f"{where}: dtype {obj['dtype']!r} is not 'uint16' or 'uint32'")
        _check_keys(obj["tokenizer"], _TOKENIZER_KEYS, f"{where}: tokenizer")
        for split, info in obj["splits"].items():
            _check_keys(info, _SPLIT_KEYS, f"{where}: splits.{split}")
            for n, shard in enumerate(info["token_shards"]):
                _check_keys(shard, _TOKEN_SHARD_KEYS, f"{where}: splits.{split}.token_shards[{n}]")
            for n, shard in enumerate(info["raw_shards"]):
                _check_keys(shard, _RAW_SHARD_KEYS, f"{where}: splits.{split}.raw_shards[{n}]")
        return cls(obj["source"], obj["tokenizer"], obj["dtype"], obj["val_documents"], obj["splits"], obj["format"])

    def expected_files(self) -> dict[str, int]:
        """Every shard file the manifest lists, with its size in bytes."""
        itemsize = np.dtype(self.dtype).itemsize
        sizes: dict[str, int] = {}
        for info in self.splits.values():
            for shard in info["token_shards"]:
                sizes[shard["path"]] = shard["tokens"] * itemsize
                sizes[shard["index"]] = (shard["documents"] + 1) * INDEX_DTYPE.itemsize
            for shard in info["raw_shards"]:
                sizes[shard["path"]] = shard["bytes"]
        return sizes


def read_manifest(
    folder: str, *, on_error: Literal["raise", "skip"] = "raise", skipped: SkipCounter | None = None
) -> Manifest:
    """The manifest of `folder`, after checking that every shard it lists is there at its size.

    A missing or wrong-size shard is an error naming it; with on_error="skip" the shard is left
    out of the returned manifest (its split's counts shrink) and counted in `skipped`, so the
    manifest's fingerprint also changes and a resume on a different set of shards is noticed.
    """
    fs, root, _ = filesystem(folder)
    where = join(folder, MANIFEST_NAME)
    try:
        text = fs.cat_file(join(root, MANIFEST_NAME)).decode("utf-8")
    except FileNotFoundError:
        raise DataError(
            f"{where} not found: {folder} is not a corpus prepared by tools/prepare_data.py "
            f"(or its preparation has not finished)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: cannot read ({e})") from e
    manifest = Manifest.from_json(text, where)
    try:
        present = {
            name[len(root.rstrip("/")) + 1 :]: info.get("size")
            for name, info in fs.find(root, detail=True).items()
        }
    except OSError as e:
        raise DataError(f"cannot list {folder}: {e}") from e
    bad: dict[str, str] = {}
    for path, size in manifest.expected_files().items():
        if path not in present:
            bad[path] = f"{join(folder, path)}: listed in {where} but missing"
        elif present[path] is not None and present[path] != size:
            bad[path] = f"{join(folder, path)}: {present[path]} bytes, {where} says {size} (truncated or replaced?)"
    if bad and on_error == "raise":
        raise DataError(next(iter(bad.values())))
    return _without_shards(manifest, bad, skipped) if bad else manifest


def _without_shards(manifest: Manifest, bad: dict[str, str], skipped: SkipCounter | None) -> Manifest:
    """`manifest` without the shards whose files are bad, each counted once."""
    splits = {}
    for name, info in manifest.splits.items():
        tokens = [s for s in info["token_shards"] if s["path"] not in bad and s["index"] not in bad]
        raw = [s for s in info["raw_shards"] if s["path"] not in bad]
        kept = tokens or raw
        splits[name] = {
            **info, "token_shards": tokens, "raw_shards": raw,
            "documents": sum(s["documents"] for s in kept),
            "tokens": sum(s["tokens"] for s in tokens) if tokens else info["tokens"],
        }
    for reason in bad.values():
        if skipped is not None:
            skipped.skip(reason)
        log.warning("skipping shard: %s", reason)
    return dataclasses.replace(manifest, splits=splits)


def write_manifest(folder: str, manifest: Manifest) -> None:
    """Write `manifest.json` whole: atomically on local disks, as one object put elsewhere."""
    fs, root, local = filesystem(folder)
    if local:
        atomic_write_text(os.path.join(root, MANIFEST_NAME), manifest.to_json())
    else:
        fs.pipe_file(join(root, MANIFEST_NAME), manifest.to_json().encode("utf-8"))


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


class TokenCorpus:
    """Random access to the token stream of one split of a prepared corpus.

    Local shards are memory-mapped (opened on first use, kept open, dropped when pickled so a
    corpus can be sent to dataloader workers); remote shards are read with ranged requests.
    Token ids >= vocab_size (a corrupt shard) raise a DataError naming the shard and offset, or
    with on_error="skip" are replaced by EOS (a document boundary, the least misleading token
    to train on) and counted once per read and shard in `skipped` (logged when it is None).
    """

    def __init__(
        self, folder: str, split: str, *, on_error: Literal["raise", "skip"] = "raise",
        skipped: SkipCounter | None = None, manifest: Manifest | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.folder, self.split, self.on_error = folder, split, on_error
        self.skipped = skipped
        self.manifest = manifest or read_manifest(folder, on_error=on_error, skipped=skipped)
        if split not in self.manifest.splits:
            raise DataError(
                f"{join(folder, MANIFEST_NAME)}: no split {split!r} (has {', '.join(self.manifest.splits)})"
            )
        shards = self.manifest.splits[split]["token_shards"]
        if not shards:
            raise DataError(f"{folder}: the {split} split has no token shards (prepared with --format raw?)")
        self.vocab_size = int(self.manifest.tokenizer["vocab_size"])
        self.eos_id = int(self.manifest.tokenizer["eos_id"])
        self.fingerprint = manifest_fingerprint(self.manifest)
        self.dtype = np.dtype(self.manifest.dtype).newbyteorder("<")
        self._check_ids = int(np.iinfo(self.dtype).max) >= self.vocab_size
        self._paths = [join(folder, s["path"]) for s in shards]
        self._index_paths = [join(folder, s["index"]) for s in shards]
        self._starts = np.cumsum([0] + [s["tokens"] for s in shards]).tolist()
        self._doc_starts = np.cumsum([0] + [s["documents"] for s in shards]).tolist()
        self.length: int = self._starts[-1]
        self.documents: int = self._doc_starts[-1]
        self._fs, self._root, self._local = filesystem(folder)
        self._close()

    def _close(self) -> None:
        self._tokens: list[np.ndarray | None] = [None] * len(self._paths)
        self._indexes: list[np.ndarray | None] = [None] * len(self._paths)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tokens"] = state["_indexes"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._close()

    def __len__(self) -> int:
        return self.length

    def read(self, start: int, stop: int) -> np.ndarray:
        """The stream tokens [start, stop) as int64, across shard boundaries."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"read [{start}, {stop}) is outside the {self.split} stream of {self.length} tokens")
        if start == stop:
            return np.empty(0, np.int64)
        shard = bisect_right(self._starts, start) - 1
        if stop <= self._starts[shard + 1]:  # one shard: the common case
            out = self._slice(shard, start, stop).astype(np.int64)
        else:
            out = np.empty(stop - start, np.int64)
            pos = start
            while pos < stop:
                end = min(stop, self._starts[shard + 1])
                out[pos - start : end - start] = self._slice(shard, pos, end)
                pos, shard = end, shard + 1
        if self._check_ids and out.max() >= self.vocab_size:
            self._bad_ids(out, start)
        return out

    def document(self, i: int) -> np.ndarray:
        """Document `i` of the split (its tokens, without the trailing EOS), found via the index."""
        if not 0 <= i < self.documents:
            raise IndexError(f"document {i} is outside the {self.split} split's {self.documents} documents")
        shard = bisect_right(self._doc_starts, i) - 1
        index = self._index(shard)
        j = i - self._doc_starts[shard]
        begin, end = int(index[j]), int(index[j + 1])
        if not 0 <= begin < end:
            raise DataError(f"{self._index_paths[shard]}: entries {j}, {j + 1} ({begin}, {end}) are not increasing")
        base = self._starts[shard]
        return self.read(base + begin, base + end - 1)

    def _slice(self, shard: int, start: int, stop: int) -> np.ndarray:
        """Stream tokens [start, stop) of one shard, in the file's dtype."""
        base = self._starts[shard]
        if self._local:
            tokens = self._tokens[shard]
            if tokens is None:
                tokens = self._tokens[shard] = self._map(self._paths[shard], self.dtype, self._starts[shard + 1] - base)
            return tokens[start - base : stop - base]
        size = self.dtype.itemsize
        try:
            data = self._fs.cat_file(self._remote(shard), start=(start - base) * size, end=(stop - base) * size)
        except OSError as e:
            raise DataError(f"{self._paths[shard]}: cannot read ({e})") from e
        if len(data) != (stop - start) * size:
            raise DataError(f"{self._paths[shard]}: short read at byte {(start - base) * size} (truncated shard?)")
        return np.frombuffer(data, self.dtype)

    def _remote(self, shard: int, index: bool = False) -> str:
        entry = self.manifest.splits[self.split]["token_shards"][shard]
        return join(self._root, entry["index" if index else "path"])

    def _index(self, shard: int) -> np.ndarray:
        """The document offsets of a shard (memory-mapped, or fetched whole once), checked."""
        index = self._indexes[shard]
        if index is not None:
            return index
        entries = self._doc_starts[shard + 1] - self._doc_starts[shard] + 1
        path = self._index_paths[shard]
        if self._local:
            index = self._map(path, INDEX_DTYPE, entries)
        else:
            try:
                index = np.frombuffer(self._fs.cat_file(self._remote(shard, index=True)), INDEX_DTYPE)
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e})") from e
        shard_tokens = self._starts[shard + 1] - self._starts[shard]
        if len(index) != entries or index[0] != 0 or index[-1] != shard_tokens:
            raise DataError(
                f"{path}: expected {entries} offsets from 0 to {shard_tokens}, "
                f"found {len(index)} from {index[0] if len(index) else '-'} to {index[-1] if len(index) else '-'}"
            )
        self._indexes[shard] = index
        return index

    def _map(self, url: str, dtype: np.dtype, count: int) -> np.ndarray:
        """A read-only memory map of a local file of `count` items (as a plain ndarray: cheaper slicing)."""
        path = filesystem(url)[1]
        try:
            mapped = np.memmap(path, dtype=dtype, mode="r")
        except (OSError, ValueError) as e:
            raise DataError(f"{url}: cannot map ({e})") from e
        if len(mapped) != count:
            raise DataError(f"{url}: {len(mapped)} entries, the manifest implies {count} (truncated or replaced?)")
        return mapped.view(np.ndarray)

    def _bad_ids(self, out: np.ndarray, start: int) -> None:
        """Report ids >= vocab_size in `out` (stream offset `start`): raise, or replace by EOS and count."""
        bad = np.flatnonzero(out >= self.vocab_size)
        shards = [bisect_right(self._starts, start + int(p)) - 1 for p in bad]
        if self.on_error == "raise":
            p, shard = int(bad[0]), shards[0]
            raise DataError(
                f"{self._paths[shard]}: token id {int(out[p])} at token offset {start + p - self._starts[shard]} "
                f"is >= the vocabulary size {self.vocab_size} (corrupt shard?)"
            )
        for shard in sorted(set(shards)):
            here = [int(p) for p, s in zip(bad, shards) if s == shard]
            message = (
                f"{self._paths[shard]}: {len(here)} token ids >= vocab size {self.vocab_size} from token offset "
                f"{start + here[0] - self._starts[shard]} replaced by EOS"
            )
            if self.skipped is None:
                log.warning("skipped: %s", message)
            else:
                self.skipped.skip(message)
        out[bad] = self.eos_id


class CorpusWriter:
    """Writes one split's shards: `add` documents in order, `close` at the end.

    A shard is closed once it holds at least `shard_tokens` stream tokens (and at the end), so
    token and raw shard `i` hold the same documents. Each file is written whole under a
    temporary name and renamed into place (local disks) or put as one object (fsspec), so an
    interrupted run never leaves a partial file under a shard's name.

    Each finished shard gets a record: {"split", "shard", "documents", "tokens", "token_shard",
    "index_sha256", "raw_shard"} (the manifest entries, None when not written, and the index
    file's hash, which the manifest does not hold). `on_shard` is called with it (e.g. to
    record progress); `completed` continues a split after those records' shards.
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
        self._raw = self._compressor.compressobj() if self._compressor is not None else None
        self._raw_chunks: list[bytes] = []

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
            self._raw_chunks.append(self._raw.compress(_json_line(text)))
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

    def _finish_shard(self) -> None:
        i, documents = len(self.records), len(self._offsets) - 1
        record: dict[str, Any] = {
            "split": self.split, "shard": i, "documents": documents, "tokens": self._count,
            "token_shard": None, "index_sha256": None, "raw_shard": None,
        }
        if self.write_tokens:
            tokens = np.frombuffer(self._tokens, dtype=self.dtype.newbyteorder("=")).astype(self.dtype)
            if tokens.max() >= self.tokenizer.vocab_size:
                raise ValueError(f"{self.tokenizer.name} tokenizer produced id {tokens.max()} >= its vocab size")
            name, index = token_shard_name(self.split, i), index_name(self.split, i)
            record["index_sha256"] = self._put(index, np.asarray(self._offsets, INDEX_DTYPE).tobytes())
            record["token_shard"] = {
                "path": name, "index": index, "documents": documents, "tokens": self._count,
                "sha256": self._put(name, tokens.tobytes()),
            }
            self.token_shards.append(record["token_shard"])
        if self.write_raw:
            data = b"".join(self._raw_chunks) + self._raw.flush()
            name = raw_shard_name(self.split, i)
            record["raw_shard"] = {
                "path": name, "documents": documents, "bytes": len(data), "sha256": self._put(name, data),
            }
            self.raw_shards.append(record["raw_shard"])
        self.records.append(record)
        self._start_shard()
        if self.on_shard is not None:
            self.on_shard(record)

    def _put(self, name: str, data: bytes) -> str:
        """Write a whole file; its sha256."""
        if self._local:
            with atomic_output(os.path.join(self._root, name)) as tmp, open(tmp, "wb") as f:
                f.write(data)
        else:
            self._fs.pipe_file(join(self._root, name), data)
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
