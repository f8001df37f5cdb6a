"""File output that is atomic and fails in one line: readers see the old file or the complete
new one, never a part of it, and a storage problem (a full disk, a read-only or unwritable
folder, a path through a file) is a `StorageError` naming the path and the OS error."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from typing import Iterable, Iterator

PROBE_BYTES = 64 * 1024  # enough to need fresh blocks on any file system
TEMPORARY_SUFFIX = ".tmp"  # of the temporary files of atomic writes, `.<file name>.<random>.tmp`


class StorageError(OSError):
    """A path that cannot be written (or read) because of the storage, named in the message with
    the OS error, e.g. `cannot write runs/x/summary.json: [Errno 28] No space left on device`."""

    user_error = True  # `exit_on_user_error` prints it as one line and exits 2

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @classmethod
    def of(cls, err: BaseException, path: str | os.PathLike[str], action: str = "write") -> StorageError:
        """The StorageError for `err`, met trying to `action` `path` (the file the OS names, when
        it names another one, is given too)."""
        path = os.fspath(path)
        culprit = getattr(err, "filename", None)
        where = path if culprit in (None, path) else f"{path} ({culprit})"
        return cls(f"cannot {action} {where}: {describe_os_error(err)}", getattr(err, "errno", None))


def describe_os_error(err: BaseException) -> str:
    """`[Errno 28] No space left on device`, or the first line of any other error."""
    code = getattr(err, "errno", None)
    if isinstance(err, OSError) and code:
        return f"[Errno {code}] {err.strerror or os.strerror(code)}"
    return (str(err) or type(err).__name__).splitlines()[0]


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike[str], action: str = "write") -> Iterator[None]:
    """Turn an OSError inside the block into a StorageError naming `path`."""
    try:
        yield
    except StorageError:
        raise
    except OSError as err:
        raise StorageError.of(err, path, action) from err


def _temporary_prefix(path: str) -> str:
    """How the names of the temporary files (or folders) of atomic writes of `path` begin: `.<name>.`."""
    return f".{os.path.basename(path)}."


def leftover_temporaries(path: str | os.PathLike[str]) -> list[str]:
    """The temporary files that interrupted atomic writes of `path` left beside it (a process
    killed between creating one and renaming it: an ordinary failure removes its own)."""
    path = os.fspath(path)
    pattern = glob.escape(os.path.join(os.path.dirname(path), _temporary_prefix(path))) + "*" + TEMPORARY_SUFFIX
    return sorted(glob.glob(pattern))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path beside `path`; once the block succeeds, the file written there is
    flushed to disk and renamed over `path` (readable by all, as outputs are meant to be shared).
    On error the temporary file is removed and `path` is untouched; an OSError becomes a
    StorageError naming `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    prefix = _temporary_prefix(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=TEMPORARY_SUFFIX)
        os.close(fd)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, StorageError):
            raise
        if os.path.basename(str(getattr(err, "filename", None) or "")).startswith(prefix):
            err.filename = path  # the temporary file stands for `path`
        raise StorageError.of(err, path) from err
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary folder beside `path`; once the block succeeds it is renamed to `path`,
    which must not exist (nothing is replaced). On error the temporary folder is removed and
    `path` never appears; an OSError becomes a StorageError naming `path`."""
    path = os.fspath(path).rstrip("/")
    if os.path.lexists(path):
        raise StorageError(f"{path} exists; give a new folder (nothing is overwritten)", errno.EEXIST)
    parent = os.path.dirname(path) or "."
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=_temporary_prefix(path), suffix=TEMPORARY_SUFFIX)
        yield tmp
        os.chmod(tmp, 0o755)
        os.rename(tmp, path)  # refuses a non-empty folder that appeared meanwhile
        tmp = None
    except StorageError:
        raise
    except OSError as err:
        raise StorageError.of(err, path) from err
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def refuse_existing(paths: Iterable[str | os.PathLike[str]], overwrite: bool, instead: str = "another --out") -> None:
    """Unless `overwrite`, refuse the first of `paths` that exists (a StorageError naming it and
    `--overwrite`, or `instead`): no command replaces a file it did not write unless told to."""
    if overwrite:
        return
    existing = next((os.fspath(path) for path in paths if os.path.lexists(path)), None)
    if existing is not None:
        raise StorageError(f"{existing} already exists: give --overwrite to replace it, or {instead}", errno.EEXIST)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_problem(folder: str) -> OSError | None:
    """The OS error that writing a small file into `folder` (a local path or an fsspec URL) meets,
    or None when it can be written: finds the real cause (ENOSPC, EROFS, ...) behind a write that
    failed with a vaguer message. The folder is created when missing; the probe file is removed."""
    try:
        if "://" in folder:
            import fsspec

            fs, root = fsspec.core.url_to_fs(folder)
            probe = root.rstrip("/") + "/.write-probe"
            fs.makedirs(root, exist_ok=True)
            fs.pipe_file(probe, b"\0" * PROBE_BYTES)
            fs.rm(probe)
            return None
        if os.path.exists(folder) and not os.path.isdir(folder):
            return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.")
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        return err
    return None


def check_writable(folder: str, what: str) -> None:
    """Raise a StorageError naming `what` (e.g. "the run folder") when `folder` cannot be written."""
    try:
        problem = write_problem(folder)
    except (ImportError, ValueError) as err:  # an fsspec protocol that is not installed or not valid
        raise StorageError(f"cannot write to {what} {folder}: {describe_os_error(err)}") from err
    if problem is not None:
        raise StorageError(f"cannot write to {what} {folder}: {describe_os_error(problem)}", problem.errno)
