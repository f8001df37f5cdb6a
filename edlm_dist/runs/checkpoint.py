"""Checkpoints with torch.distributed.checkpoint (DCP): a folder per step, committed last.

A checkpoint counts only once its `COMMITTED` marker exists, and the marker is written after
every rank's shards (and DCP's metadata) are complete; `latest` is derived from committed
folders alone, so a save that crashed halfway is never taken for the newest state. No rename
is relied on, since object stores have none: the folder may be any fsspec URL (local paths,
`file://`, `s3://`, `gs://`). DCP reshards on load, so a checkpoint written by N ranks loads
on M ranks and on another mesh shape. A save that fails (full disk, a store refusing writes)
raises a CheckpointError naming the checkpoint and the OS error, on every rank alike, and its
torn folder is removed (freeing the space a full disk needs for the `failed` marker). A load
that fails names the missing or truncated file when one is the cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import posixpath
import re
import time
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterator

import fsspec
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter

from edlm_dist.fileio import describe_os_error, write_problem
from edlm_dist.runs.dcp_storage import FsspecWriter, checkpoint_writer
from edlm_dist.runs.safe_pickle import DamagedMetadata, SafeLoadPlanner, refusal, safe_reader

MARKER = "COMMITTED"
STEP_DIR = re.compile(r"^step_(\d{8})$")  # a checkpoint folder: step_ and the step in 8 digits
SHARD_SUFFIX = ".distcp"  # DCP's data files (the metadata file is rank 0's `.metadata`)
WriteHook = Callable[[int, str], None]  # (step, shard path), called as a shard file is opened

# DCP warns on every save and load without a process group, also from its async writer thread;
# a single process is a supported case here, not a mistake.
warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, named in the message."""

    user_error = True


def checkpoint_folder(run_dir: Path, folder: str) -> str:
    """Where a run in `run_dir` keeps its checkpoints: `checkpoint.folder` inside it, or as given when a URL."""
    return folder if "://" in folder else str(run_dir / folder)


