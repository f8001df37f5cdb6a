"""Loading trained weights from a run's DCP checkpoints into a full (unsharded) model on CPU,
without a process group: for export, inference, energies, sampling and evaluation.

The model is rebuilt from the run's resolved `config.toml`, its shapes are checked against the
checkpoint, and the model or EMA weights are read with DCP (which reshards from any world size).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch.distributed.checkpoint as dcp

from edlm_dist.config import Config, load_config
from edlm_dist.models import Transformer, build_model
from edlm_dist.training.checkpoint import MARKER, STEP_DIR, CheckpointManager, describe_load_error
from edlm_dist.training.tasks import build_task

_PREFIXES = {"model": "model.", "ema": "ema.weights."}  # where each kind of weights sits in the DCP state dict


class WeightsError(ValueError):
    """A run or checkpoint whose weights cannot be loaded, named in the message."""

    user_error = True  # `exit_on_user_error` prints it as one line and exits 2


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint folder, its step, and the run (folder and config) it belongs to."""

    run_dir: Path
    path: Path
    step: int
    config: Config


def find_checkpoint(path: str | os.PathLike[str], step: int | None = None) -> Checkpoint:
    """The checkpoint that `path` names: a `step_<8-digit step>` folder itself, or in a run folder the
    committed checkpoint of `step` (None: the latest)."""
    path = Path(path)
    if not path.is_dir():
        raise WeightsError(f"folder not found: {path}")
    match = STEP_DIR.match(path.name)
    run_dir = path.parent.parent if match else path
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise WeightsError(f"run config not found: {config_path}")
    config = load_config(config_path)
    if match:
        found = int(match.group(1))
        if step is not None and step != found:
            raise WeightsError(f"--step {step} contradicts the checkpoint folder {path} (step {found})")
        if not (path / MARKER).is_file():
            raise WeightsError(f"checkpoint {path} is not committed (no {MARKER} marker)")
        return Checkpoint(run_dir, path, found, config)
    folder = config.checkpoint.folder
    if "://" in folder:
        raise WeightsError(
            f"checkpoint.folder of {run_dir} is the URL {folder}, and export reads local folders only: "
            f"copy a step_<8-digit step> folder into {run_dir / 'checkpoints'} and pass that folder"
        )
    manager = CheckpointManager(str(run_dir / folder), config.checkpoint.keep_last)
    steps = manager.committed_steps()
    if not steps:
        raise WeightsError(f"no committed checkpoint in {manager.folder}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise WeightsError(f"step {step} has no committed checkpoint in {manager.folder} (committed: {steps})")
    return Checkpoint(run_dir, Path(manager.path(step)), step, config)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Report an unreadable checkpoint (missing or corrupt files) as one line."""
    try:
        yield
    except (Exception, dcp.CheckpointException) as err:
        raise WeightsError(f"cannot read checkpoint {path}: {describe_load_error(err)}") from err


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Global shape of every tensor in the checkpoint, by flattened key (e.g. `model.embed.weight`)."""
    with _reading(path):
        metadata = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return {key: tuple(m.size) for key, m in metadata.items() if isinstance(m, dcp.TensorStorageMetadata)}


def load_weights(ckpt: Checkpoint, weights: str | None = None) -> tuple[Transformer, str]:
    """The run's model on CPU holding the checkpoint's `weights` ("ema" or "model"; None: "ema"
    when the checkpoint has EMA weights, else "model"), and which weights those are."""
    shapes = _stored_shapes(ckpt.path)
    has_ema = any(key.startswith(_PREFIXES["ema"]) for key in shapes)
    weights = weights or ("ema" if has_ema else "model")
    if weights == "ema" and not has_ema:
        raise WeightsError(f"checkpoint {ckpt.path} has no EMA weights (training.ema_decay was 0); use --weights model")
    if "model.embed.weight" not in shapes:
        raise WeightsError(f"checkpoint {ckpt.path} holds no model weights")
    # The embedding has a row per token plus the mask token: the vocabulary comes from the checkpoint
    # itself, so exporting never needs the run's corpus or tokenizer files.
    vocab_size = shapes["model.embed.weight"][0] - 1
    cfg = ckpt.config
    model = build_model(build_task(cfg, vocab_size).model_kind, cfg.model, vocab_size, "cpu", seed=cfg.job.seed)
    state = model.state_dict()
    prefix = _PREFIXES[weights]
    stored = {key[len(prefix):]: shape for key, shape in shapes.items() if key.startswith(prefix)}
    expected = {name: tuple(tensor.shape) for name, tensor in state.items()}
    mismatched = sorted(name for name in stored.keys() | expected.keys() if stored.get(name) != expected.get(name))
    if mismatched:
        shown = ", ".join(f"{n} (stored {stored.get(n)}, config {expected.get(n)})" for n in mismatched[:3])
        raise WeightsError(
            f"checkpoint {ckpt.path} does not match the model of {ckpt.run_dir / 'config.toml'}: {shown}"
        )
    target = {"model": state} if weights == "model" else {"ema": {"weights": state}}
    with _reading(ckpt.path):
        dcp.load(target, checkpoint_id=str(ckpt.path), no_dist=True)  # fills `state`, the model's own tensors
    return model.eval(), weights
