"""The trainer on several CPU processes (gloo): parity with one process, HSDP, resharding of
checkpoints (2 -> 1, 2 -> 2-D mesh, 2 -> 4), per-rank memory, and bit-exact resume after SIGKILL
and after a SIGTERM pre-emption under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor

from cluster_utils import RUN_STEPS, TORCHRUN, WORKER_ENV, losses_logged, torchrun_standalone, train_args
from distributed_utils import run_distributed
from edlm_dist.training import Trainer
from edlm_dist.runs.device_stats import param_and_optimizer_bytes
from run_utils import debug_config

STEPS = 3


def train_record_and_checkpoint(folder: Path, overrides: list[str], resume_from: Path | None, out: Path) -> None:
    """On every rank: train STEPS steps (or resume a checkpoint), record losses and memory,
    checkpoint, then take one more step; rank 0 writes the record."""
    trainer = Trainer(debug_config(folder, *overrides))
    if resume_from is not None:
        if trainer.env.rank == 0:
            shutil.copytree(resume_from, trainer.run_folder.path / "checkpoints")
        torch.distributed.barrier()
        assert trainer.resume() and trainer.step == STEPS
        losses = []
    else:
        metrics = [trainer.train_step() for _ in range(STEPS)]
        losses = [m["train/loss"] for m in metrics]
        grad_norms = [m["train/grad_norm"] for m in metrics]
        trainer.save_checkpoint()
    shards = [(s.to_local().numel(), s.numel()) for s in trainer.ema.shadow if isinstance(s, DTensor)]
    record = {
        "losses": losses,
        "grad_norms": grad_norms if resume_from is None else [],
        "ema_local_fraction": sum(local for local, _ in shards) / sum(full for _, full in shards),
        "ema_all_sharded": len(shards) == len(trainer.ema.shadow),
        "bytes": param_and_optimizer_bytes(trainer.model, trainer.optimizer),
        "next_loss": trainer.train_step()["train/loss"],
        "val": trainer.evaluate(),
    }
    if trainer.env.rank == 0:
        out.write_text(json.dumps(record))


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """2-rank FSDP: STEPS steps, a checkpoint, one more step."""
    folder = tmp_path_factory.mktemp("fsdp")
    run_distributed(train_record_and_checkpoint, 2, folder, [], None, folder / "record.json")
    return folder, json.loads((folder / "record.json").read_text())


def test_fsdp_matches_one_process_and_halves_memory(fsdp_run, tmp_path):
    folder, record = fsdp_run
    single = Trainer(debug_config(tmp_path))
    metrics = [single.train_step() for _ in range(STEPS)]
    assert [m["train/loss"] for m in metrics] == pytest.approx(record["losses"], rel=1e-5)
    assert [m["train/grad_norm"] for m in metrics] == pytest.approx(record["grad_norms"], rel=1e-5)
    ratio = record["bytes"] / param_and_optimizer_bytes(single.model, single.optimizer)
    assert ratio <= 0.55, ratio
    assert record["ema_all_sharded"] and record["ema_local_fraction"] <= 0.55


def test_checkpoint_of_one_process_resumes_on_two_ranks(tmp_path):
    single = Trainer(debug_config(tmp_path / "single"))
    for _ in range(STEPS):
        single.train_step()
    single.save_checkpoint()
    next_loss = single.train_step()["train/loss"]
    run_distributed(train_record_and_checkpoint, 2, tmp_path / "two", [], single.run_folder.path / "checkpoints",
                    tmp_path / "two.json")
    assert json.loads((tmp_path / "two.json").read_text())["next_loss"] == pytest.approx(next_loss, rel=1e-5)


def test_checkpoint_of_two_ranks_resumes_on_one(fsdp_run, tmp_path):
    folder, record = fsdp_run
    trainer = Trainer(debug_config(tmp_path))
    shutil.copytree(folder / "debug" / "checkpoints", trainer.run_folder.path / "checkpoints")
    assert trainer.resume() and trainer.step == STEPS
    assert trainer.train_step()["train/loss"] == pytest.approx(record["next_loss"], rel=1e-5)
    assert trainer.evaluate() == pytest.approx(record["val"], rel=1e-5)


@pytest.mark.parametrize("world,mesh", [(2, ["--parallel.dp_replicate=2"]), (4, ["--parallel.dp_replicate=2", "--parallel.dp_shard=2"])])
def test_hsdp_matches_and_resumes_a_two_rank_checkpoint(fsdp_run, tmp_path, world, mesh):
    folder, record = fsdp_run
    overrides = [*mesh, "--checkpoint.async_save=true"]
    run_distributed(train_record_and_checkpoint, world, tmp_path / "fresh", overrides, None, tmp_path / "fresh.json")
    fresh = json.loads((tmp_path / "fresh.json").read_text())
    assert fresh["losses"] == pytest.approx(record["losses"], rel=1e-5)
    run_distributed(train_record_and_checkpoint, world, tmp_path / "resumed", mesh, folder / "debug" / "checkpoints",
                    tmp_path / "resumed.json")
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["next_loss"] == pytest.approx(record["next_loss"], rel=1e-5)


# ---- under torchrun: SIGKILL and SIGTERM, then resume ------------------------------------------

def torchrun(folder: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = torchrun_standalone(folder, *extra, timeout=240)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The model weights of the run's step-RUN_STEPS checkpoint, read back as full tensors."""
    ckpt = folder / "debug" / "checkpoints" / f"step_{RUN_STEPS:08d}"
    model = Trainer(debug_config(folder / "reader")).model
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(ckpt), no_dist=True)
    return state["model"]