class CheckpointManager:
    """Saves, finds and prunes the checkpoints of one run.

    Keeps the newest `keep_last` committed checkpoints plus every one whose step is a multiple
    of `keep_every` (when > 0). With `async_save`, the shards are written in the background and
    committed by the first `poll()` (called at every step boundary) that finds every rank's write
    finished, so a crash loses at most the steps since the last save; a save or `close()` waits for
    the one under way. `write_hook` (fault injection) sees every shard file this rank opens for writing.
    """

    def __init__(self, folder: str, keep_last: int, keep_every: int = 0, async_save: bool = False,
                 write_hook: WriteHook | None = None) -> None:
        self.folder = str(folder)
        self.fs, self.root = fsspec.core.url_to_fs(self.folder)
        self.keep_last, self.keep_every, self.async_save = keep_last, keep_every, async_save
        self.write_hook = write_hook
        self._pending: tuple[int, Future, bool] | None = None
        self._async_group = self._poll_group = None
        if async_save and dist.is_initialized():
            # the background writes must not share a communicator with training collectives, nor
            # with the polls that ask every rank whether its write has finished
            self._async_group = dist.new_group(backend="gloo")
            self._poll_group = dist.new_group(backend="gloo")

    def path(self, step: int) -> str:
        """Where the checkpoint of `step` lives, in the form the folder was given (path or URL)."""
        return posixpath.join(self.folder, f"step_{step:08d}")

    def _fs_path(self, step: int) -> str:
        return posixpath.join(self.root, f"step_{step:08d}")

    def _step_dirs(self) -> dict[int, str]:
        if not self.fs.isdir(self.root):
            return {}
        dirs = {}
        for entry in self.fs.ls(self.root, detail=False):
            match = STEP_DIR.match(posixpath.basename(entry.rstrip("/")))
            if match:
                dirs[int(match.group(1))] = entry
        return dirs

    def committed_steps(self) -> list[int]:
        return sorted(s for s, d in self._step_dirs().items() if self.fs.exists(posixpath.join(d, MARKER)))

    def latest(self) -> int | None:
        steps = self.committed_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: dict[str, Any], *, is_main: bool = True) -> None:
        """Write `state` (a DCP state dict, on every rank) as the checkpoint of `step`."""
        self.wait()
        if is_main and self.fs.exists(self._fs_path(step)):
            self.fs.rm(self._fs_path(step), recursive=True)  # an uncommitted leftover of a crashed save
        _barrier()
        writer = self._writer(step)
        with self._write_errors(step, is_main):
            if self.async_save:
                future = dcp.async_save(state, checkpoint_id=self.path(step), storage_writer=writer,
                                        process_group=self._async_group)
                self._pending = (step, future, is_main)
                return
            dcp.save(state, checkpoint_id=self.path(step), storage_writer=writer, no_dist=not dist.is_initialized())
        self._commit(step, is_main)

    def poll(self) -> int | None:
        """Commit the background save if every rank's write has finished (a collective while a
        save is under way: every rank calls this at the same point); the step committed, or None."""
        if self._pending is None:
            return None
        step, future, _ = self._pending
        done = torch.tensor([int(future.done())])
        if self._poll_group is not None:
            dist.all_reduce(done, op=dist.ReduceOp.MIN, group=self._poll_group)
        if not done.item():
            return None
        self.wait()
        return step

    def wait(self) -> None:
        """Finish and commit a background save, if one is under way."""
        if self._pending is None:
            return
        step, future, is_main = self._pending
        self._pending = None
        with self._write_errors(step, is_main):
            future.result()
        self._commit(step, is_main)

    @contextlib.contextmanager
    def _write_errors(self, step: int, is_main: bool) -> Iterator[None]:
        """Turn a failed write of the checkpoint of `step` into one CheckpointError naming it and
        the OS error (found by probing the folder when DCP's message does not carry one, as
        torch.save's "unexpected pos" on a full disk does); the torn folder is removed."""
        try:
            yield
        except (Exception, dcp.CheckpointException) as err:  # the latter is a BaseException
            cause = _first_failure(err)
            if isinstance(cause, OSError) and cause.errno:
                reason = str(cause)  # with the file it names
            else:
                reason = describe_os_error(write_problem(self.folder) or cause)
            if is_main:
                with contextlib.suppress(OSError):
                    self.fs.rm(self._fs_path(step), recursive=True)
            raise CheckpointError(f"cannot write checkpoint {self.path(step)}: {reason}") from err

    def _writer(self, step: int) -> FileSystemWriter | FsspecWriter:
        """DCP's writer for the checkpoint of `step` (dcp_storage), with `write_hook` on its file opens."""
        writer = checkpoint_writer(self.path(step))
        if self.write_hook is not None:
            writer.fs = _HookedFileSystem(writer.fs, lambda path: self.write_hook(step, path))
        return writer

    def close(self) -> None:
        self.wait()

    def _commit(self, step: int, is_main: bool) -> None:
        _barrier()  # every rank's shards are on storage
        if is_main:
            marker = json.dumps({"step": step, "time": time.time()}) + "\n"
            self.fs.pipe_file(posixpath.join(self._fs_path(step), MARKER), marker.encode())
            self._prune()
        _barrier()

    def load(self, step: int, state: dict[str, Any]) -> None:
        """Fill `state` in place from the committed checkpoint of `step`, after checking that
        every tensor it holds has the shape of `state`'s."""
        path = self.path(step)
        if not self.fs.exists(posixpath.join(self._fs_path(step), MARKER)):
            raise CheckpointError(f"checkpoint {path} is not committed (no {MARKER} marker)")
        stored = self.stored_shapes(step)
        for key, shape in _tensor_shapes(state).items():
            if key in stored and stored[key] != shape:
                raise CheckpointError(f"checkpoint {path} does not fit this run: {key} has shape {list(stored[key])} "
                                      f"there, {list(shape)} here")
        try:
            read_checkpoint(state, path, no_dist=not dist.is_initialized())
        except (Exception, dcp.CheckpointException) as err:  # the latter is a BaseException
            raise CheckpointError(f"cannot load checkpoint {path}: {describe_load_error(err, path)}") from err

    def stored_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """The global shape of every tensor in the checkpoint of `step` (`stored_shapes`), an
        unreadable or refused checkpoint as a CheckpointError."""
        path = self.path(step)
        try:
            return stored_shapes(path)
        except (Exception, dcp.CheckpointException) as err:
            raise CheckpointError(f"cannot load checkpoint {path}: {describe_load_error(err, path)}") from err

    def _prune(self) -> None:
        """Delete committed checkpoints past the retention policy, and crashed saves older than
        the newest committed one."""
        dirs = self._step_dirs()
        committed = self.committed_steps()
        keep = set(committed[-self.keep_last :])
        if self.keep_every:
            keep |= {s for s in committed if s % self.keep_every == 0}
        newest = committed[-1] if committed else -1
        for step, entry in dirs.items():
            if step not in keep and (step in committed or step < newest):
                self.fs.rm(entry, recursive=True)


