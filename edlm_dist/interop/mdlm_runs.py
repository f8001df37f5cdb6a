"""MDLM weights in and out of run folders.

`import_mdlm` makes an ordinary run folder of this project from MDLM weights: its `config.toml`
(task mdlm or ar, GPT-2 tokens, the model's length), one committed checkpoint holding the model
weights and the EMA weights when the source has them, the `finished` marker, and
`imported.json` saying where the weights came from. Every entry point that reads a run takes it;
training does not resume it (it holds no optimizer or data state). The folder appears only once
complete.

`export_mdlm` writes a run's weights in MDLM's Hugging Face layout (`config.json`,
`model.safetensors` with MDLM's names under `backbone.`), which MDLM's own backbone loads strictly.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from edlm_dist.config import TrainProgram, config_to_toml
from edlm_dist.config.schema import CheckpointConfig, DataConfig, RunJobConfig, TrainingConfig
from edlm_dist.data.tokenizers import GPT2_EOS_ID
from edlm_dist.fileio import atomic_folder
from edlm_dist.interop.mdlm_layout import MDLMArchitecture, MDLMFormatError, architecture_of, to_mdlm, to_ours
from edlm_dist.interop.mdlm_sources import MDLMWeights
from edlm_dist.runs.checkpoint import CheckpointManager
from edlm_dist.runs.weights import Checkpoint, load_weights
from edlm_dist.runs.folder import CONFIG_NAME, IMPORTED_NAME, RunFolder

_TASKS = {"dit": "mdlm", "ar": "ar"}
_KINDS = {task: kind for kind, task in _TASKS.items()}


def imported_config(weights: MDLMWeights, out: Path, data_path: str = "") -> TrainProgram:
    """The run config of imported weights: their architecture, GPT-2 tokens at the model's length
    on OpenWebText (MDLM's published corpus; `data_path` names a prepared copy, needed only by
    what reads the run's own data: its `val` set and the sampler's reference row), and EMA on
    when the source has EMA weights."""
    arch = weights.arch
    return TrainProgram(
        job=RunJobConfig(name=out.name, dump_folder=str(out.parent), description=f"MDLM weights imported from {weights.source['source']}"),
        model=arch.model_config(start_token=GPT2_EOS_ID),
        data=DataConfig(dataset="openwebtext", tokenizer="gpt2", seq_len=arch.length, path=data_path),
        training=TrainingConfig(task=_TASKS[arch.kind], steps=max(weights.step, 1),
                                ema_decay=weights.ema_decay if weights.ema is not None else 0.0),
        checkpoint=CheckpointConfig(keep_last=1),
    )


def import_mdlm(weights: MDLMWeights, out: str | os.PathLike[str], data_path: str = "") -> Path:
    """Write the run folder `out` (which must not exist) for `weights` (`data_path`: see
    `imported_config`); returns its path."""
    out = Path(out).absolute()
    cfg = imported_config(weights, out, data_path)
    where = weights.source["source"]
    state: dict[str, Any] = {"model": to_ours(weights.arch, weights.model, where)}
    if weights.ema is not None:
        state["ema"] = {"weights": to_ours(weights.arch, weights.ema, f"{where} (EMA)"), "num_updates": weights.ema_updates}
    with atomic_folder(out) as tmp:
        folder = RunFolder(Path(tmp))
        (folder.path / CONFIG_NAME).write_text(config_to_toml(cfg))
        CheckpointManager(str(folder.path / cfg.checkpoint.folder), keep_last=1).save(weights.step, state)
        provenance = {**weights.source, "kind": weights.arch.kind, "step": weights.step,
                      "weights": sorted(state), "imported_at": time.time()}
        folder.write_json(IMPORTED_NAME, json.loads(json.dumps(provenance, default=repr)))  # foreign values as text
        folder.mark("finished", step=weights.step)
    return out


def export_mdlm(ckpt: Checkpoint, weights: str | None, out: str | os.PathLike[str]) -> tuple[Path, str]:
    """Write the checkpoint's `weights` (None: EMA when it has them) as MDLM's Hugging Face folder
    `out` (which must not exist); returns the folder and which weights were written."""
    cfg = ckpt.config
    if cfg.training.task not in _KINDS:
        raise MDLMFormatError(f"{ckpt.run_dir} is a {cfg.training.task!r} run; MDLM's code has its DiT (mdlm runs) "
                              "and its AR (ar runs), no energy network")
    model, weights = load_weights(ckpt, weights)
    arch = architecture_of(cfg.model, model.vocab_size, _KINDS[cfg.training.task], cfg.data.seq_len)
    state = {f"backbone.{k}": v for k, v in to_mdlm(arch, model.state_dict()).items()}
    if arch.kind == "ar" and model.start_token != GPT2_EOS_ID:
        raise MDLMFormatError(f"{ckpt.run_dir}: model.start_token is {cfg.model.start_token}; MDLM's AR reads BOS "
                              f"({GPT2_EOS_ID}) before the first token")
    with atomic_folder(out) as tmp:
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config(arch), f, indent=2)
            f.write("\n")
    return Path(out), weights


def hf_config(arch: MDLMArchitecture) -> dict[str, Any]:
    """MDLM's `config.json` for `arch`; an AR also says `"backbone": "ar"` (MDLM publishes no
    Hugging Face AR, so the field is this project's, read back by the import)."""
    config = {
        "architectures": ["MDLM"],
        "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        "model_type": "mdlm",
        "vocab_size": arch.vocab_size,
        "model_length": arch.length,
        "hidden_dim": arch.hidden,
        "cond_dim": arch.cond_dim,
        "n_blocks": arch.n_blocks,
        "n_heads": arch.n_heads,
        "dropout": arch.dropout,
        "time_conditioning": False,
        "return_dict": False,
        "torch_dtype": "float32",
    }
    return config | ({"backbone": "ar"} if arch.kind == "ar" else {})
