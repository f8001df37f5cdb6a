"""Whether a program's memory plan (`edlm_dist.runs.memory_plan`) fits the device it runs on,
decided before anything is built or written: a run that cannot fit is refused with one line naming
the figure, the capacity and the settings to change.

The capacity of a rank is its CUDA device's free memory, or on a CPU the host's available memory
(`MemAvailable`, or the cgroup's limit less its usage when that is lower) shared by the ranks of
the host (torchrun's LOCAL_WORLD_SIZE). With several ranks they decide together: when one of them
cannot fit, every rank refuses with its message, so none waits for the others at a collective.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from edlm_dist.config import ConfigError, SampleProgram, TrainProgram
from edlm_dist.distributed import all_gather_object
from edlm_dist.runs.memory_plan import MemoryPlan, format_bytes, planned_vocab_size, sampling_plan, training_plan
from edlm_dist.runs.weights import Checkpoint, checkpoint_vocab_size, run_of_task


class MemoryPlanError(ConfigError):
    """A program whose memory plan does not fit its device (one line: the figures and what to change)."""


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None  # absent, or "max": no limit


def _cgroup_room() -> int | None:
    """The memory this process's cgroup may still take (limit less usage), None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            folder = Path("/sys/fs/cgroup") / path.lstrip("/")
            limit, usage = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
        elif "memory" in controllers.split(","):  # cgroup v1 (the mount shows this process's group)
            folder = Path("/sys/fs/cgroup/memory")
            limit, usage = _read_int(folder / "memory.limit_in_bytes"), _read_int(folder / "memory.usage_in_bytes")
        else:
            continue
        if limit is not None and usage is not None and limit < 2**60:  # v1 writes "no limit" as ~2**63
            rooms.append(max(0, limit - usage))
    return min(rooms, default=None)


def host_available_bytes() -> int:
    """The host memory this process may still take: MemAvailable, or its cgroup's room when lower."""
    figures = [f for f in (_meminfo_available(), _cgroup_room()) if f is not None]
    if not figures:  # not Linux: the free physical pages
        figures.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(figures)


def memory_capacity(device: torch.device) -> tuple[int, str]:
    """The bytes a rank on `device` may still allocate, and a phrase saying what they are."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"{device} has {format_bytes(free)} free of {format_bytes(total)}"
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    available = host_available_bytes()
    shared = f", shared by {ranks} ranks" if ranks > 1 else ""
    return available // ranks, f"this host has {format_bytes(available)} of memory available{shared}"


def check_fits(plan: MemoryPlan, device: torch.device) -> str:
    """Refuse `plan` (every rank together) when its peak exceeds the capacity of a rank's device;
    else say what it fits in."""
    capacity, where = memory_capacity(device)
    rank = int(os.environ.get("RANK", "0"))
    verdicts = all_gather_object(None if plan.peak <= capacity else (rank, capacity, where))
    failed = next((verdict for verdict in verdicts if verdict is not None), None)
    if failed is None:
        return f"{format_bytes(plan.peak)} per rank fits: {where}"
    rank, capacity, where = failed
    largest = plan.largest()
    on_rank = f" (rank {rank})" if len(verdicts) > 1 else ""
    raise MemoryPlanError(
        f"memory plan: {plan.program} needs {format_bytes(plan.peak)} per rank ({plan.peak_phase}; the largest item: "
        f"{largest.name}, {format_bytes(largest.bytes)}), but {where}{on_rank}: {largest.remedy}")


def check_training_memory(cfg: TrainProgram, world_size: int, device: torch.device) -> tuple[MemoryPlan, str]:
    """The memory plan of training `cfg` on `world_size` ranks of `device` (FSDP2 with more than one
    rank or under a process group, as the trainer builds it), refused when it cannot fit; the plan
    and what it fits in."""
    sharded = world_size > 1 or torch.distributed.is_initialized()
    plan = training_plan(cfg, world_size, planned_vocab_size(cfg.data), device.type, sharded)
    return plan, check_fits(plan, device)


def check_sampling_memory(cfg: SampleProgram, denoiser: Checkpoint, world_size: int, device: torch.device) -> None:
    """The memory plan of sampling `denoiser` as `cfg` says (with its energy when there is more
    than one candidate), refused when it cannot fit; only run configs are read."""
    energy = None
    if cfg.sample.num_candidates > 1:
        task = "nce" if cfg.energy.kind == "nce" else "ar"
        energy = run_of_task(cfg.energy.checkpoint, task, "energy.checkpoint").config
    check_fits(sampling_plan(cfg, denoiser.config, checkpoint_vocab_size(denoiser), energy, world_size, device.type),
               device)
