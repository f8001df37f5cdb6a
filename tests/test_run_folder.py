"""A run folder is never damaged by a mistake (the fault matrix of docs/operations.md): a resume
is checked before anything is written, one trainer per folder, shards verified against their
manifest, storage errors in one line with the `failed` marker, Ctrl-C as a pre-emption.

Every refused command is compared with the folder before it, byte for byte."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed.checkpoint as dcp

import edlm_dist.runs.folder as folder_module
import edlm_dist.runs.tensorboard as tensorboard
from edlm_dist.data.corpus_writer import write_corpus
from edlm_dist.data.tokenizers import build_tokenizer
from edlm_dist.train import main as train
from edlm_dist.training import Trainer
from edlm_dist.training.faults import FaultInjector
from edlm_dist.runs.folder import RunFolderLocked, RunLock
from run_utils import DEBUG_CONFIG, REPO, debug_config, folder_digest, one_line_error, read_scalars, wait_for

STEPS = 6  # configs/debug.toml: checkpoints at steps 3 and 6


def command(root: Path, *overrides: str) -> list[str]:
    return ["--config", str(DEBUG_CONFIG), f"--job.dump_folder={root}", *overrides]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished debug run (checkpoints at 3 and 6); tests work on copies of its root."""
    root = tmp_path_factory.mktemp("finished")
    Trainer(debug_config(root)).run()
    return root


@pytest.fixture
def root(finished, tmp_path) -> Path:
    """A copy of the finished run's root; its run folder is `root / "debug"`."""
    shutil.copytree(finished, tmp_path / "root")
    return tmp_path / "root"


def without(digest: dict[str, str], *names: str) -> dict[str, str]:
    return {name: value for name, value in digest.items() if name not in names}


# ---- 2 and 3: a resume is checked before anything is written -----------------------------------

@pytest.mark.parametrize("override,key,was,now", [
    ("--model.hidden_size=64", "model.hidden_size", "32", "64"),
    ("--data.seq_len=100000", "data.seq_len", "16", "100000"),
    ("--training.task=ar", "training.task", "'mdlm'", "'ar'"),
    ("--training.global_batch_size=16", "training.global_batch_size", "8", "16"),
    ("--data.seed=7", "data.seed", "1234", "7"),
    ("--checkpoint.folder=elsewhere", "checkpoint.folder", "'checkpoints'", "'elsewhere'"),
])
def test_a_resume_that_changes_a_fixed_key_is_refused_and_changes_nothing(root, capsys, override, key, was, now):
    before = folder_digest(root)
    err = one_line_error(capsys, train, command(root, override))
    assert f"{key} cannot change when {root / 'debug'} resumes" in err and f"it was {was}, now {now}" in err
    assert folder_digest(root) == before  # config.toml, the finished marker and the checkpoints as they were


@pytest.mark.parametrize("override,message", [
    ("--optim.lr=inf", "error: config key optim.lr must be a finite number, got inf"),
    ("--optim.lr=nan", "error: config key optim.lr must be a finite number, got nan"),
    ("--optim.lr=1e38", "error: config key optim.lr must be in (0, 1], got 1e+38"),
    ("--data.dataset=wikitxt2", "error: data.dataset: unknown dataset 'wikitxt2'; did you mean 'wikitext2'?"),
    ("--training.on_nonfinite=ignore", "error: config key training.on_nonfinite must be one of 'rollback', 'stop'; "
                                       "got 'ignore' on the command line"),
])
def test_impossible_values_are_refused_before_anything_is_written(root, capsys, override, message):
    before = folder_digest(root)
    assert one_line_error(capsys, train, command(root, override, "--training.steps=9")) == message
    assert folder_digest(root) == before


def test_steps_behind_the_latest_checkpoint_and_ema_switched_off_are_refused(root, capsys):
    before = folder_digest(root)
    err = one_line_error(capsys, train, command(root, "--training.steps=3"))
    assert f"training.steps = 3, but {root / 'debug'} is at step 6 (its latest checkpoint)" in err
    err = one_line_error(capsys, train, command(root, "--training.ema_decay=0"))
    assert "training.ema_decay cannot turn EMA off" in err and "it was 0.99, now 0.0" in err
    assert folder_digest(root) == before


