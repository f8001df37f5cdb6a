"""The output folders of sampling and evaluation, checked before any work: they never replace the
files of a training run, never replace earlier results unless asked to (`--overwrite`), and a
folder that cannot be written fails at once rather than after hours of work."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edlm_dist.config import ConfigError
from edlm_dist.fileio import check_writable, storage_errors
from edlm_dist.runs.folder import is_training_run


def refuse_training_run(folder: Path, what: str) -> None:
    """Refuse, in one line, `folder` (called `what`) when it is a training run folder."""
    if is_training_run(folder):
        raise ConfigError(f"{what} {folder} is a training run folder (it has config.toml) and outputs never go "
                          f"into a training run: choose another folder with --out")


def check_output(folder: Path, what: str, results: Iterable[Path] = (), overwrite: bool = False) -> None:
    """Refuse, in one line, `folder` (called `what`) when it is a training run folder, when one of
    `results` exists (unless `overwrite`), or when it cannot be written (it is created if needed)."""
    refuse_training_run(folder, what)
    if not overwrite:
        existing = next((path for path in results if path.exists()), None)
        if existing is not None:
            raise ConfigError(f"{existing} already exists: give --overwrite to replace it, or another folder with --out")
    check_writable(str(folder), what)


def clear_tensorboard(folder: Path) -> None:
    """Remove the TensorBoard event files of `folder` (results being replaced)."""
    for path in folder.glob("events.out.tfevents.*"):
        with storage_errors(path, "remove"):
            path.unlink()
