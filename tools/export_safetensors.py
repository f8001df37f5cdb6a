"""Export the weights of a training checkpoint as one `.safetensors` file, for inference and sharing.

Training checkpoints are DCP folders (possibly sharded over FSDP ranks) that also hold the optimizer
state; an export is the full, unsharded model (or its EMA shadow) on CPU, read without any process
group, with the resolved run config in the file's metadata and beside it as `<stem>.toml`, so
`build_model` plus `load_state_dict` rebuild the trained model from the export alone.

usage: python tools/export_safetensors.py RUN_OR_CHECKPOINT [--step N] [--weights ema|model] [--out FILE.safetensors]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

from edlm_dist.fileio import atomic_output
from edlm_dist.config import Config, config_to_toml, exit_on_user_error, load_config, save_config
from edlm_dist.models import Transformer, build_model
from edlm_dist.training import CheckpointManager, build_task
from edlm_dist.training.checkpoint import MARKER, describe_load_error

FORMAT = "edlm_dist-v1"
_PREFIXES = {"model": "model.", "ema": "ema.weights."}  # where each kind of weights sits in the DCP state dict
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class ExportError(ValueError):
    """A run or checkpoint that cannot be exported, named in the message."""

    user_error = True  # `exit_on_user_error` prints it as one line and exits 2


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint folder, its step, and the run (folder and config) it belongs to."""

    run_dir: Path
    path: Path
    step: int
    config: Config


def find_checkpoint(path: str | os.PathLike[str], step: int | None = None) -> Checkpoint:
    """The checkpoint that `path` names: a `step_XXXXXXXX` folder itself, or in a run folder the
    committed checkpoint of `step` (None: the latest)."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"folder not found: {path}")
    match = _STEP_DIR.match(path.name)
    run_dir = path.parent.parent if match else path
    config_path = run_dir / "config.toml"
    if not config_path.is_file():
        raise ExportError(f"run config not found: {config_path}")
    config = load_config(config_path)
    if match:
        found = int(match.group(1))
        if step is not None and step != found:
            raise ExportError(f"--step {step} contradicts the checkpoint folder {path} (step {found})")
        if not (path / MARKER).is_file():
            raise ExportError(f"checkpoint {path} is not committed (no {MARKER} marker)")
        return Checkpoint(run_dir, path, found, config)
    folder = config.checkpoint.folder
    if "://" in folder:
        raise ExportError(
            f"checkpoint.folder of {run_dir} is the URL {folder}, and export reads local folders only: "
            f"copy a step_XXXXXXXX folder into {run_dir / 'checkpoints'} and pass that folder"
        )
    manager = CheckpointManager(str(run_dir / folder), config.checkpoint.keep_last)
    steps = manager.committed_steps()
    if not steps:
        raise ExportError(f"no committed checkpoint in {manager.folder}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ExportError(f"step {step} has no committed checkpoint in {manager.folder} (committed: {steps})")
    return Checkpoint(run_dir, Path(manager.path(step)), step, config)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Report an unreadable checkpoint (missing or corrupt files) as one line."""
    try:
        yield
    except (Exception, dcp.CheckpointException) as err:
        raise ExportError(f"cannot read checkpoint {path}: {describe_load_error(err)}") from err


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
        raise ExportError(f"checkpoint {ckpt.path} has no EMA weights (training.ema_decay was 0); use --weights model")
    if "model.embed.weight" not in shapes:
        raise ExportError(f"checkpoint {ckpt.path} holds no model weights")
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
        raise ExportError(
            f"checkpoint {ckpt.path} does not match the model of {ckpt.run_dir / 'config.toml'}: {shown}"
        )
    target = {"model": state} if weights == "model" else {"ema": {"weights": state}}
    with _reading(ckpt.path):
        dcp.load(target, checkpoint_id=str(ckpt.path), no_dist=True)  # fills `state`, the model's own tensors
    return model.eval(), weights


def default_output(ckpt: Checkpoint, weights: str) -> Path:
    return ckpt.run_dir / "export" / f"step_{ckpt.step:08d}_{weights}.safetensors"


def export(ckpt: Checkpoint, model: Transformer, weights: str, out: str | os.PathLike[str]) -> Path:
    """Write `model`'s weights to `out` with the run metadata, and the config beside it as `<stem>.toml`."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ExportError(f"output file must end in .safetensors: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "config": config_to_toml(ckpt.config),
        "step": str(ckpt.step),
        "weights": weights,
        "task": ckpt.config.training.task,
        "vocab_size": str(model.vocab_size),
    }
    save_config(ckpt.config, out.with_suffix(".toml"))  # atomic as well
    with atomic_output(out) as tmp:
        save_file(model.state_dict(), tmp, metadata=metadata)
    return out


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="export_safetensors.py", description="Export a checkpoint's weights as one .safetensors file."
    )
    parser.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a run folder or a step_XXXXXXXX checkpoint folder")
    parser.add_argument("--step", type=int, help="checkpoint step of a run folder (default: the latest committed)")
    parser.add_argument("--weights", choices=("ema", "model"), help="default: ema when the checkpoint has it")
    parser.add_argument("--out", metavar="FILE.safetensors", help="default: <run>/export/step_XXXXXXXX_<weights>.safetensors")
    args = parser.parse_args(argv)
    ckpt = find_checkpoint(args.path, args.step)
    model, weights = load_weights(ckpt, args.weights)
    out = export(ckpt, model, weights, args.out or default_output(ckpt, weights))
    print(f"wrote {out} ({weights} weights of step {ckpt.step}) and {out.with_suffix('.toml')}")


if __name__ == "__main__":
    main()
