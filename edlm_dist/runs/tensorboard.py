"""TensorBoard scalars and text of a run (main rank only), written synchronously."""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard.summary import scalar
from torch.utils.tensorboard.summary import text as text_summary

from edlm_dist.fileio import storage_errors

_LOGGERS = itertools.count()  # numbers the event files of one process, which may share a second


class MetricsLogger:
    """Scalars and text in a TensorBoard event file under `log_dir` (when `enabled`: the main rank).

    Written synchronously, the file opened for each write and closed after it, so a storage
    problem reaches the caller as one StorageError naming the file (TensorBoard's own writer
    meets it in a background thread, which dies with a traceback while training goes on) and no
    file stays open between writes. Nothing is created before the first write.
    """

    def __init__(self, log_dir: Path, enabled: bool) -> None:
        self.log_dir, self.enabled = Path(log_dir), enabled
        self.path: Path | None = None

    def _write(self, events: list[Event]) -> None:
        if not self.enabled:
            return
        if self.path is None:
            # TensorBoard reads the files of a folder in name order: the time and the number sort as numbers
            name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_LOGGERS):06d}"
            self.path = self.log_dir / name
            events = [Event(wall_time=time.time(), file_version="brain.Event:2"), *events]
        with storage_errors(self.path):
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                records = RecordWriter(f)
                for event in events:
                    records.write(event.SerializeToString())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        self._write([Event(wall_time=now, step=step, summary=scalar(tag, value)) for tag, value in values.items()])

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self._write([Event(wall_time=time.time(), step=step, summary=text_summary(tag, text))])
