"""Read MDLM weights from where researchers have them: a Hugging Face folder in MDLM's layout
(`config.json` and `model.safetensors` or `pytorch_model.bin`, keys under `backbone.`), a
Lightning `.ckpt` of the MDLM or EDLM code bases (model and EMA weights, the Hydra config), or
`hf:<repo id>`, downloaded when `huggingface_hub` is installed and online.

Every source becomes an `MDLMWeights`: the architecture, checked against the tensors, and the
model (and EMA) weights in MDLM's names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from edlm_dist.data.tokenizers import GPT2_EOS_ID
from edlm_dist.interop.foreign_pickle import load_foreign, plain
from edlm_dist.interop.mdlm_layout import MDLMArchitecture, MDLMFormatError, check_keys

GPT2_VOCAB = GPT2_EOS_ID + 2  # 50257 tokens and the mask
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_PREFIX = "hf:"


@dataclass
class MDLMWeights:
    """MDLM backbone weights (MDLM names, no prefix) and where they came from."""

    arch: MDLMArchitecture
    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None = None
    ema_decay: float = 0.0
    ema_updates: int = 0
    step: int = 0  # training steps behind the weights (0 when the source does not say)
    source: dict[str, Any] = field(default_factory=dict)  # provenance, recorded in the run folder


def read_mdlm(src: str) -> MDLMWeights:
    """The MDLM weights at `src` (a folder, a `.ckpt` file, or `hf:<repo id>`), checked."""
    if src.startswith(HF_PREFIX):
        return _read_hf_folder(_download(src[len(HF_PREFIX):]), origin=src)
    path = Path(os.path.expanduser(src))
    if path.is_dir():
        return _read_hf_folder(path, origin=str(path))
    if path.is_file():
        return _read_lightning(path)
    raise MDLMFormatError(f"{src}: no such file or folder (give a Hugging Face folder, a .ckpt file or hf:<repo id>)")


def _download(repo: str) -> Path:
    hint = f"download the folder of {repo} (config.json and its weights) and pass its path instead"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MDLMFormatError(f"hf:{repo} needs huggingface_hub (pip install huggingface_hub); or {hint}") from None
    try:
        return Path(snapshot_download(repo, allow_patterns=["config.json", *HF_WEIGHTS]))
    except Exception as err:  # offline, unknown repo, no access: the hub's own error type varies
        reason = (str(err) or type(err).__name__).splitlines()[0]
        raise MDLMFormatError(f"cannot download hf:{repo} ({type(err).__name__}: {reason}); {hint}") from None


_FIELD_TYPES = {"dropout": float, "time_conditioning": bool}  # the others are integers


def _architecture(kind: str, fields: dict[str, Any], names: dict[str, str], where: str) -> MDLMArchitecture:
    """An architecture from a config's `fields` under their names in that config (`names`)."""
    values = {}
    for ours, theirs in names.items():
        if theirs not in fields:
            raise MDLMFormatError(f"{where} lacks {theirs}")
        try:
            values[ours] = _FIELD_TYPES.get(ours, int)(fields[theirs])
        except (TypeError, ValueError):
            raise MDLMFormatError(f"{where}: {theirs} = {fields[theirs]!r} is not a number") from None
    arch = MDLMArchitecture(kind=kind, **values)
    arch.check(where)
    if arch.vocab_size != GPT2_VOCAB:
        raise MDLMFormatError(f"{where}: vocab_size {arch.vocab_size}; only MDLM's GPT-2 models ({GPT2_VOCAB}: "
                              f"{GPT2_VOCAB - 1} tokens and the mask) have their tokenizer here")
    return arch


def _strip(state: dict[str, Any], where: str) -> dict[str, Tensor]:
    """The backbone's entries of a state dict, without their prefix (`backbone.`, or
    `backbone.backbone.` for MDLM's `hf_dit` backbone); anything else is an unexpected key."""
    prefix = "backbone.backbone." if any(k.startswith("backbone.backbone.") for k in state) else "backbone."
    others = [k for k in state if not k.startswith(prefix)]
    if len(others) == len(state):
        raise MDLMFormatError(f"{where} holds no MDLM backbone (no key starts with {prefix}; found e.g. "
                              f"{', '.join(list(state)[:3]) or 'nothing'})")
    if others:
        raise MDLMFormatError(f"{where}: unexpected keys outside the backbone: {', '.join(others[:3])}")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise MDLMFormatError(f"{where}: {bad[0]} is not a tensor")
    return {k[len(prefix):]: v for k, v in state.items()}


