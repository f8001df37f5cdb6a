"""Shard integrity: the shards of a prepared corpus checked against the sha256 their manifest
records, so that bytes changed on disk after preparation (a bad disk, a copy cut short and
padded, a shard replaced by hand) are never trained on without a word.

Hashing a corpus costs one read of it, so the trainer splits the shards over its ranks and keeps
what it has checked beside the run (`verified_shards.json`: each shard's version, i.e. its size
with its modification and change times or the store's ETag): a restart reads nothing again, and a
shard rewritten since is checked anew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from edlm_dist.data.errors import DataError
from edlm_dist.data.corpus_format import file_sha256
from edlm_dist.data.sources import filesystem

VERSION_KEYS = ("mtime", "created", "ETag", "etag", "LastModified")  # what fsspec stores tell of a file's version


@dataclass(frozen=True)
class ShardFile:
    """A shard of a prepared corpus and the sha256 its manifest records."""

    url: str
    sha256: str


def file_version(url: str) -> str | None:
    """What identifies the current bytes of `url` without reading them: its size with its times or
    ETag; None where the store tells none of them (the shard is then checked on every start)."""
    fs, path, _ = filesystem(url)
    try:
        info = fs.info(path)
    except OSError as err:
        raise DataError(f"{url}: cannot read ({err})") from err
    stamps = [info.get(key) for key in VERSION_KEYS]
    return repr((info.get("size"), *stamps)) if any(s is not None for s in stamps) else None


def verify_shards(
    shards: Sequence[ShardFile], verified: dict[str, str], progress: bool = False,
) -> tuple[dict[str, str], list[str]]:
    """Hash every shard whose current version is not recorded in `verified` (url -> version)
    and compare with its manifest. Returns the versions of the shards that are known good now
    (to record for next time) and one message per shard whose bytes differ."""
    good: dict[str, str] = {}
    problems: list[str] = []
    for shard in tqdm(shards, desc="verifying shards", unit="shard", disable=not progress):
        version = file_version(shard.url)
        if version is not None and verified.get(shard.url) == version:
            good[shard.url] = version
            continue
        digest = file_sha256(shard.url)
        if digest is None:
            problems.append(f"{shard.url}: listed in the corpus manifest but missing")
        elif digest != shard.sha256:
            problems.append(f"{shard.url}: its sha256 is {digest[:16]}..., the corpus manifest says "
                            f"{shard.sha256[:16]}... (corrupt or replaced since preparation)")
        elif version is not None:
            good[shard.url] = version
    return good, problems
