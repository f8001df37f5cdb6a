"""A run folder: resolved config and its history, TensorBoard logs, summary, the markers a
launcher reads, and the lock that keeps it to one trainer.

Markers (small JSON files) say how the last process ended: `finished` (all steps done),
`preempted` (a signal asked it to stop; it checkpointed and left cleanly, so requeue it) and
`failed` (an error a restart would repeat, such as a diverged loss or a full disk). Exit codes
cannot say this reliably under torchrun, which replaces its workers' codes with its own.

The lock (`lock`, JSON: host, pid, process start, job, time, command) is created atomically
(O_EXCL) by the trainer's rank 0 before anything else is written and removed when it leaves. A
lock whose holder is gone is taken over with a message: a dead process on this host (or a live
pid that now belongs to another process), an earlier incarnation of this very job (the same
torchrun run id or SLURM job id: a restart or requeue, possibly on another node), or a lock file
without a lock record (empty or damaged: a trainer killed between creating and writing it) left
untouched for `DAMAGED_GRACE_S`. A holder on another host that is not this job cannot be checked
from here: the lock stands until it is removed by hand (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from edlm_dist.config import TrainProgram, config_to_toml, load_run_config
from edlm_dist.fileio import StorageError, atomic_write_text, describe_os_error, storage_errors

MARKERS = ("finished", "preempted", "failed")
LOCK_NAME = "lock"
CONFIG_NAME = "config.toml"
IMPORTED_NAME = "imported.json"  # where tools/import_mdlm.py records the source of a run's weights


DAMAGED_GRACE_S = 10.0  # a lock file without a record, untouched this long, belongs to no live trainer


def _lock_record(text: str) -> dict[str, Any] | None:
    """The holder a lock file's text records, or None when it is not a lock record of ours."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(record, dict) and isinstance(record.get("host"), str) and isinstance(record.get("pid"), int)
            and isinstance(record.get("time", 0), (int, float))):
        return None
    return record


class RunFolderLocked(RuntimeError):
    """Another trainer holds the run folder; the message names it and the lock file."""

    user_error = True


def is_training_run(folder: Path) -> bool:
    """Whether `folder` holds a training run (its config without the samples of a sampling output)."""
    return (folder / CONFIG_NAME).is_file() and not (folder / "samples.jsonl").is_file()


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot, /proc/<pid>/stat field 22), which tells
    a live holder from another process that got its pid; None without /proc or that process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _job_id() -> str:
    """This process's job: torchrun's run id (kept across its restarts), else SLURM's job id (kept
    across requeues); empty for a plain process."""
    return os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID") or ""


