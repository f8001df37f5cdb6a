"""Which rank is stuck: every rank posts its progress (step, phase, time) to the job's c10d
store, the key-value store torchrun already runs for the rendezvous, and its `Watchdog` thread
posts a sign of life every second, also while the rank waits inside a collective. When a
collective waits too long, a rank whose sign of life has stopped is the one that stopped
answering (frozen, stopped, dead or stuck in a call that holds the interpreter); failing that,
the ranks that lag behind the furthest one are the ones the others wait for.

`Heartbeat.report()` says so in one line; the watchdog prints that line on its own when its
rank has made no progress for half the collective timeout, and calls `on_hang` once the stall
reaches the whole timeout: with NCCL a timed-out collective aborts the process from C++, so
Python never sees an exception to explain.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch.distributed as dist

# the phases of a step, in the order a rank goes through them
PHASES = ("start", "step", "loss all-reduce", "state check", "step boundary", "checkpoint")
KEY = "edlm/heartbeat/{rank}"
ALIVE_KEY = "edlm/alive/{rank}"
PING_S = 1.0  # how often a watchdog posts its rank's sign of life
SILENT_S = 3 * PING_S  # a sign of life older than this: the rank has stopped answering
# how the backends word a collective that lost a peer or ran out of time
COLLECTIVE_FAILURE = re.compile(r"timed out|timeout|connection (closed|reset)|broken pipe", re.IGNORECASE)
SOURCE_PREFIX = re.compile(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*")  # gloo's "[.../pair.cc:553] " before its message


@dataclass(frozen=True)
class Beat:
    step: int
    phase: str
    time: float

    @property
    def progress(self) -> tuple[int, int]:
        return self.step, PHASES.index(self.phase)

    def describe(self, now: float) -> str:
        return f"step {self.step} {self.phase}, {now - self.time:.1f} s ago"


class Heartbeat:
    """This rank's progress in the store, and everyone's read back."""

    def __init__(self, store: dist.Store, rank: int, world_size: int) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.last = Beat(0, "start", time.time())

    @classmethod
    def of_process_group(cls) -> Heartbeat | None:
        """A heartbeat on the default process group's store (None in a single process)."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return None
        store = dist.distributed_c10d._get_default_store()
        return cls(store, dist.get_rank(), dist.get_world_size())

    def beat(self, step: int, phase: str) -> None:
        """Record that this rank entered `phase` of step `step` (`phase` one of PHASES)."""
        self.last = Beat(step, phase, time.time())
        self.store.set(KEY.format(rank=self.rank), json.dumps([step, phase, self.last.time]))

    def ping(self) -> None:
        """Post that this rank's process is alive (from its watchdog thread)."""
        self.store.set(ALIVE_KEY.format(rank=self.rank), repr(time.time()))

    def beats(self) -> dict[int, Beat]:
        """The last beat of every rank that has posted one."""
        out = {}
        for rank in range(self.world_size):
            key = KEY.format(rank=rank)
            if self.store.check([key]):
                out[rank] = Beat(*json.loads(self.store.get(key)))
        return out

    def last_signs_of_life(self) -> dict[int, float]:
        """When each rank whose watchdog has pinged last did so."""
        keys = {rank: ALIVE_KEY.format(rank=rank) for rank in range(self.world_size)}
        return {rank: float(self.store.get(key)) for rank, key in keys.items() if self.store.check([key])}

    def stuck(self) -> list[int]:
        """The ranks the others wait for: those that stopped answering, else those behind (or silent)."""
        try:
            beats, alive = self.beats(), self.last_signs_of_life()
        except (RuntimeError, ValueError):
            return []
        now = time.time()
        stopped = [r for r, t in alive.items() if now - t > SILENT_S]
        if stopped:
            return sorted(stopped)
        front = max((b.progress for b in beats.values()), default=(0, 0))
        return sorted([r for r, b in beats.items() if b.progress < front] +
                      [r for r in range(self.world_size) if r not in beats])

    def report(self) -> str:
        """One line: which ranks stopped answering (their sign of life stale), or else which lag
        behind the furthest one (or have not posted), with their last beat."""
        try:
            beats, alive = self.beats(), self.last_signs_of_life()
        except (RuntimeError, ValueError) as err:  # the store itself is gone: say so instead
            return f"heartbeats unreadable ({err})"
        now = time.time()
        stopped = {r: t for r, t in alive.items() if now - t > SILENT_S}
        if stopped:
            parts = [f"rank {r} (no sign of life for {now - t:.1f} s" +
                     (f", last at step {beats[r].step} {beats[r].phase})" if r in beats else ")")
                     for r, t in sorted(stopped.items())]
            return f"stopped answering: {', '.join(parts)}"
        silent = [r for r in range(self.world_size) if r not in beats]
        front = max(b.progress for b in beats.values()) if beats else (0, 0)
        behind = {r: b for r, b in beats.items() if b.progress < front}
        if not (behind or silent):
            oldest = min(beats, key=lambda r: beats[r].time)
            return f"all ranks reached step {front[0]} {PHASES[front[1]]}; oldest heartbeat: rank {oldest} " \
                   f"({beats[oldest].describe(now)})"
        parts = [f"rank {r} ({b.describe(now)})" for r, b in sorted(behind.items())]
        parts += [f"rank {r} (no heartbeat)" for r in silent]
        return f"stuck: {', '.join(parts)}; the others reached step {front[0]} {PHASES[front[1]]}"


