"""Checkpoints with torch.distributed.checkpoint (DCP): a folder per step, committed last.

A checkpoint counts only once its `COMMITTED` marker exists, and the marker is written after
every shard; `latest` is derived from committed folders alone, so a save that crashed halfway
is never taken for the newest state (no rename is relied on: object stores have none).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

MARKER = "COMMITTED"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, named in the message."""

    user_error = True


class CheckpointManager:
    """Saves and finds the checkpoints of one run folder, keeping the newest `keep_last`."""

    def __init__(self, folder: str | Path, keep_last: int) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last

    def path(self, step: int) -> Path:
        return self.folder / f"step_{step:08d}"

    def committed_steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        steps = []
        for child in self.folder.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / MARKER).is_file():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def latest(self) -> int | None:
        steps = self.committed_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: dict[str, Any], *, is_main: bool = True) -> Path:
        """Write `state` (a DCP state dict) as the checkpoint of `step`, then commit it."""
        path = self.path(step)
        if is_main and path.exists():
            shutil.rmtree(path)  # an uncommitted leftover of a crashed save
        _barrier()
        with _single_process_quiet():
            dcp.save(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
        _barrier()
        if is_main:
            marker = {"step": step, "time": time.time()}
            (path / MARKER).write_text(json.dumps(marker) + "\n")
            self._prune()
        _barrier()
        return path

    def load(self, step: int, state: dict[str, Any]) -> None:
        """Fill `state` in place from the committed checkpoint of `step`."""
        path = self.path(step)
        if not (path / MARKER).is_file():
            raise CheckpointError(f"checkpoint {path} is not committed (no {MARKER} marker)")
        try:
            with _single_process_quiet():
                dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
        except Exception as err:  # DCP wraps shard errors in several exception types
            raise CheckpointError(f"cannot load checkpoint {path}: {str(err).splitlines()[0]}") from err

    def _prune(self) -> None:
        for step in self.committed_steps()[: -self.keep_last]:
            shutil.rmtree(self.path(step), ignore_errors=True)


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every single-process save and load; a single process is a supported case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
