"""A real SLURM cluster on this machine (munge, slurmctld, slurmd; one node): the training batch
script is submitted with the debug config, pre-empted mid-run the way SLURM does before a time
limit (USR1 to the batch shell), requeues itself, resumes from its checkpoint and finishes with
the uninterrupted run's losses and final figure. Needs Debian's slurm-wlm and munge (.ci/run
installs them); skipped without them unless EDLM_REQUIRE_SLURM=1."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from cluster_utils import RUN_STEPS, WORKER_ENV, losses_logged, reaped, run_summary, train_args
from distributed_utils import free_port
from run_utils import DEBUG_CONFIG, REPO, wait_for

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def executable(name: str) -> str:
    return shutil.which(name, path=SEARCH_PATH) or ""


def slurm_conf(root: Path, host: str) -> str:
    ctld_port, d_port = free_port(), free_port()
    return f"""ClusterName=edlmtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
JobRequeue=1
MinJobAge=600
NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A one-node cluster on localhost; yields the environment its clients need. Every daemon
    is killed on the way out."""
    missing = [name for name in DAEMONS + CLIENTS if not executable(name)]
    if missing:
        message = f"SLURM not installed (missing {', '.join(missing)}; apt-get install slurm-wlm munge)"
        if os.environ.get("EDLM_REQUIRE_SLURM") == "1":
            pytest.fail(message + " and EDLM_REQUIRE_SLURM=1")
        pytest.skip(message)
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, host))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": SEARCH_PATH}
    daemons = [
        [executable("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={root}/munge.socket",
         f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
        [executable("slurmctld"), "-D", "-f", str(conf)],
        [executable("slurmd"), "-D", "-f", str(conf), "-N", host],
    ]
    with reaped(daemons, [root / f"{name}.out" for name in DAEMONS], env):
        wait_for(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                                  env=env).stdout, 60, f"an idle node (logs in {root})")
        yield env


def job_state(job: str, env: dict[str, str]) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


@pytest.mark.slow
def test_a_preempted_job_requeues_itself_resumes_and_finishes_like_the_uninterrupted_run(
        slurm, uninterrupted_run, tmp_path):
    out = tmp_path / "job.out"
    env = {**slurm, **WORKER_ENV, "CONFIG": str(DEBUG_CONFIG), "PYTHON": sys.executable, "NPROC_PER_NODE": "2",
           "RDZV_PORT": str(free_port()), "MAX_REQUEUES": "2"}
    overrides = train_args(tmp_path, "--debug.step_sleep_s=1")[4:]  # after -m edlm_dist.train --config X
    job = subprocess.run(["sbatch", "--parsable", f"--output={out}", f"--chdir={REPO}",
                          str(REPO / "launchers" / "slurm_train.sbatch"), *overrides],
                         capture_output=True, text=True, env=env, check=True).stdout.strip()
    try:
        wait_for(lambda: out.exists() and re.search(r"^step +2 ", out.read_text(), re.M), 90, "step 2")
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
        wait_for(lambda: job_state(job, env).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 150,
                 "the requeued job to end")
        state, log = job_state(job, env), out.read_text()
        assert (state["JobState"], state["Restarts"]) == ("COMPLETED", "1"), log[-3000:]
        step = int(re.search(r"pre-empted by SIGUSR1: checkpoint at step (\d+)", log).group(1))
        assert 2 <= step < RUN_STEPS
        assert f"requeueing job {job} (requeue 1 of at most 2)" in log
        assert f"job {job} (requeued 1 times)" in log and f"at step {step}" in log
        assert "slurm_train: run finished" in log
        losses, summary = uninterrupted_run
        resumed = losses_logged(log.split("requeued 1 times")[1])
        assert {s: resumed[s] for s in range(step + 1, RUN_STEPS + 1)} == \
               {s: losses[s] for s in range(step + 1, RUN_STEPS + 1)}
        assert run_summary(tmp_path)["val"] == summary["val"]
    finally:
        subprocess.run(["scancel", job], env=env)