class RunLock:
    """The exclusive lock of one run folder, held by this process between `acquire` and `release`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.me = {
            "host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
            "job": _job_id(), "time": time.time(), "command": " ".join(sys.argv),
        }

    def _read(self) -> dict[str, Any] | None:
        """The holder recorded in the lock file (None: gone), with the file's text under "text";
        one without a lock record (empty, not JSON, not a record of ours) is retried briefly
        while it may be being written, then returned with "damaged" set."""
        text = ""
        for _ in range(20):
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return None
            except OSError:
                time.sleep(0.05)
                continue
            holder = _lock_record(text)
            if holder is not None:
                return {**holder, "text": text}
            time.sleep(0.05)
        return {"damaged": True, "text": text}

    def _age(self) -> float:
        """Seconds since the lock file was last written (0 when it is gone)."""
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _gone(self, holder: dict[str, Any]) -> str:
        """Why `holder` no longer holds the lock, or "" when it may still."""
        if holder.get("damaged"):
            age = self._age()
            if age < DAMAGED_GRACE_S:  # a trainer writes its record right after creating the file
                return ""
            what = "an empty lock file" if not holder["text"].strip() else "a lock file that holds no lock record"
            return f"{what}, untouched for {age:.0f} s"
        if holder.get("job") and holder.get("job") == self.me["job"]:
            return f"an earlier process of this job ({holder['job']})"
        if holder.get("host") != self.me["host"]:
            return ""
        pid = holder["pid"]
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"pid {pid}, which is no longer running"
        except PermissionError:
            return ""
        start = _process_start(pid)
        if holder.get("process_start") and start and start != holder["process_start"]:
            return f"pid {pid}, which is no longer running (the pid now belongs to another process)"
        return ""

    def _locked(self, holder: dict[str, Any]) -> RunFolderLocked:
        """The error naming `holder`, who may still be using the run folder."""
        if holder.get("damaged"):
            return RunFolderLocked(f"run folder {self.path.parent} is locked by {self.path}, which holds no lock "
                                   f"record yet (written {self._age():.0f} s ago); it is taken over once untouched for "
                                   f"{DAMAGED_GRACE_S:.0f} s")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
        return RunFolderLocked(
            f"run folder {self.path.parent} is in use by pid {holder.get('pid')} on {holder.get('host')} since "
            f"{started} ({holder.get('command', '?')}): a second trainer would overwrite its checkpoints; wait "
            f"for it or stop it (if it is gone, delete {self.path})")

    def check_free(self) -> None:
        """Raise RunFolderLocked when a holder that may still be alive has the lock."""
        holder = self._read()
        if holder is not None and not self._gone(holder):
            raise self._locked(holder)

    def acquire(self) -> None:
        """Take the lock, taking over a stale one, or raise RunFolderLocked naming the holder."""
        with storage_errors(self.path, "create the lock"):
            for _ in range(3):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    holder = self._read()
                    if holder is not None and holder.get("damaged"):
                        time.sleep(max(0.0, DAMAGED_GRACE_S - self._age()))  # let a writer finish, if there is one
                        holder = self._read()
                    if holder is not None:
                        self._take_over(holder)
                    continue
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(self.me) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                return
        raise RunFolderLocked(f"run folder {self.path.parent}: could not take the lock {self.path} (other processes keep taking it)")

    def _take_over(self, holder: dict[str, Any]) -> None:
        """Remove the lock of `holder` if it is gone, or raise RunFolderLocked naming it."""
        reason = self._gone(holder)
        if not reason:
            raise self._locked(holder)
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process took it over first
        if aside.read_text() != holder["text"]:  # it was already another's fresh lock: give it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            os.unlink(aside)
            return
        os.unlink(aside)
        print(f"run folder {self.path.parent}: taking over the lock of {reason}", file=sys.stderr, flush=True)

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        holder = self._read()
        if holder is not None and all(holder.get(k) == self.me[k] for k in ("host", "pid", "process_start")):
            try:
                self.path.unlink()
            except OSError as err:
                print(f"warning: cannot remove the lock {self.path}: {describe_os_error(err)}", file=sys.stderr)


class RunFolder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = RunLock(path / LOCK_NAME)

    def create(self) -> None:
        with storage_errors(self.path, "create the run folder"):
            self.path.mkdir(parents=True, exist_ok=True)

    def mark(self, name: str, **info: Any) -> None:
        """Leave the marker `name` with `info` (and the time), in place of any other marker."""
        if name not in MARKERS:
            raise ValueError(f"unknown marker {name!r}")
        atomic_write_text(self.path / name, json.dumps({**info, "time": time.time()}) + "\n")
        self.clear_markers(but=name)

    def mark_failed(self, step: int, reason: str) -> None:
        """Leave the `failed` marker if the storage still takes it (a full disk may not): the
        error that ended the run is what the user must see, not this one."""
        try:
            self.mark("failed", step=step, reason=reason)
        except StorageError as err:
            print(f"warning: no failed marker: {err}", file=sys.stderr, flush=True)

    def marker(self, name: str) -> dict[str, Any] | None:
        """The contents of marker `name`, or None if it is absent."""
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def clear_markers(self, but: str = "") -> None:
        """Forget how the previous process ended (a new one is starting), keeping marker `but`."""
        for name in MARKERS:
            if name == but:
                continue
            with storage_errors(self.path / name, "remove"):
                (self.path / name).unlink(missing_ok=True)

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        atomic_write_text(self.path / name, json.dumps(payload, indent=2) + "\n")

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON file of the run, or None when it is absent or unreadable (a cache to rebuild)."""
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def stored_config(self) -> TrainProgram | None:
        """The config the run was last started with (None for a new run)."""
        path = self.path / CONFIG_NAME
        return load_run_config(path) if path.is_file() else None

    def record_config(self, cfg: TrainProgram, step: int) -> Path | None:
        """Write `cfg` as the run's config; a different one that it replaces is kept as
        `config.<8-digit step>.toml`, the step from which it no longer applies (returned)."""
        path = self.path / CONFIG_NAME
        text = config_to_toml(cfg)
        kept = None
        if path.is_file() and path.read_text() != text:
            kept = self.path / f"config.{step:08d}.toml"
            if not kept.exists():  # a config replaced again at the same step made no checkpoint: keep the first
                atomic_write_text(kept, path.read_text())
        atomic_write_text(path, text)
        return kept