def test_changed_keys_take_effect_are_recorded_and_the_old_config_is_kept(root, capsys):
    old_config = (root / "debug" / "config.toml").read_text()
    trainer = Trainer(debug_config(root, "--optim.lr=1e-2", "--optim.beta2=0.9", "--training.steps=8"))
    trainer.run()
    changed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("config changed at step 6: "))
    assert changed.endswith("training.steps 6 -> 8, optim.lr 0.001 -> 0.01, optim.beta2 0.999 -> 0.9 "
                            f"(the old one is kept as {root / 'debug' / 'config.00000006.toml'})")
    lrs = dict(read_scalars(root / "debug")["train/lr"])
    assert (lrs[6], lrs[7], lrs[8]) == (pytest.approx(1e-3), pytest.approx(1e-2), pytest.approx(1e-2))
    assert all(group["betas"] == (0.9, 0.9) for group in trainer.optimizer.param_groups)
    assert (root / "debug" / "config.00000006.toml").read_text() == old_config
    assert "lr = 0.01" in (root / "debug" / "config.toml").read_text()
    assert json.loads((root / "debug" / "finished").read_text())["step"] == 8


def test_a_cosine_schedule_follows_the_new_number_of_steps(root):
    cosine = ("--optim.lr_schedule=cosine", "--optim.min_lr_ratio=0")
    Trainer(debug_config(root, *cosine, "--training.steps=10")).run()
    lrs = dict(read_scalars(root / "debug")["train/lr"])
    # step s logs the lr of the next update, lr_multiplier(s): cosine from step 2 (warm-up) to 10
    assert lrs[8] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 6 / 8)))
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)


def test_an_unreadable_checkpoint_leaves_only_the_failed_marker(root, capsys):
    shard = root / "debug" / "checkpoints" / "step_00000006" / "__0_0.distcp"
    needed = _needed(shard)
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated
    before = folder_digest(root)
    err = one_line_error(capsys, train, command(root, "--training.steps=9"))
    assert err == (f"error: cannot load checkpoint {shard.parent}: {shard} is truncated "
                   f"(1000 bytes; the checkpoint's metadata needs {needed})")
    assert without(folder_digest(root), "debug/failed") == without(before, "debug/finished")
    failed = json.loads((root / "debug" / "failed").read_text())
    assert "is truncated" in failed["reason"] and failed["step"] == 6  # the step the run had reached, not 0


def _needed(shard: Path) -> int:
    """The bytes of `shard` that its checkpoint's metadata refers to."""
    metadata = dcp.FileSystemReader(str(shard.parent)).read_metadata()
    return max(i.offset + i.length for i in metadata.storage_data.values() if i.relative_path == shard.name)


# ---- 4: one trainer per run folder -------------------------------------------------------------

def test_a_second_trainer_on_a_run_folder_is_refused_and_the_first_finishes(tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "edlm_dist.train",
                              *command(tmp_path, "--training.steps=8", "--debug.step_sleep_s=0.5")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lock = tmp_path / "debug" / "lock"
        wait_for(lock.exists, 60, "the first trainer's lock")
        err = one_line_error(capsys, train, command(tmp_path, "--training.steps=8"))
        assert f"run folder {tmp_path / 'debug'} is in use by pid {first.pid} on " in err
        assert f"if it is gone, delete {lock}" in err
        out, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-2000:]
    run = tmp_path / "debug"
    assert not lock.exists() and json.loads((run / "finished").read_text())["step"] == 8
    assert len(list((run / "tb").iterdir())) == 1  # one writer's TensorBoard file
    assert [step for step, _ in read_scalars(run)["train/loss"]] == list(range(1, 9))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(path: Path, **holder) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "process_start": None, "job": "",
                                "time": 0, "command": "edlm train", **holder}))