@pytest.fixture(scope="module")
def straight_run(uninterrupted_folder):
    folder, stdout = uninterrupted_folder
    return final_weights(folder), losses_logged(stdout)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_restart_is_bit_exact(straight_run, tmp_path):
    weights, losses = straight_run
    killed = torchrun(tmp_path, "--debug.fault=sigkill", "--debug.fault_step=4", check=False)
    assert killed.returncode != 0
    assert not (tmp_path / "debug" / "finished").exists()
    restarted = torchrun(tmp_path)
    assert "resumed from" in restarted.stdout and "at step 3" in restarted.stdout
    resumed_losses = losses_logged(restarted.stdout)
    assert {s: resumed_losses[s] for s in range(4, RUN_STEPS + 1)} == {s: losses[s] for s in range(4, RUN_STEPS + 1)}
    assert_same_weights(final_weights(tmp_path), weights)


@pytest.mark.slow
def test_sigterm_preemption_checkpoints_marks_and_resumes_bit_exact(straight_run, tmp_path):
    weights, losses = straight_run
    command = [*TORCHRUN, "--standalone", "--nproc-per-node=2", *train_args(tmp_path, "--debug.step_sleep_s=0.5")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **WORKER_ENV})
    for line in proc.stdout:
        if line.startswith("step       2"):
            proc.send_signal(signal.SIGTERM)  # to the torchrun agent, which forwards it to the workers
            break
    proc.communicate(timeout=120)
    marker = json.loads((tmp_path / "debug" / "preempted").read_text())
    assert marker["signal"] == "SIGTERM" and 2 <= marker["step"] < RUN_STEPS
    assert (tmp_path / "debug" / "checkpoints" / f"step_{marker['step']:08d}" / "COMMITTED").exists()
    restarted = torchrun(tmp_path)
    assert f"at step {marker['step']}" in restarted.stdout
    assert not (tmp_path / "debug" / "preempted").exists() and (tmp_path / "debug" / "finished").exists()
    assert losses_logged(restarted.stdout)[RUN_STEPS] == losses[RUN_STEPS]
    assert_same_weights(final_weights(tmp_path), weights)
