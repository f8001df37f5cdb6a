"""The output folders of sampling and evaluation, checked before any work: they never replace the
files of a training run or of the other program, never replace earlier results unless asked to
(`--overwrite`), and a folder that cannot be written fails at once rather than after hours of work.

What each program's folder holds, which is how the other one recognises it: a sampling output
folder has `samples.jsonl` (its first file); an evaluation results folder has results at
`<label>/<set>_<split>/step_<8-digit step>.json` (or the `.damaged` record of a checkpoint that
could not be read, see `damaged_name`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from edlm_dist.config import ConfigError
from edlm_dist.fileio import check_writable, leftover_temporaries, refuse_existing, storage_errors
from edlm_dist.runs.folder import is_training_run

SAMPLING, EVALUATION = "sampling", "evaluation"  # the programs writing these folders
SAMPLES = "samples.jsonl"  # a sampling run's first file
EVAL_RESULTS = ("*/*/step_*.json", "*/*/step_*.damaged")  # under an evaluation results folder
TENSORBOARD_EVENTS = "events.out.tfevents.*"


def result_name(step: int) -> str:
    """The file of one evaluation result of the checkpoint of `step`: `step_<8-digit step>.json`."""
    return f"step_{step:08d}.json"


def damaged_name(step: int) -> str:
    """The record, where its result would go, of a checkpoint found damaged: `step_<8-digit step>.damaged`
    (JSON without figures, so that readers of `step_*.json` never take it for a result)."""
    return f"step_{step:08d}.damaged"


def _other_outputs(folder: Path, program: str) -> tuple[str, Path] | None:
    """(what it is, a file that shows it) when `folder` holds the outputs of the program other than `program`."""
    if program == EVALUATION:
        samples = folder / SAMPLES
        return ("a sampling output folder", samples) if samples.is_file() else None
    if not folder.is_dir():
        return None
    held = next((path for pattern in EVAL_RESULTS for path in folder.glob(pattern)), None)
    return ("an evaluation results folder", held) if held is not None else None


def refuse_training_run(folder: Path, what: str) -> None:
    """Refuse, in one line, `folder` (called `what`) when it is a training run folder."""
    if is_training_run(folder):
        raise ConfigError(f"{what} {folder} is a training run folder (it has config.toml) and outputs never go "
                          f"into a training run: choose another folder with --out")


def refuse_foreign(folder: Path, what: str, program: str) -> None:
    """Refuse, in one line, `folder` (called `what`) when it is a training run folder or holds the
    outputs of the other program than `program` (SAMPLING or EVALUATION), whose files this one
    would mix with or replace."""
    refuse_training_run(folder, what)
    other = _other_outputs(folder, program)
    if other is not None:
        kind, evidence = other
        raise ConfigError(f"{what} {folder} is {kind} (it holds {evidence}) and {program} never writes into "
                          f"another program's outputs: choose another folder with --out")


def check_output(folder: Path, what: str, program: str, results: Iterable[Path] = (), overwrite: bool = False) -> None:
    """Refuse, in one line, `folder` (called `what`) when `refuse_foreign` does, when one of `results`
    exists (unless `overwrite`), or when it cannot be written (it is created if needed)."""
    refuse_foreign(folder, what, program)
    refuse_existing(results, overwrite, "another folder with --out")
    check_writable(str(folder), what)


def tensorboard_events(folder: Path) -> list[Path]:
    """The TensorBoard event files in `folder`."""
    return sorted(folder.glob(TENSORBOARD_EVENTS))


def remove(paths: Iterable[Path | str]) -> None:
    """Remove the files `paths` (outputs being replaced under --overwrite); a missing one is no error."""
    for path in paths:
        with storage_errors(path, "remove"), contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def remove_leftovers(paths: Iterable[Path]) -> None:
    """Remove what interrupted atomic writes of `paths` left beside them (under --overwrite)."""
    remove(tmp for path in paths for tmp in leftover_temporaries(path))