def test_a_stale_lock_is_taken_over_and_a_live_one_elsewhere_is_not(tmp_path, capsys, monkeypatch):
    path = tmp_path / "run" / "lock"
    pid = dead_pid()
    write_lock(path, pid=pid)
    RunLock(path).acquire()
    assert f"taking over the lock of pid {pid}, which is no longer running" in capsys.readouterr().err
    assert json.loads(path.read_text())["pid"] == os.getpid()
    write_lock(path, host="node-17", pid=4242)
    with pytest.raises(RunFolderLocked, match="is in use by pid 4242 on node-17 since"):
        RunLock(path).acquire()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")  # a restart of the same job, on another node
    write_lock(path, host="node-17", pid=4242, job="job-7")
    lock = RunLock(path)
    lock.acquire()
    assert "taking over the lock of an earlier process of this job (job-7)" in capsys.readouterr().err
    lock.release()
    assert not path.exists()


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"lock"', '{"host": 5}', '{"host": "h", "pid": "x"}'])
def test_a_lock_file_without_a_lock_record_is_taken_over_once_untouched(tmp_path, capsys, monkeypatch, text):
    """Empty (a trainer killed between creating and writing it) or damaged: taken over with a
    message after DAMAGED_GRACE_S without a write, refused in one line before."""
    path = tmp_path / "run" / "lock"
    path.parent.mkdir()
    path.write_text(text)
    monkeypatch.setattr(folder_module, "DAMAGED_GRACE_S", 3600.0)
    with pytest.raises(RunFolderLocked, match="which holds no lock record yet .* taken over once untouched for 3600 s"):
        RunLock(path).check_free()
    monkeypatch.setattr(folder_module, "DAMAGED_GRACE_S", 0.0)
    lock = RunLock(path)
    lock.acquire()
    assert "taking over the lock of a" in capsys.readouterr().err
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_trainer_takes_over_the_lock_of_a_killed_one(root, capsys):
    write_lock(root / "debug" / "lock", pid=dead_pid())
    Trainer(debug_config(root, "--training.steps=7")).run()
    assert "taking over the lock of pid" in capsys.readouterr().err
    assert not (root / "debug" / "lock").exists()


# ---- 5: shard integrity ------------------------------------------------------------------------

@pytest.fixture
def corpus_run(tmp_path) -> tuple[Path, list[str]]:
    """A run of 4 steps on a small prepared char corpus: (its root, the overrides that name the corpus)."""
    docs = [("abc"[i % 3] + "xyz"[i % 2]) * (i % 7 + 5) + str(i) for i in range(80)]
    tokenizer = build_tokenizer("char", corpus="".join(docs))
    write_corpus(str(tmp_path / "corpus"), tokenizer, {"train": docs[:70], "val": docs[70:]}, shard_tokens=300)
    data = ["--data.dataset=files", f"--data.path={tmp_path / 'corpus'}", "--data.tokenizer=char"]
    Trainer(debug_config(tmp_path / "root", *data, "--training.steps=4", "--checkpoint.interval=2")).run()
    return tmp_path / "root", data


def test_a_corrupt_shard_is_refused_before_training_on_it(corpus_run, capsys, monkeypatch):
    root, data = corpus_run
    recorded = json.loads((root / "debug" / "verified_shards.json").read_text())
    shard = root.parent / "corpus" / "train-00001.tokens"
    assert str(shard) in recorded and len(recorded) == len(list(root.parent.glob("corpus/*.tokens")))
    calls = []
    real = __import__("edlm_dist.data.integrity", fromlist=["file_sha256"]).file_sha256
    monkeypatch.setattr("edlm_dist.data.integrity.file_sha256", lambda url: calls.append(url) or real(url))
    Trainer(debug_config(root, *data, "--training.steps=5", "--checkpoint.interval=2")).run()
    assert calls == []  # every shard was checked by the first start and has not changed since
    data_bytes = bytearray(shard.read_bytes())
    data_bytes[100:104] = b"\x01\x00\x02\x00"  # same size, other tokens (all below the vocabulary size)
    shard.write_bytes(bytes(data_bytes))
    before = folder_digest(root)
    err = one_line_error(capsys, train, command(root, *data, "--training.steps=6", "--checkpoint.interval=2"))
    assert err.startswith(f"error: {shard}: its sha256 is ") and "the corpus manifest says" in err
    assert "set data.on_error = 'skip' to train on the rest (damaged parts read as EOS and counted)" in err
    assert calls == [str(shard)]  # only the rewritten shard was read again
    assert without(folder_digest(root), "debug/failed") == without(before, "debug/finished")
    # without the hash up front, the reader's own check refuses the damaged tokens when they are read
    unchecked = ["--training.steps=6", "--checkpoint.interval=2", "--data.verify_shards=false"]
    err = one_line_error(capsys, train, command(root, *data, *unchecked))
    tokens = len(data_bytes) // 2  # the shard is one check chunk
    assert err == (f"error: {shard}: token offsets 0-{tokens} (bytes 0-{2 * tokens}) do not match their CRC-32 in "
                   f"{shard.with_suffix('.check')}")
    Trainer(debug_config(root, *data, *unchecked, "--data.on_error=skip")).run()  # the user accepts the loss
    assert json.loads((root / "debug" / "finished").read_text())["step"] == 6
    # with the hash up front too, as the refusal's hint says: warned, and the damage skipped as it is read
    Trainer(debug_config(root, *data, "--training.steps=7", "--checkpoint.interval=2", "--data.on_error=skip")).run()
    assert f"warning: {shard}: its sha256 is " in capsys.readouterr().out
    assert json.loads((root / "debug" / "finished").read_text())["step"] == 7


