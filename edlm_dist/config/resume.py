"""What may change when a run resumes: everything but the keys that define what its checkpoints
hold and which data they have seen. Those are refused before anything is loaded or written."""

from __future__ import annotations

from typing import Any

from edlm_dist.config.loader import ConfigError, config_to_dict
from edlm_dist.config.schema import TrainProgram

_SHAPE = "the model's shape"
_FUNCTION = "the function its weights were trained to compute"
_DATA = "the data the run has seen"
# key -> what it fixes; every other key may change on resume and takes effect
FIXED_ON_RESUME: dict[str, str] = {
    **{f"model.{key}": _SHAPE for key in ("family", "n_layers", "hidden_size", "n_heads", "cond_dim", "mlp_ratio",
                                           "time_conditioning", "start_token", "vocab_size", "mask_id",
                                           "embedding_rows", "n_kv_heads", "intermediate_size", "qkv_bias",
                                           "tie_embeddings", "max_positions")},
    **{f"model.{key}": _FUNCTION for key in ("norm_eps", "rope_theta", "rope_scaling", "rope_factor",
                                              "rope_low_freq_factor", "rope_high_freq_factor",
                                              "rope_original_max_positions", "logit_shift")},
    "nce.time_conditioning": "the energy network's shape",
    "training.init_from": "the weights the run started from",
    "training.task": "what the run trains",
    "training.global_batch_size": "the data order, counted in global batches",
    **{f"data.{key}": _DATA for key in ("dataset", "tokenizer", "format", "seed", "val_fraction", "synthetic_states",
                                         "synthetic_branching", "synthetic_concentration")},
    "data.seq_len": "the model's sequence length and the data order",
    "checkpoint.folder": "where its checkpoints are",
}


def config_changes(old: TrainProgram, new: TrainProgram) -> list[tuple[str, Any, Any]]:
    """Every `section.key` whose value differs, with the old and the new value, in schema order."""
    before, after = config_to_dict(old), config_to_dict(new)
    return [(f"{section}.{key}", before[section][key], value)
            for section, table in after.items() for key, value in table.items() if before[section][key] != value]


def check_resume(old: TrainProgram, new: TrainProgram, run: str) -> list[tuple[str, Any, Any]]:
    """The changes from the config `run` was trained with (`old`, as `load_run_config` reads it: an
    old run folder's keys already moved to their new places) to `new`, after refusing any
    that its checkpoints cannot follow, in one line naming the key and both values."""
    changes = config_changes(old, new)
    for key, was, now in changes:
        if key in FIXED_ON_RESUME:
            raise ConfigError(
                f"{key} cannot change when {run} resumes ({FIXED_ON_RESUME[key]}): it was {was!r}, now {now!r}; "
                f"keep {was!r}, or start a new run with another job.name")
    if (old.training.ema_decay > 0) != (new.training.ema_decay > 0):
        raise ConfigError(
            f"training.ema_decay cannot turn EMA {'off' if old.training.ema_decay > 0 else 'on'} when {run} resumes "
            f"(its checkpoints {'hold' if old.training.ema_decay > 0 else 'lack'} EMA weights): it was "
            f"{old.training.ema_decay!r}, now {new.training.ema_decay!r}")
    return changes