def _shapes(state: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


# ---- Hugging Face folders ------------------------------------------------------------------

_HF_FIELDS = {"vocab_size": "vocab_size", "hidden": "hidden_dim", "n_blocks": "n_blocks", "n_heads": "n_heads",
              "cond_dim": "cond_dim", "dropout": "dropout", "length": "model_length",
              "time_conditioning": "time_conditioning"}


def _read_hf_folder(folder: Path, origin: str) -> MDLMWeights:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MDLMFormatError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise MDLMFormatError(f"cannot read {config_path}: {err}") from None
    if not isinstance(config, dict) or config.get("model_type") != "mdlm":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise MDLMFormatError(f"{config_path}: model_type is {found!r}, expected 'mdlm'")
    kind = config.get("backbone", "dit")  # "ar": this project's export of MDLM's AR
    if kind not in ("dit", "ar"):
        raise MDLMFormatError(f"{config_path}: backbone {kind!r}, expected 'dit' or 'ar'")
    fields = {**config, "time_conditioning": config.get("time_conditioning", False)}
    arch = _architecture(kind, fields, _HF_FIELDS, str(config_path))
    weights = next((folder / name for name in HF_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise MDLMFormatError(f"{folder} has neither {' nor '.join(HF_WEIGHTS)}")
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(weights)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MDLMFormatError(f"cannot read {weights}: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict):
        raise MDLMFormatError(f"{weights} does not hold a state dict")
    state = _strip(state, str(weights))
    check_keys(arch, _shapes(state), str(weights))
    return MDLMWeights(arch, state, source={"source": origin, "format": f"huggingface {weights.name}",
                                            "mdlm_config": config})


# ---- Lightning checkpoints -----------------------------------------------------------------

_CKPT_FIELDS = {"hidden": "hidden_size", "n_blocks": "n_blocks", "n_heads": "n_heads", "cond_dim": "cond_dim",
                "dropout": "dropout", "length": "length"}


def _read_lightning(path: Path) -> MDLMWeights:
    where = str(path)
    try:
        ckpt = load_foreign(path)
    except Exception as err:
        raise MDLMFormatError(f"cannot read {path} as a torch checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise MDLMFormatError(f"{path} is not a Lightning checkpoint of MDLM (no state_dict)")
    hparams = plain(ckpt.get("hyper_parameters"))
    config = hparams.get("config") if isinstance(hparams, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise MDLMFormatError(f"{path} is not an MDLM checkpoint: hyper_parameters holds no Hydra config with a model section")
    backbone, parameterization = config.get("backbone"), config.get("parameterization")
    if backbone == "ar" or parameterization == "ar":
        kind = "ar"
    elif backbone in ("dit", "hf_dit") and parameterization == "subs":
        kind = "dit"
    else:
        raise MDLMFormatError(f"{path}: backbone {backbone!r} with parameterization {parameterization!r}; only MDLM's "
                              "DiT with the subs parameterization and its AR (backbone 'ar') can be imported")
    state = _strip(ckpt["state_dict"], f"{path} state_dict")
    embedding = state.get("vocab_embed.embedding")
    fields = {**config["model"], "vocab_size": embedding.shape[0] if embedding is not None else GPT2_VOCAB,
              "time_conditioning": config.get("time_conditioning", False)}
    arch = _architecture(kind, fields, {**_CKPT_FIELDS, "vocab_size": "vocab_size",
                                        "time_conditioning": "time_conditioning"}, f"{where} (config.model)")
    check_keys(arch, _shapes(state), f"{where} state_dict")
    ema, decay, updates = _ema(ckpt.get("ema"), arch, where)
    source = {"source": where, "format": "lightning .ckpt", "mdlm_config": config,
              "pytorch-lightning_version": ckpt.get("pytorch-lightning_version")}
    return MDLMWeights(arch, state, ema, decay, updates, int(ckpt.get("global_step") or 0), source)


def _ema(entry: Any, arch: MDLMArchitecture, where: str) -> tuple[dict[str, Tensor] | None, float, int]:
    """The EMA weights of a checkpoint (`ema.shadow_params`, in the order of the backbone's
    parameters), with its decay and number of updates; None when it has none."""
    if entry is None:
        return None, 0.0, 0
    shadow = entry.get("shadow_params") if isinstance(entry, dict) else None
    if not isinstance(shadow, (list, tuple)):
        raise MDLMFormatError(f"{where}: its ema entry has no shadow_params list")
    names = arch.parameter_names()
    expected = arch.keys()
    if len(shadow) != len(names):
        raise MDLMFormatError(f"{where}: ema.shadow_params holds {len(shadow)} tensors; MDLM's {arch.kind} backbone "
                              f"of its config has {len(names)} parameters")
    for i, (name, tensor) in enumerate(zip(names, shadow)):
        if not isinstance(tensor, Tensor) or tuple(tensor.shape) != expected[name]:
            shape = list(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise MDLMFormatError(f"{where}: ema.shadow_params[{i}] ({name}) is {shape}, expected {list(expected[name])}")
    decay = entry.get("decay") or 0.0
    return dict(zip(names, shadow)), float(decay), int(entry.get("num_updates") or 0)
