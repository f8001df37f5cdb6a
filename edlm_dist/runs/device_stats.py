"""What a device does and holds: the dense bf16 peak behind MFU, peak memory, timers for the
benchmarks, and the bytes of parameters and optimizer state on this rank."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch.distributed.tensor import DTensor

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
