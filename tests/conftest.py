"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster_utils import losses_logged, run_summary, torchrun_standalone

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder: $EDLM_DATA_DIR, else ../shared/data beside the repo.

    Tests using it are skipped when it is missing, unless EDLM_REQUIRE_DATA=1 makes that a failure.
    """
    folder = Path(os.environ.get("EDLM_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not folder.is_dir():
        message = f"data folder {folder} not found (set EDLM_DATA_DIR)"
        if os.environ.get("EDLM_REQUIRE_DATA") == "1":
            pytest.fail(message + " and EDLM_REQUIRE_DATA=1")
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def uninterrupted_folder(tmp_path_factory) -> tuple[Path, str]:
    """The debug config on two ranks under torchrun, start to finish: (its folder, its console
    output). The interrupted runs of the resume, fault, two-node and SLURM tests compare with it."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    proc = torchrun_standalone(folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, proc.stdout


@pytest.fixture(scope="session")
def uninterrupted_run(uninterrupted_folder: tuple[Path, str]) -> tuple[dict[int, str], dict]:
    """The uninterrupted run's (printed losses, summary)."""
    folder, stdout = uninterrupted_folder
    return losses_logged(stdout), run_summary(folder)
