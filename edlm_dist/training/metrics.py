"""TensorBoard output (main rank only), MFU against a per-device peak table, peak memory."""

from __future__ import annotations

import itertools
import os
import resource
import socket
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.distributed.tensor import DTensor
from torch.utils.tensorboard.summary import scalar
from torch.utils.tensorboard.summary import text as text_summary

from edlm_dist.fileio import storage_errors

_LOGGERS = itertools.count()  # numbers the event files of one process, which may share a second

# Dense bf16 peak FLOP/s per device, by a substring of the CUDA device name (first match wins).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
)


def device_peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None where unknown (the CPU, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory since the last reset: allocated CUDA memory, or the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn` after one untimed warm-up call (benchmarks)."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class MetricsLogger:
    """Scalars and text in a TensorBoard event file under `log_dir` (when `enabled`: the main rank).

    Written synchronously, the file opened for each write and closed after it, so a storage
    problem reaches the caller as one StorageError naming the file (TensorBoard's own writer
    meets it in a background thread, which dies with a traceback while training goes on) and no
    file stays open between writes. Nothing is created before the first write.
    """

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.log_dir, self.enabled = Path(log_dir), enabled
        self.path: Path | None = None

    def _write(self, events: list[Event]) -> None:
        if not self.enabled:
            return
        if self.path is None:
            # TensorBoard reads the files of a folder in name order: the time and the number sort as numbers
            name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_LOGGERS):06d}"
            self.path = self.log_dir / name
            events = [Event(wall_time=time.time(), file_version="brain.Event:2"), *events]
        with storage_errors(self.path):
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                records = RecordWriter(f)
                for event in events:
                    records.write(event.SerializeToString())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        self._write([Event(wall_time=now, step=step, summary=scalar(tag, value)) for tag, value in values.items()])

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self._write([Event(wall_time=time.time(), step=step, summary=text_summary(tag, text))])


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes these tensors occupy on this rank (a sharded DTensor counts its local shard only)."""
    total = 0
    for tensor in tensors:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        total += local.numel() * local.element_size()
    return total


def param_and_optimizer_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """This rank's share of the parameters and the optimizer state, in bytes."""
    states = (v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))
    return local_bytes(model.parameters()) + local_bytes(states)
