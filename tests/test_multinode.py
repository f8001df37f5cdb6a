"""Two "nodes" on one machine: two torchrun agents (one rank each) meet at a c10d rendezvous on
127.0.0.1 and train the debug config with FSDP2 over gloo. Rank 1's worker is SIGKILLed in the
middle of step 4; both agents restart their workers (--max-restarts=1), which resume from the
step-3 checkpoint and finish with the uninterrupted run's losses and final figure."""

from __future__ import annotations

import os

import pytest

from cluster_utils import RUN_STEPS, TORCHRUN, WORKER_ENV, losses_logged, reaped, run_summary, train_args
from distributed_utils import free_port


@pytest.mark.slow
def test_two_nodes_survive_a_killed_rank_and_finish_like_the_uninterrupted_run(uninterrupted_run, tmp_path):
    agent = [*TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
             f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=two-nodes", "--max-restarts=1",
             *train_args(tmp_path, "--debug.fault=sigkill", "--debug.fault_step=4", "--debug.fault_rank=1")]
    logs = [tmp_path / f"node{n}.log" for n in range(2)]
    with reaped([agent, agent], logs, {**os.environ, **WORKER_ENV}) as agents:
        codes = [proc.wait(timeout=150) for proc in agents]
    output = "".join(log.read_text() for log in logs)
    assert codes == [0, 0], output[-3000:]
    assert "fault injection: sigkill on rank 1 at step 4" in output and "exitcode: -9" in output
    assert f"resumed from {tmp_path / 'debug' / 'checkpoints' / 'step_00000003'} at step 3" in output
    losses, summary = uninterrupted_run
    resumed = losses_logged(output.split("resumed from")[1])
    assert {s: resumed[s] for s in range(4, RUN_STEPS + 1)} == {s: losses[s] for s in range(4, RUN_STEPS + 1)}
    assert run_summary(tmp_path)["val"] == summary["val"]
    assert (tmp_path / "debug" / "finished").exists()
