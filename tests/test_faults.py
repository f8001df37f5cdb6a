"""The fault matrix (docs/operations.md): each fault injected into a two-rank torchrun job of the
debug config. For each: no hang beyond the configured timeout, no uncommitted checkpoint taken
for the latest, a one-line message naming the cause, and a resumed run whose losses and final
validation figure equal the uninterrupted run's (bit-exact: the debug config is deterministic).
Plus in-process checks of the heartbeat report and of the fault injector's once-only firing."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from cluster_utils import (RUN_STEPS, TORCHRUN, WORKER_ENV, committed_steps, losses_logged, reaped, run_summary,
                           torchrun_standalone, train_args)
from edlm_dist.config import ConfigError, DebugConfig
from edlm_dist.distributed import CollectiveError, Heartbeat
from edlm_dist.training.faults import FaultInjector
from run_utils import wait_for

TIMEOUT_S = 6  # runtime.collective_timeout_s of the stall case
STALL_S = 9


def fault(name: str, step: int, rank: int) -> list[str]:
    return [f"--debug.fault={name}", f"--debug.fault_step={step}", f"--debug.fault_rank={rank}"]


def assert_resumed_like_uninterrupted(stdout: str, folder: Path, at: int, uninterrupted) -> None:
    losses, summary = uninterrupted
    assert f"resumed from {folder / 'debug' / 'checkpoints' / f'step_{at:08d}'} at step {at}" in stdout
    resumed = losses_logged(stdout)
    assert {s: resumed[s] for s in range(at + 1, RUN_STEPS + 1)} == {s: losses[s] for s in range(at + 1, RUN_STEPS + 1)}
    assert run_summary(folder)["val"] == summary["val"]  # full precision: the same final weights
    assert (folder / "debug" / "finished").exists() and committed_steps(folder) == [3, 6]


@pytest.mark.slow
@pytest.mark.parametrize("name,step,rank,cause", [
    ("sigkill", 4, 1, "failed (exitcode: -9) local_rank: 1"),
    ("sigkill_in_checkpoint", 6, 1, "failed (exitcode: -9) local_rank: 1"),
    ("stall", 4, 1, f"error: rank 0, step 4 loss all-reduce: a collective failed (Timed out waiting {TIMEOUT_S * 1000}ms"),
])
def test_a_lost_rank_restarts_the_group_which_resumes_from_the_latest_checkpoint(
        uninterrupted_run, tmp_path, name, step, rank, cause):
    start = time.monotonic()
    proc = torchrun_standalone(tmp_path, *fault(name, step, rank), f"--runtime.collective_timeout_s={TIMEOUT_S}",
                               f"--debug.stall_s={STALL_S}", max_restarts=1)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert f"fault injection: {name} on rank {rank} at step {step}" in output
    assert cause in output
    # the kill in step 6's checkpoint left it uncommitted: the restart took step 3, not the torn 6
    assert_resumed_like_uninterrupted(proc.stdout, tmp_path, 3, uninterrupted_run)
    # a stall is detected after the collective timeout, the watchdog names the rank at half of it
    assert elapsed < 60 + (STALL_S if name == "stall" else 0)
    if name == "stall":
        assert "watchdog: rank 0 has made no progress for" in output
        assert "stuck: rank 1 (step 4 step," in output


@pytest.mark.slow
@pytest.mark.parametrize("name,rank,error", [
    ("disk_full", 1, "[Errno 28] No space left on device"),
    ("write_refused", 0, "[Errno 13] Permission denied"),
])
def test_a_checkpoint_write_error_fails_with_the_path_and_keeps_the_last_checkpoint(
        uninterrupted_run, tmp_path, name, rank, error):
    proc = torchrun_standalone(tmp_path, *fault(name, RUN_STEPS, rank))
    assert proc.returncode != 0
    ckpt = tmp_path / "debug" / "checkpoints" / f"step_{RUN_STEPS:08d}"
    message = f"error: cannot write checkpoint {ckpt}: {error}: '{ckpt / f'__{rank}_0.distcp'}'"
    assert message in proc.stderr
    assert json.loads((tmp_path / "debug" / "failed").read_text())["reason"] in message
    assert committed_steps(tmp_path) == [3] and not ckpt.exists()  # the torn step 6 is removed, step 3 is the latest
    again = torchrun_standalone(tmp_path)  # the operator freed space: the same command resumes
    assert again.returncode == 0, again.stderr[-3000:]
    assert_resumed_like_uninterrupted(again.stdout, tmp_path, 3, uninterrupted_run)


@pytest.mark.slow
def test_sigterm_to_one_rank_preempts_every_rank_and_the_restart_resumes(uninterrupted_run, tmp_path):
    proc = torchrun_standalone(tmp_path, *fault("sigterm", 4, 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pre-empted by SIGTERM: checkpoint at step 4" in proc.stdout
    marker = json.loads((tmp_path / "debug" / "preempted").read_text())
    assert (marker["step"], marker["signal"]) == (4, "SIGTERM") and committed_steps(tmp_path) == [3, 4]
    again = torchrun_standalone(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    losses, summary = uninterrupted_run
    assert "at step 4" in again.stdout and losses_logged(again.stdout)[RUN_STEPS] == losses[RUN_STEPS]
    assert run_summary(tmp_path)["val"] == summary["val"]
    assert not (tmp_path / "debug" / "preempted").exists() and (tmp_path / "debug" / "finished").exists()


def test_heartbeat_names_the_ranks_behind_and_the_silent_ones():
    store = dist.HashStore()
    beats = [Heartbeat(store, rank, 4) for rank in range(4)]
    for hb in beats[:3]:
        hb.beat(7, "loss all-reduce")
    beats[1].beat(7, "step")
    beats[0].beat(7, "step boundary")
    report = beats[2].report()
    assert report.startswith("stuck: rank 1 (step 7 step, ") and ", rank 2 (step 7 loss all-reduce, " in report
    assert report.endswith("rank 3 (no heartbeat); the others reached step 7 step boundary")
    beats[3].beat(8, "step")
    err = CollectiveError.explain(RuntimeError("[/src/gloo/pair.cc:553] Connection closed by peer\nmore"), beats[0])
    assert str(err).startswith("rank 0, step 7 step boundary: a collective failed (Connection closed by peer); stuck: rank 0")


def test_a_rank_frozen_inside_an_all_reduce_is_named_and_the_hang_leaves_a_failed_marker(tmp_path):
    """Rank 1 is stopped (SIGSTOP) as it enters the loss all-reduce of step 4, where rank 0 already
    waits: both posted the same progress, so only rank 1's silent watchdog tells them apart."""
    command = [*TORCHRUN, "--standalone", "--nproc-per-node=2", *train_args(
        tmp_path, *fault("sigstop", 4, 1), f"--runtime.collective_timeout_s={TIMEOUT_S}")]
    log = tmp_path / "torchrun.log"
    with reaped([command], [log], {**os.environ, **WORKER_ENV}) as (proc,):
        failed = wait_for(lambda: (tmp_path / "debug" / "failed").is_file(), 60, "the failed marker")
        os.kill(json.loads((tmp_path / "debug" / "fault_injected").read_text())["pid"], signal.SIGKILL)  # torchrun waits 30 s else
        proc.wait(timeout=60)
    output = log.read_text()
    reason = json.loads((tmp_path / "debug" / "failed").read_text())["reason"]
    assert failed and reason.startswith("rank 0, step 4 loss all-reduce: a collective failed (Timed out")
    assert "stopped answering: rank 1 (no sign of life for " in reason and "last at step 4 loss all-reduce)" in reason
    assert "watchdog: rank 0 has made no progress" in output and "stopped answering: rank 1" in output


