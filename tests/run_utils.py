"""Building small runs for tests from `configs/debug.toml` (a model that runs anywhere in seconds)."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from edlm_dist.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = REPO / "configs" / "debug.toml"


def debug_config(folder: Path, *overrides: str) -> Config:
    """The debug config writing its run under `folder` (run folder `folder/debug`), with overrides."""
    return load_config(DEBUG_CONFIG, [f"--job.dump_folder={folder}", *overrides])


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run folder: tag -> [(step, value)]."""
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
