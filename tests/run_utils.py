"""Small runs for tests from `configs/debug.toml` (runs anywhere in seconds): building, reading, polling."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from edlm_dist.config import TrainProgram, load_config
from edlm_dist.energy.loading import resolve_model_config

REPO = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = REPO / "configs" / "debug.toml"
DEBUG_SAMPLE = REPO / "configs" / "debug_sample.toml"  # sampling and scoring the debug runs
DEBUG_EVAL = REPO / "configs" / "debug_eval.toml"


def debug_config(folder: Path, *overrides: str) -> TrainProgram:
    """The debug config writing its run under `folder` (run folder `folder/debug`), with overrides,
    resolved as the train entry point resolves it (an NCE run takes its denoiser's [model])."""
    return resolve_model_config(load_config(TrainProgram, DEBUG_CONFIG, [f"--job.dump_folder={folder}", *overrides]))


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run folder: tag -> [(step, value)]."""
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def one_line_error(capsys: pytest.CaptureFixture[str], command: Callable[[list[str]], Any], argv: list[str]) -> str:
    """The message of an entry point that must stop with a user error (exit 2, one line on stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        command(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll `condition` until it returns something true (returned) or `timeout` seconds pass (a failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256 of its bytes): equal digests mean a
    byte-for-byte unchanged folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