def is_collective_failure(err: BaseException) -> bool:
    """Whether `err` looks like a collective that lost a peer or timed out."""
    return isinstance(err, dist.DistError) or bool(COLLECTIVE_FAILURE.search(str(err)))


class Watchdog:
    """A daemon thread that posts this rank's sign of life every `PING_S`, prints
    `heartbeat.report()` once per stall when this rank's last beat is older than `timeout_s / 2`,
    and calls `on_hang(message, stuck ranks)` once per stall when it reaches `timeout_s`."""

    def __init__(self, heartbeat: Heartbeat, timeout_s: float,
                 on_hang: Callable[[str, list[int]], None] | None = None) -> None:
        self.heartbeat, self.timeout_s, self.on_hang = heartbeat, timeout_s, on_hang
        self._stop = threading.Event()
        heartbeat.ping()
        self._thread = threading.Thread(target=self._watch, name="edlm-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        reported = hung = None
        while not self._stop.wait(PING_S):
            try:
                self.heartbeat.ping()
            except (RuntimeError, ValueError):  # the store is gone (the job is ending): nothing to post to
                pass
            last = self.heartbeat.last
            waited = time.time() - last.time
            if waited > self.timeout_s / 2 and last is not reported:
                reported = last
                print(f"watchdog: rank {self.heartbeat.rank} has made no progress for {waited:.1f} s at step "
                      f"{last.step} {last.phase}; {self.heartbeat.report()}", file=sys.stderr, flush=True)
            if waited >= self.timeout_s and last is not hung and self.on_hang is not None:
                hung = last
                self.on_hang(f"hang: rank {self.heartbeat.rank} made no progress for {waited:.0f} s at step "
                             f"{last.step} {last.phase} (runtime.collective_timeout_s = {self.timeout_s:g}); "
                             f"{self.heartbeat.report()}", self.heartbeat.stuck())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class CollectiveError(RuntimeError):
    """A collective lost a peer or timed out; the message names the ranks the others waited for
    (`stuck`)."""

    user_error = True  # entry points print the one-line message, not a traceback

    def __init__(self, message: str, stuck: list[int]) -> None:
        super().__init__(message)
        self.stuck = stuck

    @classmethod
    def explain(cls, err: BaseException, heartbeat: Heartbeat) -> CollectiveError:
        last = heartbeat.last
        cause = SOURCE_PREFIX.sub("", (str(err).strip().splitlines() or [type(err).__name__])[0])
        return cls(f"rank {heartbeat.rank}, step {last.step} {last.phase}: a collective failed ({cause}); "
                   f"{heartbeat.report()}", heartbeat.stuck())
