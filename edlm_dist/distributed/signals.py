"""Pre-emption: SIGTERM / SIGUSR1 (what SLURM and other schedulers send before they stop a job)
set a flag; the training loop asks all ranks at step boundaries, so every rank finishes the
same step, checkpoints, and leaves.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch

from edlm_dist.distributed.env import all_reduce_max

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatcher:
    """Records the pre-emption signals this process receives (the handler only sets a flag)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS) -> None:
        self.received: int = 0
        self.previous = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def requested(self, device: torch.device) -> int:
        """The signal number any rank received (0 if none): a collective, call it on every rank."""
        flag = torch.tensor([self.received], dtype=torch.int64, device=device)
        return int(all_reduce_max(flag).item())

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
