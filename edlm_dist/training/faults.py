"""Fault injection for tests and drills (`[debug] fault`): the failures a cluster job meets,
produced on purpose at a chosen step and rank.

`sigkill`, `sigterm` and `stall` strike rank `fault_rank` in the middle of step `fault_step`
(after its backward pass, before the loss all-reduce); `sigstop` freezes it (SIGSTOP) as it
enters the loss all-reduce, the others already waiting there; `nonfinite_update` writes NaN into that
rank's shard of the first parameter right after the update of that step (an overflowing update,
whatever the loss said); `sigkill_in_checkpoint`, `disk_full`
(ENOSPC) and `write_refused` (EACCES: tests run as root, which ignores permission bits) strike
that rank's shard write of the checkpoint of step `fault_step`, leaving an empty shard file.

A fault fires once per run folder: the rank leaves `<run>/fault_injected` before striking, so
the restarted or requeued job that resumes the run goes through the same step unharmed.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.distributed.tensor import DTensor

from edlm_dist.config import ConfigError, DebugConfig
from edlm_dist.fileio import atomic_write_text

STEP_FAULTS = ("sigkill", "sigterm", "stall")
ALL_REDUCE_FAULTS = ("sigstop",)
UPDATE_FAULTS = ("nonfinite_update",)
WRITE_FAULTS = ("sigkill_in_checkpoint", "disk_full", "write_refused")
FIRED_MARKER = "fault_injected"


class FaultInjector:
    """This rank's share of the configured fault (nothing unless it is the fault's rank)."""

    def __init__(self, cfg: DebugConfig, rank: int, world_size: int, run_folder: Path) -> None:
        if cfg.fault != "none" and cfg.fault_rank >= world_size:
            raise ConfigError(f"debug.fault_rank = {cfg.fault_rank} but the job has only {world_size} ranks")
        self.cfg = cfg
        self.armed = cfg.fault != "none" and rank == cfg.fault_rank
        self.rank = rank
        self.marker = run_folder / FIRED_MARKER

    def _due(self, faults: tuple[str, ...], step: int) -> bool:
        """Whether `faults` include the configured one, due at `step` and not fired before; if so,
        record that it fires."""
        if not (self.armed and self.cfg.fault in faults and step == self.cfg.fault_step) or self.marker.exists():
            return False
        record = {"fault": self.cfg.fault, "step": step, "rank": self.rank, "pid": os.getpid()}
        atomic_write_text(self.marker, json.dumps(record) + "\n")
        print(f"fault injection: {self.cfg.fault} on rank {self.rank} at step {step}", file=sys.stderr, flush=True)
        return True

    @property
    def write_hook(self) -> Callable[[int, str], None] | None:
        """The checkpoint manager's hook on shard writes, when this rank has a write fault to fire."""
        return self.checkpoint_write if self.armed and self.cfg.fault in WRITE_FAULTS else None

    def mid_step(self, step: int) -> None:
        """Called by every rank in the middle of step `step`."""
        if not self._due(STEP_FAULTS, step):
            return
        if self.cfg.fault == "stall":
            time.sleep(self.cfg.stall_s)
        else:
            os.kill(os.getpid(), signal.SIGKILL if self.cfg.fault == "sigkill" else signal.SIGTERM)

    def in_all_reduce(self, step: int) -> None:
        """Called by every rank as it enters the loss all-reduce of step `step`."""
        if self._due(ALL_REDUCE_FAULTS, step):
            os.kill(os.getpid(), signal.SIGSTOP)

    def after_update(self, step: int, model: torch.nn.Module) -> None:
        """Called by every rank right after the update of step `step`."""
        if not self._due(UPDATE_FAULTS, step):
            return
        first = next(model.parameters())
        with torch.no_grad():
            (first.to_local() if isinstance(first, DTensor) else first).fill_(float("nan"))

    def checkpoint_write(self, step: int, path: str) -> None:
        """Called once this rank has opened the shard file `path` of the checkpoint of `step`."""
        if not self._due(WRITE_FAULTS, step):
            return
        if self.cfg.fault == "sigkill_in_checkpoint":
            os.kill(os.getpid(), signal.SIGKILL)
        code = errno.ENOSPC if self.cfg.fault == "disk_full" else errno.EACCES
        raise OSError(code, os.strerror(code), path)
