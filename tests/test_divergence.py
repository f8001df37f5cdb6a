"""A diverged model is never kept or scored: a non-finite update (not only a non-finite loss) is
rolled back or stops the run per `training.on_nonfinite`, nothing non-finite is committed, the
newest good checkpoint survives retention, and sampling and evaluation refuse non-finite weights.
Async checkpoints are committed as soon as their write finishes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from edlm_dist.diffusion.loss import weighted_nelbo_terms
from edlm_dist.diffusion.schedules import LogLinearSchedule
from edlm_dist.eval import main as eval_main
from edlm_dist.sample import main as sample_main
from edlm_dist.train import main as train_main
from edlm_dist.training import Trainer, TrainingError
from run_utils import DEBUG_CONFIG, DEBUG_EVAL, DEBUG_SAMPLE, debug_config, folder_digest, one_line_error, read_scalars

FAULT = ("--debug.fault=nonfinite_update", "--debug.fault_step=3")


def trainer(folder: Path, *overrides: str) -> Trainer:
    return Trainer(debug_config(folder, "--checkpoint.interval=2", *overrides))


def all_finite(checkpoint: Path) -> bool:
    """Whether every floating tensor stored in `checkpoint` is finite (read with DCP, trusted)."""
    metadata = dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    state = {key: torch.empty(tuple(m.size), dtype=m.properties.dtype) for key, m in metadata.items()
             if isinstance(m, TensorStorageMetadata)}
    dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_a_rolled_back_update_replays_the_run_without_its_batch(tmp_path):
    """The default policy: NaN written by the update of step 3 -> back to step 2, replay, batch of
    step 3 skipped; the result is bit for bit the run that never trained on that batch."""
    rolled = trainer(tmp_path / "rolled", *FAULT)
    rolled.run()
    assert rolled.guard.rollbacks == 1 and rolled.skipped_steps == 1 and rolled.step == 6
    skipping = trainer(tmp_path / "skipping")
    skipping.guard.skipped_batches.add(2)  # the batch of step 3 (step index 2), never trained on
    skipping.run()
    assert all(torch.equal(v, skipping.model.state_dict()[k]) for k, v in rolled.model.state_dict().items())
    run = tmp_path / "rolled" / "debug"
    assert rolled.checkpoints.committed_steps() == [4, 6]
    assert all(all_finite(run / "checkpoints" / f"step_{s:08d}") for s in (4, 6))
    scalars = read_scalars(run)
    assert dict(scalars["train/rollbacks"])[6] == 1 and dict(scalars["train/skipped_steps"])[6] == 1


def test_the_stop_policy_ends_the_run_naming_the_step_and_tensor_and_keeps_the_good_checkpoint(tmp_path):
    t = trainer(tmp_path, *FAULT, "--training.on_nonfinite=stop", "--checkpoint.interval=1",
                "--checkpoint.keep_last=1")
    with pytest.raises(TrainingError, match="the update of step 3 made model.embed.weight non-finite"):
        t.run()
    failed = json.loads((tmp_path / "debug" / "failed").read_text())
    assert failed["step"] == 3 and "model.embed.weight" in failed["reason"] and "step_00000002" in failed["reason"]
    assert t.checkpoints.committed_steps() == [2]  # retention kept the newest good one; nothing after it
    assert all_finite(tmp_path / "debug" / "checkpoints" / "step_00000002")


def test_rollbacks_in_a_row_are_limited_and_nothing_non_finite_is_committed(tmp_path, monkeypatch):
    t = trainer(tmp_path, "--training.max_bad_steps=3", "--checkpoint.keep_last=1")

    def overflowing(step, model):  # every update from step 3 on overflows, as with an absurd learning rate
        if step >= 3:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))

    monkeypatch.setattr(t.faults, "after_update", overflowing)
    # steps 3 and 4 rolled back; the replay skips both batches and commits that (finite) state at
    # step 4; step 5 is the third bad step in a row
    with pytest.raises(TrainingError, match=r"step 5 .* 3 steps in a row went wrong .*step_00000004"):
        t.run()
    assert t.guard.rollbacks == 2 and t.checkpoints.committed_steps() == [4]
    assert all_finite(tmp_path / "debug" / "checkpoints" / "step_00000004")


def test_without_a_checkpoint_to_roll_back_to_the_run_stops(tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint to roll back to"):
        trainer(tmp_path, *FAULT, "--checkpoint.interval=5").run()
    assert not list((tmp_path / "debug" / "checkpoints").glob("step_*"))


def test_a_save_of_a_non_finite_state_is_refused(tmp_path):
    t = trainer(tmp_path)
    t.train_step()
    with torch.no_grad():
        t.ema.shadow[0].fill_(float("nan"))
    with pytest.raises(TrainingError, match="ema.embed.weight is not finite; the checkpoint is not written"):
        t.save_checkpoint()
    assert t.checkpoints.committed_steps() == []


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> Path:
    """A finished debug run whose last checkpoint holds a NaN in one EMA and one model weight, as
    a run of the code before this change could commit."""
    root = tmp_path_factory.mktemp("poisoned")
    Trainer(debug_config(root, "--training.steps=2", "--checkpoint.interval=1")).run()
    checkpoint = root / "debug" / "checkpoints" / "step_00000002"
    metadata = dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    state = {key: torch.empty(tuple(m.size), dtype=m.properties.dtype) if isinstance(m, TensorStorageMetadata) else None
             for key, m in metadata.items()}
    dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
    state["model.blocks.0.qkv.weight"][0, 0] = float("nan")
    state["ema.weights.blocks.0.qkv.weight"][0, 0] = float("nan")
    for entry in checkpoint.iterdir():
        if entry.name != "COMMITTED":
            entry.unlink()
    dcp.save(state, checkpoint_id=str(checkpoint), no_dist=True)
    return root


def test_sampling_and_evaluation_refuse_non_finite_weights_in_one_line(poisoned, tmp_path, capsys):
    run = poisoned / "debug"
    before = folder_digest(run)
    err = one_line_error(capsys, sample_main, ["--config", str(DEBUG_SAMPLE), "--checkpoint", str(run), "--out",
                                               str(tmp_path / "samples"), "--sample.num_candidates=1"])
    assert "holds non-finite ema weights (first: blocks.0.qkv.weight)" in err
    err = one_line_error(capsys, eval_main, ["--config", str(DEBUG_EVAL), "--checkpoint", str(run), "--out",
                                             str(tmp_path / "eval"), "--eval.weights=model"])
    assert "holds non-finite model weights (first: blocks.0.qkv.weight)" in err
    assert folder_digest(run) == before
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("samples.jsonl"))  # no figure written


def test_a_committed_non_finite_checkpoint_is_not_resumed(poisoned, tmp_path, capsys):
    shutil.copytree(poisoned, tmp_path / "root")
    err = one_line_error(capsys, train_main, ["--config", str(DEBUG_CONFIG), f"--job.dump_folder={tmp_path / 'root'}",
                                              "--training.steps=4"])
    assert "step_00000002 holds non-finite values (first: model.blocks.0.qkv.weight); it cannot be resumed" in err


def test_a_nan_nelbo_term_stays_nan_instead_of_counting_as_zero():
    nll = torch.tensor([[0.5, 0.0], [float("nan"), 0.0], [0.0, 0.0]])
    terms = weighted_nelbo_terms(nll, torch.tensor([0.5, 0.5, 0.0]), schedule=LogLinearSchedule(), t_min=1e-3)
    assert terms[0] > 0 and terms[1].isnan() and terms[2] == 0  # nothing masked (even at t = 0): exactly 0


def test_a_kill_right_after_an_async_write_finishes_resumes_from_that_step(tmp_path):
    """The checkpoint of step 2 is written in the background during step 3 and committed at the
    next step boundary; a SIGKILL in step 4, before the next save, resumes from step 2."""
    args = [sys.executable, "-m", "edlm_dist.train", "--config", str(DEBUG_CONFIG), f"--job.dump_folder={tmp_path}",
            "--checkpoint.interval=2", "--checkpoint.async_save=true", "--debug.step_sleep_s=0.3"]
    killed = subprocess.run([*args, "--debug.fault=sigkill", "--debug.fault_step=4"], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "debug" / "checkpoints" / "step_00000002" / "COMMITTED").is_file()
    resumed = subprocess.run(args, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "step_00000002 at step 2" in resumed.stdout
