"""Loading trained weights from a run's DCP checkpoints: into a full model on CPU without a
process group (export, inference), or into a sharded model under one (the frozen denoiser and
the energy initialisation of NCE training, sampling, evaluation).

The model is rebuilt from the run's resolved `config.toml`, its shapes are checked against the
checkpoint, and the model or EMA weights are read with DCP (which reshards from any world size).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.tensor import DTensor

from edlm_dist.config import TrainProgram, load_run_config
from edlm_dist.config.schema import ReaderRuntimeConfig
from edlm_dist.diffusion import TokenSpace
from edlm_dist.distributed import compute_dtype, first_nonfinite
from edlm_dist.models import MODEL_KINDS, CausalLM, LanguageModel, build_model, model_tokens
from edlm_dist.runs.checkpoint import (
    MARKER,
    STEP_DIR,
    CheckpointManager,
    check_items,
    checkpoint_folder,
    describe_load_error,
    read_checkpoint,
    stored_shapes,
)

_PREFIXES = {"model": "model.", "ema": "ema.weights."}  # where each kind of weights sits in the DCP state dict


class WeightsError(ValueError):
    """A run or checkpoint whose weights cannot be loaded, named in the message."""

    user_error = True  # `exit_on_user_error` prints it as one line and exits 2


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint folder, its step, and the run (folder and config) it belongs to."""

    run_dir: Path
    path: str  # a local folder or an fsspec URL
    step: int
    config: TrainProgram


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
    config = with_run_paths(load_run_config(config_path), run_dir)
    if match:
        found = int(match.group(1))
        if step is not None and step != found:
            raise WeightsError(f"--step {step} contradicts the checkpoint folder {path} (step {found})")
        if not (path / MARKER).is_file():
            raise WeightsError(f"checkpoint {path} is not committed (no {MARKER} marker)")
        return Checkpoint(run_dir, str(path), found, config)
    manager = run_checkpoints(run_dir, config)
    steps = manager.committed_steps()
    if not steps:
        raise WeightsError(f"no committed checkpoint in {manager.folder}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise WeightsError(f"step {step} has no committed checkpoint in {manager.folder} (committed: {steps})")
    return Checkpoint(run_dir, manager.path(step), step, config)


def with_run_paths(config: TrainProgram, run_dir: Path) -> TrainProgram:
    """`config` with a relative `data.tokenizer_path` that names a path inside `run_dir` (an
    imported run's own tokenizer files) made that path, so a run folder is self-contained
    wherever it is moved; other paths are left as given (relative to the working directory)."""
    path = config.data.tokenizer_path
    if not path or os.path.isabs(path) or not (run_dir / path).exists():
        return config
    return replace(config, data=replace(config.data, tokenizer_path=str(run_dir / path)))


def run_checkpoints(run_dir: Path, config: TrainProgram) -> CheckpointManager:
    """The checkpoint folder of the run in `run_dir` (inside it, or the URL its config names)."""
    folder = checkpoint_folder(run_dir, config.checkpoint.folder)
    try:
        return CheckpointManager(folder, config.checkpoint.keep_last)
    except (ImportError, ValueError, OSError) as err:  # e.g. the URL's filesystem is not installed
        raise WeightsError(f"cannot open the checkpoint folder {folder} of {run_dir}: {err}") from None


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """Report an unreadable checkpoint (missing or corrupt files) as one line."""
    try:
        yield
    except (Exception, dcp.CheckpointException) as err:
        raise WeightsError(f"cannot read checkpoint {path}: {describe_load_error(err, path)}") from err


def _stored_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """The checkpoint's tensor shapes (`stored_shapes`), an unreadable checkpoint as a WeightsError."""
    with _reading(path):
        return stored_shapes(path)


def checkpoint_vocab_size(ckpt: Checkpoint) -> int:
    """The tokenizer's vocabulary of the checkpoint's model, without corpus or tokenizer files: a
    dit-family input embedding has one row per token plus the mask token (read from the
    checkpoint); the other families state it in their config (model.vocab_size)."""
    if ckpt.config.model.family != "dit":
        return ckpt.config.model.vocab_size
    shapes = _stored_shapes(ckpt.path)
    if "model.embed.weight" not in shapes:
        raise WeightsError(f"checkpoint {ckpt.path} holds no model weights")
    return shapes["model.embed.weight"][0] - 1


def checkpoint_tokens(ckpt: Checkpoint) -> TokenSpace:
    """The token space of the checkpoint's model: MDLM's convention (mask id = the vocabulary
    size of `checkpoint_vocab_size`) unless its config places the mask inside the vocabulary
    (model.mask_id >= 0: LLaDA, Dream), with model.vocab_size real token ids."""
    return model_tokens(ckpt.config.model, checkpoint_vocab_size(ckpt))


def read_weights(model: LanguageModel, ckpt: Checkpoint, weights: str | None = None, *, partial: bool = False) -> str:
    """Fill `model` (sharded under FSDP or not) with the checkpoint's `weights` ("ema" or "model";
    "auto", as the configs say, or None: "ema" when the checkpoint has EMA weights) and return
    which ones were read.

    With `partial`, only the parameters the checkpoint has are read (an energy network taking
    its backbone from an MDLM) and the others keep their values; every parameter read must match
    the stored shape. A sharded model is read collectively: every rank must call this.
    """
    shapes = _stored_shapes(ckpt.path)
    has_ema = any(key.startswith(_PREFIXES["ema"]) for key in shapes)
    if weights in (None, "auto"):
        weights = "ema" if has_ema else "model"
    if weights == "ema" and not has_ema:
        raise WeightsError(f"checkpoint {ckpt.path} has no EMA weights (training.ema_decay was 0); use the model weights")
    prefix = _PREFIXES[weights]
    stored = {key[len(prefix):]: shape for key, shape in shapes.items() if key.startswith(prefix)}
    state = get_model_state_dict(model)
    sharded = any(isinstance(tensor, DTensor) for tensor in state.values())  # then a collective read
    if partial:
        state = {name: tensor for name, tensor in state.items() if name in stored}
    expected = {name: tuple(tensor.shape) for name, tensor in state.items()}
    names = expected.keys() if partial else stored.keys() | expected.keys()
    mismatched = sorted(name for name in names if stored.get(name) != expected.get(name))
    if mismatched or not state:
        shown = ", ".join(f"{n} (stored {stored.get(n)}, model {expected.get(n)})" for n in mismatched[:3])
        raise WeightsError(
            f"checkpoint {ckpt.path} does not match the model built from {ckpt.run_dir / 'config.toml'}: "
            f"{shown or 'no parameter in common'}"
        )
    target = {"model": state} if weights == "model" else {"ema": {"weights": state}}
    with _reading(ckpt.path):
        check_items(ckpt.path)
        read_checkpoint(target, ckpt.path, no_dist=not sharded)
    set_model_state_dict(model, state, options=StateDictOptions(strict=not partial))
    bad = first_nonfinite(((name, tensor) for name, tensor in state.items()), collective=sharded)
    if bad is not None:
        raise WeightsError(f"checkpoint {ckpt.path} holds non-finite {weights} weights (first: {bad}): the model had "
                           f"diverged when it was saved, so nothing it gives can be trusted; use an earlier step (--step "
                           f"or its step_<8-digit step> folder)")
    return weights


def inference_dtype(runtime: ReaderRuntimeConfig, device: torch.device) -> torch.dtype:
    """The dtype of the weights of the models that sampling and evaluation only read: float32, or
    with `runtime.inference_weights = "compute"` the compute dtype of `runtime.mixed_precision` on
    `device` (bf16 on CUDA by default)."""
    if runtime.inference_weights == "compute":
        return compute_dtype(runtime.mixed_precision, device)
    return torch.float32


def load_weights(
    ckpt: Checkpoint,
    weights: str | None = None,
    *,
    device: torch.device | str = "cpu",
    prepare: Callable[[LanguageModel], None] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[LanguageModel, str]:
    """The run's model on `device` (parallelised by `prepare`, e.g. sharded) holding the
    checkpoint's `weights` (see `read_weights`) in `dtype` (cast on the meta device before
    `prepare`, so a sharded model's shards are `dtype` too, and read from the checkpoint's float32
    by DCP's copy), in eval mode, and which weights those are."""
    cfg = ckpt.config
    kind = MODEL_KINDS[cfg.training.task]

    def prepare_in_dtype(model: LanguageModel) -> None:
        model.to(dtype)  # on the meta device: no memory, and a no-op for float32
        if prepare is not None:
            prepare(model)

    model = build_model(kind, cfg.model, checkpoint_vocab_size(ckpt), device, seed=cfg.job.seed,
                        prepare=prepare_in_dtype)
    weights = read_weights(model, ckpt, weights)
    return model.eval(), weights


def check_same_data(ckpt: Checkpoint, name: str, vocab_size: int, seq_len: int, other: str) -> None:
    """The run of `ckpt` (called `name` in the message) has the vocabulary (the same token ids)
    and sequence length of `other`, which it is to work with."""
    pairs = {
        "vocabulary size": (checkpoint_vocab_size(ckpt), vocab_size),
        "data.seq_len": (ckpt.config.data.seq_len, seq_len),
    }
    for what, (mine, theirs) in pairs.items():
        if mine != theirs:
            raise WeightsError(f"{what} of {name} ({mine}) does not match {other} ({theirs})")


def run_of_task(path: str, task: str, key: str) -> Checkpoint:
    """The checkpoint at config key `key` (`path`), which must come from a `task` run."""
    if not path:
        raise WeightsError(f"{key} is required: the {task} run (or one of its step_<8-digit step> folders)")
    try:
        ckpt = find_checkpoint(os.path.expanduser(os.path.expandvars(path)))
    except WeightsError as err:
        raise WeightsError(f"{key} = {path}: {err}") from None
    if ckpt.config.training.task != task:
        raise WeightsError(f"{key} = {path} is a {ckpt.config.training.task!r} run; expected a {task!r} run")
    return ckpt


@torch.no_grad()
def run_logits(run: str | os.PathLike[str], token_ids: torch.Tensor, *, weights: str | None = None,
               step: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """The float32 logits [B, L, padded vocabulary] of the model of `run` (a run folder, e.g. one
    tools/import_hf.py wrote, or a step_<8-digit step> folder; `step` None: the latest) for
    `token_ids` [B, L] (or [L]), as the ported model computes them: a denoiser's logits of the
    token at each position (Dream's shifted, as its sampler uses them), a causal LM's next-token
    logits (logits[:, i] predicts token_ids[:, i + 1], as transformers' `model(ids).logits`).
    The way to check a port against the original's own forward."""
    ckpt = find_checkpoint(run, step)
    if ckpt.config.training.task == "nce":
        raise WeightsError(f"{ckpt.run_dir} is an nce run: its energy network returns energies, not logits")
    model, _ = load_weights(ckpt, weights, device=device)
    ids = torch.as_tensor(token_ids, device=device).long()
    ids = ids[None] if ids.dim() == 1 else ids
    logits = model(ids, next_token=True) if isinstance(model, CausalLM) else model(ids)
    return logits.float()