def _first_failure(err: BaseException) -> BaseException:
    """The error behind a DCP failure: DCP wraps the errors met reading or writing shards (per
    rank) in a CheckpointException, a BaseException only."""
    failures = err.failures if isinstance(err, dcp.CheckpointException) else {}
    return next(iter(failures.values()))[0] if failures else err


def describe_load_error(err: BaseException, path: str) -> str:
    """One line saying why DCP could not read the checkpoint at `path`: a pickle refused by the
    allow-list, the missing or truncated file (DCP itself says only e.g. "EOFError"), else the error."""
    cause = _first_failure(err)
    if isinstance(cause, DamagedMetadata):
        return str(cause)
    if isinstance(cause, pickle.UnpicklingError):  # also a tensor file that is a pickle of something else
        return str(refusal(cause, path))
    return damaged_file(path) or describe_os_error(cause)


def read_checkpoint(state: dict[str, Any], path: str, *, no_dist: bool) -> None:
    """Fill `state` in place from the checkpoint at `path` (DCP, resharding as needed), reading
    its pickles through the allow-list (`safe_pickle`): nothing in the checkpoint runs."""
    dcp.load(state, checkpoint_id=path, storage_reader=safe_reader(path), planner=SafeLoadPlanner(path),
             no_dist=no_dist)


def check_items(path: str) -> None:
    """Read every non-tensor item of the checkpoint at `path` through the weights-only loader, so a
    checkpoint holding anything a program would refuse is refused by every program, including
    those that read only its weights (no collective: every rank reads them; they are small)."""
    metadata = safe_reader(path).read_metadata().state_dict_metadata
    items = {key: None for key, item in metadata.items() if isinstance(item, dcp.BytesStorageMetadata)}
    if items:
        read_checkpoint(items, path, no_dist=True)


def stored_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Global shape of every tensor in the checkpoint at `path`, by flattened key (`model.embed.weight`)."""
    metadata = safe_reader(path).read_metadata().state_dict_metadata
    return {key: tuple(m.size) for key, m in metadata.items() if isinstance(m, dcp.TensorStorageMetadata)}


def _tensor_shapes(state: dict[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """The global shape of every tensor of a nested state dict, by DCP's flattened key."""
    shapes = {}
    for key, value in state.items():
        if isinstance(value, dict):
            shapes.update(_tensor_shapes(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            shapes[f"{prefix}{key}"] = tuple(value.shape)
    return shapes


def damaged_file(path: str) -> str | None:
    """`<file> is missing` or `<file> is truncated (...)` for the first data file of the checkpoint
    at `path` that is shorter than its metadata says, or None when every one is whole."""
    try:
        metadata = safe_reader(path).read_metadata()
    except (Exception, dcp.CheckpointException) as err:
        return f"its metadata {posixpath.join(path, '.metadata')} cannot be read ({describe_os_error(err)})"
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    fs, root = fsspec.core.url_to_fs(path)
    for name, size in sorted(needed.items()):
        try:
            actual = fs.size(posixpath.join(root, name))
        except FileNotFoundError:
            return f"{posixpath.join(path, name)} is missing"
        if actual < size:
            return f"{posixpath.join(path, name)} is truncated ({actual} bytes; the checkpoint's metadata needs {size})"
    return None


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class _HookedFileSystem:
    """DCP's file system with a hook called once each shard file is open for writing."""

    def __init__(self, fs: Any, on_shard_open: Callable[[str], None]) -> None:
        self._fs, self._on_shard_open = fs, on_shard_open

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
        with self._fs.create_stream(path, mode) as stream:
            if "w" in mode and os.fspath(path).endswith(SHARD_SUFFIX):
                self._on_shard_open(os.fspath(path))
            yield stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)
