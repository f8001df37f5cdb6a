"""DCP's storage for a checkpoint folder: a local path, or any fsspec URL.

What a commit guarantees on a URL: every rank's shard files and the `.metadata` file are closed
(for an object store: uploaded, which makes each object whole and durable) before the `COMMITTED`
marker is written. A stream of such a store has no fsync, and none is needed: an object either
exists whole or not at all, and the marker, written last, is the commit. So DCP is told to fsync
only where the URL reaches a local disk (file://), and not to try (and warn, as torch 2.15 does)
where there is nothing to sync.
"""

from __future__ import annotations

import fsspec
from fsspec.implementations.local import LocalFileSystem
from torch.distributed.checkpoint import FileSystemWriter

try:  # the public module of torch >= 2.15; before that only the private one
    from torch.distributed.checkpoint.fsspec_filesystem import FsspecReader, FsspecWriter
except ImportError:
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

__all__ = ["FsspecReader", "FsspecWriter", "checkpoint_writer", "is_url"]


def is_url(path: str) -> bool:
    return "://" in path


def checkpoint_writer(path: str) -> FileSystemWriter | FsspecWriter:
    """DCP's writer of the checkpoint folder `path`, fsyncing exactly where storage can sync."""
    if not is_url(path):
        return FileSystemWriter(path)
    fs, _ = fsspec.core.url_to_fs(path)
    return FsspecWriter(path, sync_files=isinstance(fs, LocalFileSystem))
