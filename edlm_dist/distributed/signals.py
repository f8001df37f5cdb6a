"""Pre-emption: SIGTERM / SIGUSR1 (what SLURM and other schedulers send before they stop a job)
and a first Ctrl-C (SIGINT) set a flag; the training loop asks all ranks at step boundaries, so
every rank finishes the same step, checkpoints, and leaves. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import torch

from edlm_dist.distributed.env import all_reduce_max

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class PreemptionWatcher:
    """Records the pre-emption signals this process receives (the handler only sets a flag;
    after a first SIGINT, the next one raises KeyboardInterrupt as usual)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS,
                 on_interrupt: str = "stopping after this step, with a checkpoint") -> None:
        self.received: int = 0
        self.on_interrupt = on_interrupt
        self.previous = {sig: signal.signal(sig, self._handle) for sig in signals}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            print(f"\nCtrl-C: {self.on_interrupt} (Ctrl-C again: stop at once)", file=sys.stderr, flush=True)

    def requested(self, device: torch.device) -> int:
        """The signal number any rank received (0 if none): a collective, call it on every rank."""
        flag = torch.tensor([self.received], dtype=torch.int64, device=device)
        return int(all_reduce_max(flag).item())

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
