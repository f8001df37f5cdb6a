"""A run folder: resolved config, TensorBoard logs, summary, and the markers a launcher reads.

Markers (small JSON files) say how the last process ended: `finished` (all steps done),
`preempted` (a signal asked it to stop; it checkpointed and left cleanly, so requeue it) and
`failed` (an error a restart would repeat, such as a diverged loss). Exit codes cannot say
this reliably under torchrun, which replaces its workers' codes with its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edlm_dist.fileio import atomic_write_text

MARKERS = ("finished", "preempted", "failed")


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def mark(self, name: str, **info: Any) -> None:
        """Leave the marker `name` with `info` (and the time)."""
        if name not in MARKERS:
            raise ValueError(f"unknown marker {name!r}")
        atomic_write_text(self.path / name, json.dumps({**info, "time": time.time()}) + "\n")

    def marker(self, name: str) -> dict[str, Any] | None:
        """The contents of marker `name`, or None if it is absent."""
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def clear_markers(self) -> None:
        """Forget how the previous process ended (a new one is starting)."""
        for name in MARKERS:
            (self.path / name).unlink(missing_ok=True)

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        atomic_write_text(self.path / name, json.dumps(payload, indent=2) + "\n")
