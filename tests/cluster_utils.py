"""The debug config under torchrun, as the cluster tests launch it: commands, the losses a run
printed, its summary, and processes that are always reaped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from run_utils import DEBUG_CONFIG

RUN_STEPS = 6  # configs/debug.toml: checkpoints at steps 3 and 6
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# a fresh store per rendezvous round: the agent-shared one keeps the last round's process-group keys,
# and a restarted rank can read a dead peer's gloo address from them (see launchers/README.md)
WORKER_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def train_args(folder: Path, *overrides: str) -> list[str]:
    """`-m edlm_dist.train` with the debug config writing its run to `folder/debug`."""
    return ["-m", "edlm_dist.train", "--config", str(DEBUG_CONFIG), f"--training.steps={RUN_STEPS}",
            f"--job.dump_folder={folder}", *overrides]


def torchrun_standalone(folder: Path, *overrides: str, max_restarts: int = 0,
                        timeout: float = 180) -> subprocess.CompletedProcess:
    """Two ranks on this machine (`--standalone`), output captured."""
    command = [*TORCHRUN, "--standalone", "--nproc-per-node=2", f"--max-restarts={max_restarts}",
               *train_args(folder, *overrides)]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **WORKER_ENV}, timeout=timeout)


def losses_logged(stdout: str) -> dict[int, str]:
    """step -> the loss printed on the console line of that step (the last one, after a restart)."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[0] == "step" and parts[2] == "loss":
            out[int(parts[1])] = parts[3]
    return out


def run_summary(folder: Path) -> dict:
    """The summary.json of the finished run in `folder/debug`."""
    return json.loads((folder / "debug" / "summary.json").read_text())


def committed_steps(folder: Path) -> list[int]:
    """The committed checkpoints of the run in `folder/debug`."""
    return sorted(int(p.parent.name.removeprefix("step_")) for p in (folder / "debug" / "checkpoints").glob("*/COMMITTED"))


@contextlib.contextmanager
def reaped(commands: list[list[str]], logs: list[Path], env: dict[str, str]) -> Iterator[list[subprocess.Popen]]:
    """Start `commands`, each in its own process group with its output in its log; on leaving,
    kill whatever is left of every group (agents and their workers, daemons), whether the block
    succeeded or not."""
    procs = []
    try:
        for command, log in zip(commands, logs, strict=True):
            with open(log, "w") as out:
                procs.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True))
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