# ---- 6: storage errors in one line, the failed marker where it can be written -------------------

def test_an_unwritable_dump_or_checkpoint_folder_is_found_before_the_first_step(tmp_path, root, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    err = one_line_error(capsys, train, command(blocker / "runs"))
    assert err == f"error: cannot create the run folder {blocker / 'runs' / 'debug'}: [Errno 20] Not a directory"
    err = one_line_error(capsys, train, command(tmp_path / "new", f"--checkpoint.folder={blocker}/ckpt"))
    assert err == (f"error: cannot write to the checkpoint folder (checkpoint.folder) {blocker}/ckpt: "
                   f"[Errno 20] Not a directory")
    assert not (tmp_path / "new" / "debug").exists()  # a new run that could not start leaves no folder
    before = folder_digest(root)
    (root / "debug" / "checkpoints").rename(root / "moved")
    (root / "debug" / "checkpoints").write_text("")  # the checkpoint folder is now a file
    one_line_error(capsys, train, command(root, "--training.steps=8"))
    (root / "debug" / "checkpoints").unlink()
    (root / "moved").rename(root / "debug" / "checkpoints")
    assert folder_digest(root) == before


def test_a_full_disk_behind_torch_save_is_named_and_marked_failed(tmp_path, capsys, monkeypatch):
    real_save = dcp.save

    def full_disk(state, *, checkpoint_id, **kwargs):
        if checkpoint_id.endswith("step_00000006"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(state, checkpoint_id=checkpoint_id, **kwargs)

    def probe(folder: str) -> OSError:
        return OSError(28, "No space left on device")

    monkeypatch.setattr(dcp, "save", full_disk)
    monkeypatch.setattr("edlm_dist.runs.checkpoint.write_problem", probe)
    err = one_line_error(capsys, train, command(tmp_path))
    ckpt = tmp_path / "debug" / "checkpoints"
    assert err == f"error: cannot write checkpoint {ckpt / 'step_00000006'}: [Errno 28] No space left on device"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_00000003"]  # the torn save is removed
    assert json.loads((tmp_path / "debug" / "failed").read_text())["reason"] == err.removeprefix("error: ")


def test_tensorboard_storage_turning_read_only_mid_run_fails_in_one_line(tmp_path, capsys, monkeypatch):
    opened: list[str] = []

    def read_only_after_four_writes(path, mode="r", *args, **kwargs):
        if len(opened) == 4:
            raise OSError(30, "Read-only file system", str(path))
        opened.append(path)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(tensorboard, "open", read_only_after_four_writes, raising=False)
    err = one_line_error(capsys, train, command(tmp_path))
    events = next((tmp_path / "debug" / "tb").iterdir())
    assert err == f"error: cannot write {events}: [Errno 30] Read-only file system"
    assert err.removeprefix("error: ") == json.loads((tmp_path / "debug" / "failed").read_text())["reason"]


def test_ctrl_c_checkpoints_at_the_step_boundary_and_a_second_one_stops_at_once(root, capsys, monkeypatch):
    def ctrl_c(times: int, at: int):
        def mid_step(self, step: int) -> None:
            if step == at:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)
        return mid_step

    monkeypatch.setattr(FaultInjector, "mid_step", ctrl_c(1, at=8))
    train(command(root, "--training.steps=10"))
    assert "Ctrl-C: stopping after this step, with a checkpoint" in capsys.readouterr().err
    marker = json.loads((root / "debug" / "preempted").read_text())
    assert (marker["step"], marker["signal"]) == (8, "SIGINT")
    assert (root / "debug" / "checkpoints" / "step_00000008" / "COMMITTED").exists()
    monkeypatch.setattr(FaultInjector, "mid_step", ctrl_c(2, at=9))
    with pytest.raises(SystemExit) as exit_info:
        train(command(root, "--training.steps=10", "--checkpoint.interval=1"))
    assert exit_info.value.code == 130 and capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert not (root / "debug" / "checkpoints" / "step_00000009").exists()  # stopped within step 9
    assert not (root / "debug" / "lock").exists()


REAL_STORAGE = textwrap.dedent("""\
    set -u
    mount -t tmpfs -o size=1500k tmpfs "$1/full" && mount -t tmpfs -o size=20m,ro tmpfs "$1/ro" \\
        && mount -t tmpfs -o size=20m tmpfs "$1/turns_ro" || exit 99
    train() { "$PYTHON" -m edlm_dist.train --config "$CONFIG" "$@"; echo "rc=$?" >&2; }
    train --job.dump_folder="$1/full" 2> "$1/full.err" > /dev/null
    train --job.dump_folder="$1/ro" 2> "$1/ro.err" > /dev/null
    train --job.dump_folder="$1/turns_ro" --training.steps=40 --debug.step_sleep_s=0.3 2> "$1/turns_ro.err" > /dev/null &
    until [ -f "$1/turns_ro/debug/checkpoints/step_00000003/COMMITTED" ]; do sleep 0.1; done
    until mount -o remount,ro "$1/turns_ro" 2> /dev/null; do sleep 0.05; done  # busy while a file is open
    wait
    ls "$1/full/debug" > "$1/full.ls"; ls "$1/full/debug/checkpoints" >> "$1/full.ls"
""")


def test_real_storage_full_read_only_and_turning_read_only(tmp_path):
    """The same three failures on real file systems (tmpfs mounts in a user namespace), where the
    machine allows it; the tests above produce them with patched writes everywhere."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    for name in ("full", "ro", "turns_ro"):
        (tmp_path / name).mkdir()
    script = tmp_path / "storage.sh"
    script.write_text(REAL_STORAGE)
    env = {**os.environ, "PYTHON": sys.executable, "CONFIG": str(DEBUG_CONFIG), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", str(script), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=240)
    if proc.returncode == 99 or "unshare:" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr.strip()[:200]}")

    def errors(name: str) -> list[str]:
        return [line for line in (tmp_path / f"{name}.err").read_text().splitlines() if line.startswith(("error", "rc="))]

    step6 = tmp_path / "full" / "debug" / "checkpoints" / "step_00000006"
    assert errors("full") == [f"error: cannot write checkpoint {step6}: [Errno 28] No space left on device", "rc=2"]
    assert (tmp_path / "full.ls").read_text().split() == ["checkpoints", "config.toml", "failed", "tb", "step_00000003"]
    assert errors("ro") == [f"error: cannot create the run folder {tmp_path / 'ro' / 'debug'}: "
                            f"[Errno 30] Read-only file system", "rc=2"]
    turned = errors("turns_ro")
    assert turned[-1] == "rc=2" and turned[0].startswith(f"error: cannot write {tmp_path / 'turns_ro' / 'debug'}/")
    assert turned[0].endswith(": [Errno 30] Read-only file system") and len(turned) == 2


def test_check_refuses_what_the_trainer_would_and_prints_the_run_folder(root, capsys):
    before = folder_digest(root)
    train(command(root, "--check", "--training.steps=9"))
    assert capsys.readouterr().out.strip() == str((root / "debug").resolve())
    err = one_line_error(capsys, train, command(root, "--check", "--model.n_layers=3"))
    assert "model.n_layers cannot change when" in err
    write_lock(root / "debug" / "lock", host="node-17", pid=4242)
    assert "is in use by pid 4242 on node-17" in one_line_error(capsys, train, command(root, "--check"))
    (root / "debug" / "lock").unlink()
    err = one_line_error(capsys, train, command(root, "--check", "--data.dataset=wikitxt2"))
    assert err == "error: data.dataset: unknown dataset 'wikitxt2'; did you mean 'wikitext2'?"
    assert folder_digest(root) == before
