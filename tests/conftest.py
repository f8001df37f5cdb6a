"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