def test_a_non_finite_update_on_one_rank_rolls_back_every_rank(uninterrupted_run, tmp_path):
    """NaN in rank 1's shard after the update of step 4: the all-reduced check finds it on both
    ranks, which reload step 3 and replay without step 4's batch; nothing non-finite is committed."""
    proc = torchrun_standalone(tmp_path, *fault("nonfinite_update", 4, 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 4: the update made model.embed.weight non-finite; rolled back to step 3" in proc.stdout
    losses, _ = uninterrupted_run
    logged = losses_logged(proc.stdout)
    assert {s: logged[s] for s in (1, 2, 3)} == {s: losses[s] for s in (1, 2, 3)}
    assert committed_steps(tmp_path) == [3, 6] and run_summary(tmp_path)["skipped_steps"] == 1


def test_heartbeat_names_a_rank_whose_sign_of_life_stopped_before_the_ranks_behind():
    store = dist.HashStore()
    beats = [Heartbeat(store, rank, 3) for rank in range(3)]
    for hb in beats:
        hb.beat(5, "loss all-reduce")
        hb.ping()
    beats[0].beat(5, "step")
    assert beats[1].report().startswith("stuck: rank 0 (step 5 step, ") and beats[1].stuck() == [0]
    store.set("edlm/alive/2", repr(time.time() - 10))  # rank 2 froze 10 s ago, inside the all-reduce
    report = beats[1].report()
    assert report.startswith("stopped answering: rank 2 (no sign of life for 1") and "last at step 5 loss all-reduce" in report
    assert beats[1].stuck() == [2]


def test_a_fault_fires_once_per_run_folder_and_only_on_its_rank(tmp_path):
    cfg = DebugConfig(fault="disk_full", fault_step=2, fault_rank=1)
    with pytest.raises(ConfigError, match="debug.fault_rank = 1 but the job has only 1 ranks"):
        FaultInjector(cfg, 0, 1, tmp_path)
    assert FaultInjector(cfg, 0, 2, tmp_path).write_hook is None
    injector = FaultInjector(cfg, 1, 2, tmp_path)
    injector.checkpoint_write(1, "shard")  # not its step
    with pytest.raises(OSError, match=r"\[Errno 28\] No space left on device: 'shard'"):
        injector.checkpoint_write(2, "shard")
    assert json.loads((tmp_path / "fault_injected").read_text()) == {"fault": "disk_full", "step": 2, "rank": 1,
                                                                     "pid": os.getpid()}
    FaultInjector(cfg, 1, 2, tmp_path).checkpoint_write(2, "shard")  # a restarted job is not hit again
