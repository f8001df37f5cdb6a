"""Reading a prepared corpus: its manifest, checked against the files present, and random
access to the token stream of a split (`TokenCorpus`)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import zlib
from bisect import bisect_right
from typing import Any, Literal

import numpy as np

from edlm_dist.data.corpus_format import (
    CHECK_DTYPE,
    INDEX_DTYPE,
    MANIFEST_NAME,
    Manifest,
    file_sha256,
    join,
    manifest_fingerprint,
)
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
        tokens = [s for s in info["token_shards"] if not {s["path"], s["index"], s.get("checks")} & bad.keys()]
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
    """Random access to the token stream of one split of a prepared corpus, verified as it is read.

    Local shards are memory-mapped (opened on first use, kept open, dropped when pickled so a
    corpus can be sent to dataloader workers); remote shards are read with ranged requests.

    Nothing corrupt is returned: every read is checked against the shard's check file (the
    CRC-32 of each chunk of `check_tokens` tokens, itself checked against its sha256 when first
    loaded); a local chunk is hashed once per process, a remote read is fetched whole chunks at a
    time and hashed each time. Shards of a format v1 corpus have no check file: each is hashed
    whole against its manifest sha256 on its first read in the process, unless `shards_verified`
    (the caller compared them all with their sha256: the trainer does under data.verify_shards).
    A chunk (or v1 shard) that fails its check, or token ids >= vocab_size, raise a DataError
    naming the shard and the token offsets, or with on_error="skip" are replaced by EOS (a
    document boundary, the least misleading token to train on) and counted once per read and
    shard in `skipped` (logged when it is None). A check or index file that fails its sha256
    always raises.
    """

    def __init__(
        self, folder: str, split: str, *, on_error: Literal["raise", "skip"] = "raise",
        skipped: SkipCounter | None = None, manifest: Manifest | None = None, shards_verified: bool = False,
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
        self._shards = self.manifest.splits[split]["token_shards"]
        if not self._shards:
            raise DataError(f"{folder}: the {split} split has no token shards (prepared with --format raw?)")
        self.vocab_size = int(self.manifest.tokenizer["vocab_size"])
        self.eos_id = int(self.manifest.tokenizer["eos_id"])
        self.fingerprint = manifest_fingerprint(self.manifest)
        self.dtype = np.dtype(self.manifest.dtype).newbyteorder("<")
        self.check_tokens = self.manifest.check_tokens
        self.shards_verified = shards_verified
        self._check_ids = int(np.iinfo(self.dtype).max) >= self.vocab_size
        self._paths = [join(folder, s["path"]) for s in self._shards]
        self._index_paths = [join(folder, s["index"]) for s in self._shards]
        self._starts = np.cumsum([0] + [s["tokens"] for s in self._shards]).tolist()
        self.length: int = self._starts[-1]
        self._doc_starts = np.cumsum([0] + [s["documents"] for s in self._shards]).tolist()
        self.documents: int = self._doc_starts[-1]
        self._fs, self._root, self._local = filesystem(folder)
        if self.check_tokens is None and not shards_verified:
            log.warning("%s was prepared before per-chunk checks (format v1): each %s shard is hashed whole when "
                        "first read; prepare it again for cheaper checks", folder, split)
        self._close()

    def _close(self) -> None:
        shards = len(self._paths)
        self._tokens: list[np.ndarray | None] = [None] * shards
        self._indexes: list[np.ndarray | None] = [None] * shards
        self._checks: list[np.ndarray | None] = [None] * shards
        self._verified: list[bytearray | None] = [None] * shards  # a flag per chunk of a local shard: hashed, good
        # format v1: the sha256 found of each shard hashed here (taken as the manifest's when shards_verified)
        self._digests: list[str | None] = [s["sha256"] if self.shards_verified else None for s in self._shards]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _PER_PROCESS}

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
        base = self._starts[shard]
        return self.read(base + int(index[j]), base + int(index[j + 1]) - 1)

    def _slice(self, shard: int, start: int, stop: int) -> np.ndarray:
        """Stream tokens [start, stop) of one shard, in the file's dtype, verified."""
        lo, hi = start - self._starts[shard], stop - self._starts[shard]
        if self.check_tokens is None:
            return self._legacy_slice(shard, lo, hi)
        size = self.check_tokens
        first, last = lo // size, -(-hi // size)  # the chunks [lo, hi) lies in
        if self._local:
            tokens, verified = self._tokens[shard], self._verified[shard]
            if tokens is None or verified is None:
                tokens = self._mapped(shard)
                verified = self._verified[shard] = bytearray(len(self._checks_of(shard)))
            unchecked = 0 in verified[first:last]  # a bytearray: cheaper than numpy on a few flags
            bad = self._bad_chunks(shard, tokens[first * size : last * size], first, verified) if unchecked else []
            window = tokens[lo:hi]
        else:
            chunks = self._fetch(shard, first * size, min(last * size, self._shard_tokens(shard)))
            bad = self._bad_chunks(shard, chunks, first)
            window = chunks[lo - first * size : hi - first * size]
        if not bad:
            return window
        spans = [(c * size, min((c + 1) * size, self._shard_tokens(shard))) for c in bad]
        return self._corrupt(shard, window, lo, spans,
                             f"do not match their CRC-32 in {join(self.folder, self._shards[shard]['checks'])}")

    def _bad_chunks(self, shard: int, window: np.ndarray, first: int, verified: bytearray | None = None) -> list[int]:
        """The chunks of `window` (the shard's tokens from chunk `first` on, whole chunks but the
        shard's last) whose CRC-32 differs from the check file's. With `verified` (a flag per chunk
        of the shard), flagged chunks are not hashed again and those that match are flagged."""
        size, checks = self.check_tokens, self._checks_of(shard)
        bad = []
        for chunk in range(first, first + -(-len(window) // size)):
            if verified is not None and verified[chunk]:
                continue
            if zlib.crc32(window[(chunk - first) * size : (chunk - first + 1) * size]) != checks[chunk]:
                bad.append(chunk)
            elif verified is not None:
                verified[chunk] = 1
        return bad

    def _legacy_slice(self, shard: int, lo: int, hi: int) -> np.ndarray:
        """Tokens [lo, hi) of a format v1 shard, which is hashed whole on its first read here."""
        recorded = self._shards[shard]["sha256"]
        if self._digests[shard] is None:
            self._digests[shard] = file_sha256(self._paths[shard])
        window = self._mapped(shard)[lo:hi] if self._local else self._fetch(shard, lo, hi)
        found = self._digests[shard]
        if found == recorded:
            return window
        return self._corrupt(shard, window, lo, [(0, self._shard_tokens(shard))],
                             f"are in a shard whose sha256 is {str(found)[:16]}..., the corpus manifest says "
                             f"{recorded[:16]}... (a format v1 corpus cannot tell where it differs: prepare it again)")

    def _corrupt(self, shard: int, window: np.ndarray, lo: int, spans: list[tuple[int, int]], why: str) -> np.ndarray:
        """`window` (the shard's tokens from `lo` on) overlapping the corrupt token `spans`: raise,
        or give it back with those tokens replaced by EOS and count it."""
        itemsize = self.dtype.itemsize
        a, b = spans[0]
        message = f"{self._paths[shard]}: token offsets {a}-{b} (bytes {a * itemsize}-{b * itemsize}) {why}"
        if len(spans) > 1:
            message += f" (and {len(spans) - 1} more chunks)"
        if self.on_error == "raise":
            raise DataError(message)
        self._skip(f"{message}; replaced by EOS")
        window = window.copy()
        for a, b in spans:
            window[max(a - lo, 0) : max(b - lo, 0)] = self.eos_id
        return window

    def _skip(self, message: str) -> None:
        if self.skipped is None:
            log.warning("skipped: %s", message)
        else:
            self.skipped.skip(message)

    def _shard_tokens(self, shard: int) -> int:
        return self._starts[shard + 1] - self._starts[shard]

    def _mapped(self, shard: int) -> np.ndarray:
        """The tokens of a local shard, memory-mapped on first use."""
        tokens = self._tokens[shard]
        if tokens is None:
            tokens = self._tokens[shard] = self._map(self._paths[shard], self.dtype, self._shard_tokens(shard))
        return tokens

    def _fetch(self, shard: int, lo: int, hi: int) -> np.ndarray:
        """Tokens [lo, hi) of a remote shard, by a ranged request."""
        size = self.dtype.itemsize
        try:
            data = self._fs.cat_file(self._remote(shard, "path"), start=lo * size, end=hi * size)
        except OSError as e:
            raise DataError(f"{self._paths[shard]}: cannot read ({e})") from e
        if len(data) != (hi - lo) * size:
            raise DataError(f"{self._paths[shard]}: short read at byte {lo * size} (truncated shard?)")
        return np.frombuffer(data, self.dtype)

    def _remote(self, shard: int, key: str) -> str:
        return join(self._root, self._shards[shard][key])

    def _whole_file(self, shard: int, key: str, dtype: np.dtype, count: int) -> np.ndarray:
        """The shard's `key` file ("index" or "checks"): `count` items, checked against its sha256
        in the manifest when it has one (format v2)."""
        url = join(self.folder, self._shards[shard][key])
        if self._local:
            items = self._map(url, dtype, count)
        else:
            try:
                items = np.frombuffer(self._fs.cat_file(self._remote(shard, key)), dtype)
            except OSError as e:
                raise DataError(f"{url}: cannot read ({e})") from e
            if len(items) != count:
                raise DataError(f"{url}: {len(items)} entries, the manifest implies {count} (truncated or replaced?)")
        recorded = self._shards[shard].get(f"{key}_sha256")
        if recorded is not None and (digest := hashlib.sha256(items).hexdigest()) != recorded:
            raise DataError(f"{url}: its sha256 is {digest[:16]}..., the corpus manifest says {recorded[:16]}... "
                            f"(corrupt or replaced since preparation)")
        return items

    def _checks_of(self, shard: int) -> np.ndarray:
        """The CRC-32 per chunk of a shard (format v2), loaded and checked on first use."""
        checks = self._checks[shard]
        if checks is None:
            count = -(-self._shard_tokens(shard) // self.check_tokens)
            checks = self._checks[shard] = self._whole_file(shard, "checks", CHECK_DTYPE, count)
        return checks

    def _index(self, shard: int) -> np.ndarray:
        """The document offsets of a shard, loaded and checked on first use: its sha256 (format v2),
        then that they rise from 0 to the shard's length (each document holds at least its EOS)."""
        index = self._indexes[shard]
        if index is not None:
            return index
        entries = self._doc_starts[shard + 1] - self._doc_starts[shard] + 1
        index = self._whole_file(shard, "index", INDEX_DTYPE, entries)
        path, shard_tokens = self._index_paths[shard], self._shard_tokens(shard)
        if index[0] != 0 or index[-1] != shard_tokens:
            raise DataError(f"{path}: expected offsets from 0 to {shard_tokens}, found {index[0]} to {index[-1]}")
        falls = np.flatnonzero(np.diff(index) <= 0)
        if len(falls):
            j = int(falls[0]) + 1
            raise DataError(f"{path}: entry {j} (byte {j * INDEX_DTYPE.itemsize}) = {index[j]} is not above "
                            f"entry {j - 1} = {index[j - 1]}")
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
            self._skip(
                f"{self._paths[shard]}: {len(here)} token ids >= vocab size {self.vocab_size} from token offset "
                f"{start + here[0] - self._starts[shard]} replaced by EOS"
            )
        out[bad] = self.eos_id


_PER_PROCESS = ("_tokens", "_indexes", "_checks", "_verified", "_digests")  # memory maps and what was checked here
