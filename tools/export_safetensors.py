"""Export the weights of a training checkpoint as one `.safetensors` file, for inference and sharing.

Training checkpoints are DCP folders (possibly sharded over FSDP ranks) that also hold the optimizer
state; an export is the full, unsharded model (or its EMA shadow) on CPU, read without any process
group, with the resolved run config in the file's metadata and beside it as `<stem>.toml`, so
`build_model` plus `load_state_dict` rebuild the trained model from the export alone.

An existing export (either file) is replaced only with --overwrite, and a training run folder
itself is refused as the folder of --out (its own files, such as config.toml, are never replaced).

usage: python tools/export_safetensors.py RUN_OR_CHECKPOINT [--step N] [--weights ema|model] [--out FILE.safetensors]
    [--overwrite]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save_file

from edlm_dist.config import config_to_toml, exit_on_user_error, save_config
from edlm_dist.evaluation.outputs import refuse_training_run
from edlm_dist.fileio import atomic_output, refuse_existing
from edlm_dist.models import LanguageModel
from edlm_dist.runs.weights import Checkpoint, WeightsError, find_checkpoint, load_weights

FORMAT = "edlm_dist-v1"


def default_output(ckpt: Checkpoint, weights: str) -> Path:
    return ckpt.run_dir / "export" / f"step_{ckpt.step:08d}_{weights}.safetensors"


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse, in one line, an `out` that is not a .safetensors file or lies in a training run folder
    itself, and, unless `overwrite`, one that exists or whose `<stem>.toml` does."""
    if out.suffix != ".safetensors":
        raise WeightsError(f"output file must end in .safetensors: {out}")
    refuse_training_run(out.parent, "the folder of --out")
    refuse_existing([out, out.with_suffix(".toml")], overwrite)


def export(ckpt: Checkpoint, model: LanguageModel, weights: str, out: str | os.PathLike[str],
           overwrite: bool = False) -> Path:
    """Write `model`'s weights to `out` with the run metadata, and the config beside it as `<stem>.toml`
    (checked first by `check_output`)."""
    out = Path(out)
    check_output(out, overwrite)
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
        save_file(_unshared(model.state_dict()), tmp, metadata=metadata)
    return out


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with a tensor that shares its memory with an earlier one (a tied output layer) copied,
    as safetensors stores each tensor on its own; `load_state_dict` ties them again."""
    seen: set[int] = set()
    unshared = {}
    for name, tensor in state.items():
        unshared[name] = tensor.clone() if tensor.data_ptr() in seen else tensor
        seen.add(tensor.data_ptr())
    return unshared


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="export_safetensors.py", description="Export a checkpoint's weights as one .safetensors file."
    )
    parser.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a run folder or a step_<8-digit step> checkpoint folder")
    parser.add_argument("--step", type=int, help="checkpoint step of a run folder (default: the latest committed)")
    parser.add_argument("--weights", choices=("ema", "model"), help="default: ema when the checkpoint has it")
    parser.add_argument("--out", metavar="FILE.safetensors", help="default: <run>/export/step_<8-digit step>_<weights>.safetensors")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
    args = parser.parse_args(argv)
    ckpt = find_checkpoint(args.path, args.step)
    if args.out:
        check_output(Path(args.out), args.overwrite)  # before the weights are read
    model, weights = load_weights(ckpt, args.weights)
    out = export(ckpt, model, weights, args.out or default_output(ckpt, weights), args.overwrite)
    print(f"wrote {out} ({weights} weights of step {ckpt.step}) and {out.with_suffix('.toml')}")


if __name__ == "__main__":
    main()
