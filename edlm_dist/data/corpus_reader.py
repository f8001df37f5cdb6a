"""Reading a prepared corpus: its manifest, checked against the files present, and random
access to the token stream of a split (`TokenCorpus`)."""

from __future__ import annotations

import dataclasses
import logging
from bisect import bisect_right
from typing import Any, Literal

import numpy as np

from edlm_dist.data.corpus_format import INDEX_DTYPE, MANIFEST_NAME, Manifest, join, manifest_fingerprint
from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.sources import filesystem

log = logging.getLogger(__name__)


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
        self.length: int = self._starts[-1]
        self._doc_starts = np.cumsum([0] + [s["documents"] for s in shards]).tolist()
        self.documents: int = self._doc_starts[-1]
        self._fs, self._root, self._local = filesystem(folder)
        self._close()

    def _close(self) -> None:
        self._tokens: list[np.ndarray | None] = [None] * len(self._paths)
        self._indexes: list[np.ndarray | None] = [None] * len(self._paths)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None, "_indexes": None}

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
