"""Single-process checks of the trainer's failure handling and parallelisation options:
interrupted checkpoint writes, non-finite losses, pre-emption signals, checkpoint storage on
fsspec URLs with retention, activation checkpointing and torch.compile."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from edlm_dist.runs import CheckpointError, CheckpointManager
from edlm_dist.runs.safe_pickle import safe_reader
from edlm_dist.training import Trainer, TrainingError
from run_utils import debug_config, read_scalars



def trainer(folder: Path, *overrides: str) -> Trainer:
    return Trainer(debug_config(folder, *overrides))


def weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in t.model.state_dict().items()}


def test_a_save_interrupted_mid_write_leaves_the_previous_checkpoint_latest(tmp_path, monkeypatch):
    t = trainer(tmp_path, "--training.steps=4", "--checkpoint.interval=2")
    real_save = dcp.save

    def crash_after_writing(state, *, checkpoint_id, **kwargs):
        if checkpoint_id.endswith("step_00000004"):
            real_save(state, checkpoint_id=checkpoint_id, **kwargs)  # shards and metadata are all there...
            raise OSError("No space left on device")  # ...but the process dies before committing
        return real_save(state, checkpoint_id=checkpoint_id, **kwargs)

    monkeypatch.setattr(dcp, "save", crash_after_writing)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*step_00000004: No space left on device$"):
        t.run()
    assert "step_00000004: No space" in json.loads((tmp_path / "debug" / "failed").read_text())["reason"]
    assert not (tmp_path / "debug" / "checkpoints" / "step_00000004").exists()  # the torn save is removed
    assert t.checkpoints.latest() == 2
    monkeypatch.setattr(dcp, "save", real_save)
    again = trainer(tmp_path, "--training.steps=4", "--checkpoint.interval=2")
    assert again.resume() and again.step == 2
    again.run()
    assert again.checkpoints.committed_steps() == [2, 4]


def test_non_finite_losses_are_skipped_counted_logged_as_nan_and_stop_the_run(tmp_path, monkeypatch):
    t = trainer(tmp_path, "--training.steps=20", "--training.max_bad_steps=3", "--checkpoint.interval=100")
    t.train_step()
    good = weights(t)
    real = t.task.sequence_nll
    monkeypatch.setattr(t.task, "sequence_nll", lambda *a: real(*a) * float("nan"))
    metrics = t.train_step()
    assert metrics["train/skipped_steps"] == 1 and t.step == 2
    assert all(torch.equal(v, good[k]) for k, v in t.model.state_dict().items())  # no update applied
    monkeypatch.setattr(t.task, "sequence_nll", real)
    t.train_step()
    assert t.skipped_steps == 1
    monkeypatch.setattr(t.task, "sequence_nll", lambda *a: real(*a) * float("inf"))
    before = weights(t)
    with pytest.raises(TrainingError, match="not finite for 3 steps in a row"):
        t.run()
    failed = json.loads((tmp_path / "debug" / "failed").read_text())
    assert failed["step"] == 6 and "last good weights" in failed["reason"]
    losses = dict(read_scalars(tmp_path / "debug")["train/loss"])
    assert [losses[step] for step in (4, 5, 6)] == [math.inf] * 3  # logged as they were, never as 0
    restored = trainer(tmp_path, "--training.steps=20")
    assert restored.resume() and restored.step == 6
    assert all(torch.equal(v, before[k]) for k, v in restored.model.state_dict().items())


def test_sigusr1_preempts_checkpoints_and_resumes_bit_exact(tmp_path):
    straight = trainer(tmp_path / "a", "--training.steps=6", "--model.dropout=0.1")
    straight.run()
    t = trainer(tmp_path / "b", "--training.steps=6", "--model.dropout=0.1", "--debug.step_sleep_s=0.3")
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    summary = t.run()
    timer.join()
    assert summary["preempted"] and 1 <= summary["step"] < 6
    marker = json.loads((tmp_path / "b" / "debug" / "preempted").read_text())
    assert marker == {**marker, "step": summary["step"], "signal": "SIGUSR1"}
    assert t.checkpoints.latest() == summary["step"]
    resumed = trainer(tmp_path / "b", "--training.steps=6", "--model.dropout=0.1")
    resumed.run()
    assert not (tmp_path / "b" / "debug" / "preempted").exists() and (tmp_path / "b" / "debug" / "finished").exists()
    assert all(torch.equal(v, straight.model.state_dict()[k]) for k, v in resumed.model.state_dict().items())
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # handlers are put back


def test_checkpoints_on_an_fsspec_url_with_retention(tmp_path, monkeypatch):
    """The commit guarantee on a URL (docs/operations.md): the marker is written only once every
    file the checkpoint's metadata names is in the store whole, and no fsync notice reaches the
    user where the store has nothing to sync."""
    t = trainer(tmp_path, "--training.steps=1")
    manager = CheckpointManager("memory://edlm-test/run/checkpoints", keep_last=2, keep_every=4)
    write_file = manager.fs.pipe_file

    def commit_after_complete_files(path, data, **kwargs):
        if path.endswith("/COMMITTED"):
            step_dir = path.rsplit("/", 1)[0]
            metadata = safe_reader("memory://" + step_dir).read_metadata()
            for info in metadata.storage_data.values():
                assert manager.fs.size(f"{step_dir}/{info.relative_path}") >= info.offset + info.length
        return write_file(path, data, **kwargs)

    monkeypatch.setattr(manager.fs, "pipe_file", commit_after_complete_files)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 9):
            t.step = step
            manager.save(step, t.state_dict())
    assert not [w for w in caught if "fsync" in str(w.message)]
    assert manager.committed_steps() == [4, 7, 8]
    fresh = trainer(tmp_path / "other", "--training.steps=1")
    state = fresh.loadable_state(manager, 8)
    manager.load(8, state)
    assert state["trainer"]["step"] == 8


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_changes_nothing_but_memory(tmp_path, mode):
    plain = trainer(tmp_path / "plain", "--training.steps=2")
    ac = trainer(tmp_path / mode, "--training.steps=2", f"--parallel.activation_checkpoint={mode}", "--parallel.ac_every=2")
    for _ in range(2):
        assert plain.train_step()["train/loss"] == ac.train_step()["train/loss"]
    assert all(torch.equal(v, ac.model.state_dict()[k]) for k, v in plain.model.state_dict().items())
    assert ac.model.state_dict().keys() == plain.model.state_dict().keys()


@pytest.mark.slow
def test_compiled_blocks_match_eager(tmp_path):
    eager = trainer(tmp_path / "eager", "--training.steps=2", "--debug.deterministic=false")
    compiled = trainer(tmp_path / "compiled", "--training.steps=2", "--parallel.compile=true", "--debug.deterministic=false")
    for _ in range(2):
        assert compiled.train_step()["train/loss"] == pytest.approx(eager.train_step()["train/loss"], rel=1e-4)
    assert compiled.model.state_dict().keys() == eager.model.state_dict().keys()
