"""The checks a training command passes before it may write into a run folder: nothing it
contradicts in the run's checkpoints, and storage that takes writes. Run by the trainer's rank 0
under the run folder's lock, and by `python -m edlm_dist.train --check` for launchers."""

from __future__ import annotations

from typing import Any

from edlm_dist.config import ConfigError, TrainProgram, check_resume, config_changes
from edlm_dist.data.datasets import check_dataset
from edlm_dist.fileio import check_writable
from edlm_dist.runs.checkpoint import CheckpointManager
from edlm_dist.runs.weights import run_checkpoints
from edlm_dist.runs.folder import IMPORTED_NAME, RunFolder


def check_command(cfg: TrainProgram, run_folder: RunFolder, checkpoints: CheckpointManager) -> list[tuple[str, Any, Any]]:
    """Refuse to run `cfg` in `run_folder` (whose checkpoints `cfg` puts in `checkpoints`) when it
    names data the registry does not know, contradicts the run's checkpoints (keys that cannot
    change on resume, `training.steps` behind the latest checkpoint) or its storage cannot be
    written; else the config changes since the run last started. Without a checkpoint, nothing saved can contradict a change."""
    run = str(run_folder.path)
    check_dataset(cfg.data)
    if (run_folder.path / IMPORTED_NAME).is_file():
        raise ConfigError(f"{run} holds weights imported by tools/import_mdlm.py, with no optimizer or data state to "
                          "resume from: train in another run folder (job.name) that reads it, e.g. as nce.denoiser")
    stored = run_folder.stored_config()
    saved = checkpoints if stored is None else run_checkpoints(run_folder.path, stored)  # where they are
    latest = saved.latest()
    changes = []
    if stored is not None:
        changes = config_changes(stored, cfg) if latest is None else check_resume(stored, cfg, run)
    if latest is not None and cfg.training.steps < latest:
        raise ConfigError(f"training.steps = {cfg.training.steps}, but {run} is at step {latest} (its latest "
                          f"checkpoint); give training.steps >= {latest}")
    check_writable(run, "the run folder")
    if cfg.checkpoint.enable:
        check_writable(checkpoints.folder, "the checkpoint folder (checkpoint.folder)")
    return changes
