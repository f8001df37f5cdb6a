"""Reading the pickles inside a DCP checkpoint without running code from it.

DCP keeps its metadata (`<step>/.metadata`) as a plain pickle and stores every non-tensor value as
a `torch.save` payload, and PyTorch treats both as trusted. A checkpoint folder is data that
researchers pass around, so here nothing in it is unpickled but through an allow-list: the
metadata may name only DCP's own metadata classes, `torch.Size`, dtypes and layouts, and paths
(the globals this torch writes, checked by tests/test_checkpoint_safety.py); bytes items are read
with `torch.load(weights_only=True)`. Anything else is refused before it is called, with one line
naming the file and the global (`UnsafeCheckpoint`).

The loader states of checkpoints written before our own state became tensors and JSON were one
`pickle.dumps` of plain data and tensors: `legacy_loads` reads them through the same rules.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import re
from typing import IO, Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.filesystem import _StorageInfo

from edlm_dist.runs.dcp_storage import FsspecReader, is_url

_METADATA_CLASSES = ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                     "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
_METADATA_GLOBALS: dict[tuple[str, str], Any] = {
    **{(dcp_metadata.__name__, name): getattr(dcp_metadata, name) for name in _METADATA_CLASSES
       if hasattr(dcp_metadata, name)},
    (_StorageInfo.__module__, "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    **{("pathlib", name): getattr(pathlib, name) for name in ("PosixPath", "PurePosixPath", "WindowsPath",
                                                               "PureWindowsPath")},
}
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # how torch's weights-only unpickler names what it refused
_TORCH_BOILERPLATE = ("Weights only load failed", "Check the documentation")  # the lines around its reason


class UnsafeCheckpoint(pickle.UnpicklingError):
    """A pickle in a checkpoint that names a global outside the allow-list; the message is one
    line naming the file and the global."""

    user_error = True


def _torch_constant(module: str, name: str) -> Any:
    """A dtype, layout or memory format of torch (what tensor metadata names), else None."""
    value = getattr(torch, name, None) if module == "torch" else None
    return value if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)) else None


class _AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of `allowed` (and torch's dtypes)."""

    def __init__(self, file: IO[bytes], allowed: dict[tuple[str, str], Any], source: str) -> None:
        super().__init__(file)
        self.allowed, self.source = allowed, source

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            found = _torch_constant(module, name)
        if found is None:
            raise UnsafeCheckpoint(f"{self.source} refused: it names the Python global {module}.{name}, which a "
                                   "checkpoint never needs (opening it could run code); only checkpoints of trusted "
                                   "origin written by torch.distributed.checkpoint are read")
        return found


class DamagedMetadata(ValueError):
    """DCP metadata that is not a readable pickle of DCP's classes (damaged, or not DCP's at all)."""

    user_error = True


def load_metadata(stream: IO[bytes], source: str) -> dcp_metadata.Metadata:
    """DCP's metadata pickled in `stream` (the file `source`), through the allow-list."""
    try:
        metadata = _AllowListUnpickler(stream, _METADATA_GLOBALS, source).load()
    except UnsafeCheckpoint:
        raise
    except Exception as err:  # garbage makes the unpickler fail in many ways
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise DamagedMetadata(f"{source} cannot be read as DCP metadata ({reason})") from None
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise DamagedMetadata(f"{source} is not DCP metadata (it holds a {type(metadata).__name__})")
    return metadata


def refusal(err: pickle.UnpicklingError, source: str) -> UnsafeCheckpoint:
    """The UnsafeCheckpoint for what torch's weights-only unpickler refused in `source`."""
    if isinstance(err, UnsafeCheckpoint):
        return err
    match = _REFUSED_GLOBAL.search(str(err))
    if match:
        return UnsafeCheckpoint(f"{source} refused: an item in it names the Python global {match.group(1)}, which a "
                                "checkpoint never needs (opening it could run code)")
    lines = [line.strip() for line in str(err).splitlines()
             if line.strip() and not line.startswith(_TORCH_BOILERPLATE)]
    return UnsafeCheckpoint(f"{source} refused: an item in it is not plain data ({' '.join(lines)[:300]})")


def load_bytes_item(stream: IO[bytes], source: str) -> Any:
    """A non-tensor item of a checkpoint (a `torch.save` payload), read with torch's weights-only
    unpickler; a refused global becomes an UnsafeCheckpoint naming `source` and the global."""
    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise refusal(err, source) from None


def _storage_from_bytes(payload: bytes) -> Any:
    """A tensor storage that `pickle` saved as a `torch.save` payload, read weights-only."""
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


_LEGACY_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


def legacy_loads(payload: bytes, source: str) -> Any:
    """Plain data and CPU tensors that `pickle.dumps` wrote (old checkpoints' loader states)."""
    return _AllowListUnpickler(io.BytesIO(payload), _LEGACY_GLOBALS, source).load()


class _SafeMetadataReader:
    """DCP's storage reader with its metadata read through the allow-list (mixed into DCP's readers)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        rank = kwargs.get("rank")  # DCP's per-rank metadata files, where a mode writes them
        name = ".metadata" if rank is None else f"__{rank}.metadata"
        path = self.fs.concat_path(self.path, name)  # type: ignore[attr-defined]
        with self.fs.create_stream(path, "rb") as stream:  # type: ignore[attr-defined]
            metadata = load_metadata(stream, str(path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id  # type: ignore[attr-defined]
        return metadata


class SafeFileSystemReader(_SafeMetadataReader, dcp.FileSystemReader):
    """A local checkpoint folder, read without running code from it."""


class SafeFsspecReader(_SafeMetadataReader, FsspecReader):
    """A checkpoint at an fsspec URL, read without running code from it."""


def safe_reader(path: str) -> SafeFileSystemReader | SafeFsspecReader:
    """The storage reader of the checkpoint at `path` (a local folder or an fsspec URL)."""
    return SafeFsspecReader(path) if is_url(path) else SafeFileSystemReader(path)


class SafeLoadPlanner(dcp.DefaultLoadPlanner):
    """DCP's load planner with its bytes items read weights-only (DCP's own uses `weights_only=False`)."""

    def __init__(self, source: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        obj = load_bytes_item(value, f"{self.source} (item {fqn})")
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj
