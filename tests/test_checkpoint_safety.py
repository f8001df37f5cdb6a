"""A checkpoint is data: opening one runs nothing from it.

A payload that would create a marker folder when unpickled is planted in DCP's `.metadata`, in a
bytes item and in each of our own state items, and the checkpoint is opened through every entry
point that reads checkpoints: the marker never appears and each refuses in one line naming the
file. The allow-list holds every global this torch writes, and a checkpoint written before our
state stopped being a pickle (tests/fixtures/legacy_run) still resumes, bit for bit.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

from edlm_dist.eval import main as eval_main
from edlm_dist.runs.safe_pickle import _LEGACY_GLOBALS, _METADATA_GLOBALS, _torch_constant, legacy_loads
from edlm_dist.runs.state_blob import StateBlobError, decode_state, encode_state, read_loader_states
from edlm_dist.sample import main as sample_main
from edlm_dist.train import main as train_main
from edlm_dist.training import Trainer
from cluster_utils import losses_logged
from run_utils import DEBUG_CONFIG, DEBUG_EVAL, DEBUG_SAMPLE, REPO, debug_config, folder_digest, one_line_error

FIXTURES = Path(__file__).parent / "fixtures"
STEP = "step_00000002"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Payload:
    """Creates the folder `marker` when unpickled, as a hostile checkpoint would run a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished debug run with checkpoints at steps 1 and 2 (its folder `<root>/debug`)."""
    root = tmp_path_factory.mktemp("trained")
    Trainer(debug_config(root, "--training.steps=2", "--checkpoint.interval=1")).run()
    return root


def stored_items(path: Path) -> dict:
    """Every item of the checkpoint at `path` (the test's own, trusted), by flattened key."""
    metadata = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = {key: torch.empty(tuple(m.size), dtype=m.properties.dtype) if isinstance(m, TensorStorageMetadata) else None
             for key, m in metadata.items()}
    dcp.load(state, checkpoint_id=str(path), no_dist=True)
    return state


def plant(checkpoint: Path, where: str, marker: Path) -> None:
    """Put the payload at `where` ("metadata" or an item's key) of the committed `checkpoint`."""
    if where == "metadata":
        metadata = pickle.loads((checkpoint / ".metadata").read_bytes())
        metadata.storage_meta.modules = [Payload(marker)]  # deep inside otherwise valid metadata
        (checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))
        return
    state = stored_items(checkpoint)
    assert where in state, sorted(state)
    state[where] = Payload(marker)
    for entry in checkpoint.iterdir():
        if entry.name != "COMMITTED":
            entry.unlink()
    dcp.save(state, checkpoint_id=str(checkpoint), no_dist=True)


PLACES = ["metadata", "optimizer.param_groups.0.lr", "trainer.step", "trainer.skipped_steps",
          "trainer.denoiser_step", "data.states", "ema.num_updates"]


def _train(run: Path, out: Path) -> tuple:
    return train_main, ["--config", str(DEBUG_CONFIG), f"--job.dump_folder={run.parent}", "--training.steps=3"]


def _nce(run: Path, out: Path) -> tuple:
    return train_main, ["--config", str(DEBUG_CONFIG), f"--job.dump_folder={out}", "--training.task=nce",
                        f"--nce.denoiser={run}"]


def _sample(run: Path, out: Path) -> tuple:
    return sample_main, ["--config", str(DEBUG_SAMPLE), "--checkpoint", str(run), "--out", str(out / "samples"),
                         "--sample.num_candidates=1"]


def _eval(run: Path, out: Path) -> tuple:
    return eval_main, ["--config", str(DEBUG_EVAL), "--checkpoint", str(run), "--out", str(out / "eval")]


def _export_safetensors(run: Path, out: Path) -> tuple:
    return _tool("export_safetensors").main, [str(run), "--out", str(out / "export.safetensors")]


def _export_mdlm(run: Path, out: Path) -> tuple:
    return _tool("export_mdlm").main, [str(run), "--out", str(out / "mdlm")]


ENTRY_POINTS = {"train (resume)": _train, "train nce (nce.denoiser)": _nce, "sample": _sample, "eval": _eval,
                "export_safetensors": _export_safetensors, "export_mdlm": _export_mdlm}


@pytest.mark.parametrize("where", PLACES)
def test_a_planted_payload_never_runs_and_every_entry_point_refuses_naming_the_file(trained, tmp_path, capsys, where):
    run = tmp_path / "root" / "debug"
    shutil.copytree(trained / "debug", run)
    checkpoint = run / "checkpoints" / STEP
    marker = tmp_path / "PAYLOAD_RAN"
    plant(checkpoint, where, marker)
    before = folder_digest(run)
    for name, entry_point in ENTRY_POINTS.items():
        main, argv = entry_point(run, tmp_path / name.replace(" ", "_"))
        err = one_line_error(capsys, main, argv)
        assert not marker.exists(), f"{name}: the payload ran"
        assert str(checkpoint) in err and "refused" in err, f"{name}: {err}"
        assert ("os.makedirs" in err or "posix.makedirs" in err), f"{name}: {err}"
        # the run folder is as it was; a refused resume leaves only the failed marker
        assert {k: v for k, v in folder_digest(run).items() if k != "failed"} == \
               {k: v for k, v in before.items() if k != "finished"}, name


def test_a_tensor_whose_bytes_are_a_pickle_of_something_else_is_refused(trained, tmp_path, capsys):
    """The bytes of the embedding's tensor replaced by a torch.save of the payload: reading the
    weights meets it (a tensor read is weights-only too) and names the refused global."""
    run = tmp_path / "root" / "debug"
    shutil.copytree(trained / "debug", run)
    checkpoint = run / "checkpoints" / STEP
    marker = tmp_path / "PAYLOAD_RAN"
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    payload = buffer.getvalue()
    metadata = dcp.FileSystemReader(str(checkpoint)).read_metadata()
    info = next(v for k, v in metadata.storage_data.items() if k.fqn == "ema.weights.embed.weight")
    assert info.length > len(payload)
    shard = checkpoint / info.relative_path
    data = bytearray(shard.read_bytes())
    data[info.offset:info.offset + info.length] = payload + b"\0" * (info.length - len(payload))
    shard.write_bytes(bytes(data))
    err = one_line_error(capsys, sample_main, _sample(run, tmp_path)[1])
    assert not marker.exists() and str(checkpoint) in err and "makedirs" in err, err


def globals_named(payload: bytes) -> set[tuple[str, str]]:
    """Every (module, name) a pickle resolves, found by unpickling it with a recording finder."""
    found = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            found.add((module, name))
            return super().find_class(module, name)

    Recorder(io.BytesIO(payload)).load()
    return found


def test_the_allow_list_holds_every_global_this_torch_writes(trained, uninterrupted_folder):
    """The metadata of real checkpoints (parameters, optimizer, EMA, counters and the loader blob),
    of one process and of two FSDP ranks under torchrun, names no global outside the allow-list."""
    files = [trained / "debug" / "checkpoints" / STEP / ".metadata",
             *sorted(uninterrupted_folder[0].glob("debug/checkpoints/step_*/.metadata"))]
    assert len(files) >= 2
    written = set().union(*(globals_named(path.read_bytes()) for path in files))
    outside = {g for g in written if g not in _METADATA_GLOBALS and _torch_constant(*g) is None}
    assert not outside, outside
    assert ("torch.distributed.checkpoint.metadata", "Metadata") in written


def test_checkpoints_hold_no_pickle_of_our_own(trained):
    """Counters and the loaders' state are tensors: the only bytes items left are torch's optimizer
    hyperparameters, read weights-only."""
    metadata = dcp.FileSystemReader(str(trained / "debug" / "checkpoints" / STEP)).read_metadata().state_dict_metadata
    bytes_items = sorted(key for key, m in metadata.items() if isinstance(m, BytesStorageMetadata))
    assert bytes_items and all(key.startswith("optimizer.param_groups.") for key in bytes_items), bytes_items
    for key in ("trainer.step", "trainer.skipped_steps", "trainer.denoiser_step", "data.states", "ema.num_updates"):
        assert isinstance(metadata[key], TensorStorageMetadata), key


def test_a_checkpoint_of_the_code_before_resumes_bit_for_bit_like_a_new_one(tmp_path, capsys):
    """tests/fixtures/legacy_run: the debug config trained to step 2 by the code before this change
    (commit 290ed65), whose counters are plain ints and loader states a pickle."""
    legacy, fresh = tmp_path / "legacy", tmp_path / "fresh"
    shutil.copytree(FIXTURES / "legacy_run", legacy / "debug")
    args = ["--config", str(DEBUG_CONFIG), "--training.steps=4", "--checkpoint.interval=2"]
    train_main([*args, f"--job.dump_folder={legacy}"])
    resumed = capsys.readouterr().out
    assert "resumed from" in resumed
    train_main([*args, f"--job.dump_folder={fresh}", "--training.steps=2"])
    capsys.readouterr()
    train_main([*args, f"--job.dump_folder={fresh}"])
    assert losses_logged(resumed) == losses_logged(capsys.readouterr().out)


def test_legacy_loader_states_are_read_through_the_allow_list():
    """A raw-text loader's state as the code before pickled it (tensors inside) decodes through the
    allow-list to what plain pickle gives; a payload in such a pickle is refused."""
    payload = (FIXTURES / "legacy_raw_loader_states.pickle").read_bytes()
    assert globals_named(payload) <= set(_LEGACY_GLOBALS)
    expected, got = pickle.loads(payload), read_loader_states(payload, "fixture")
    assert _flat(got) == _flat(expected)
    with pytest.raises(pickle.UnpicklingError, match="fixture refused: it names the Python global (os|posix).makedirs"):
        legacy_loads(pickle.dumps([Payload(Path("/nonexistent/never"))]), "fixture")
    assert not Path("/nonexistent/never").exists()


def _flat(obj, prefix=""):
    """`obj` as {path: value} with tensors as (dtype, shape, values), to compare nested states."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _flat(value, f"{prefix}.{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in _flat(value, f"{prefix}[{i}]").items()}
    if isinstance(obj, torch.Tensor):
        return {prefix: (obj.dtype, tuple(obj.shape), obj.tolist())}
    return {prefix: obj}


def test_a_state_blob_round_trips_exactly_and_refuses_damage():
    state = [{"step": 3, "name": "x", "ratio": 0.5, "none": None, "flag": True, "pair": (1, "a"),
              "nested": {"tokens": torch.arange(6).view(2, 3), "empty": torch.zeros(0, dtype=torch.uint8)}}]
    blob = encode_state(state)
    assert blob.dtype == torch.uint8 and torch.equal(blob, encode_state(state))  # deterministic: same on every rank
    back = decode_state(blob, "blob")
    assert _flat(back) == _flat(state) and isinstance(back[0]["pair"], tuple)
    with pytest.raises(StateBlobError, match="blob cannot be decoded"):
        decode_state(blob[: len(blob) // 2], "blob")
    with pytest.raises(StateBlobError, match="not a state blob"):
        decode_state(torch.zeros(3), "blob")
    with pytest.raises(TypeError):
        encode_state({1: "int keys would come back as strings"})
