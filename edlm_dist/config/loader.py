"""Load a program's config (the root class of `train`, `sample` or `eval`) from TOML plus
`--section.key=value` overrides, validate it, write it back.

Precedence, lowest first: dataclass defaults < `model.preset` sizes < TOML file < command line.
Keys from before each program had its own root (`MOVED_KEYS`) are read as their new keys.
Every user mistake raises `ConfigError` with a one-line message naming the file, key and value,
so entry points wrapped in `exit_on_user_error` can report it without a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, ParamSpec, Sequence, TypeVar, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from edlm_dist.fileio import atomic_write_text
from edlm_dist.config.schema import (
    INSTEAD, MODEL_PRESETS, MOVED_KEYS, PROGRAMS, UNREAD_BY_TRAINING, ModelConfig, Program, TrainProgram,
    padded_vocab_size,
)

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Root = TypeVar("_Root", bound=Program)
_Key = tuple[str, str]  # (section, key)
_CLI = "on the command line"


class ConfigError(ValueError):
    """A mistake in a config file or command line; its message is always a single line."""

    user_error = True  # `exit_on_user_error` reports it without a traceback

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


# ---------------------------------------------------------------------------------------------
# Schema introspection


@functools.cache
def _sections(root: type[Program]) -> dict[str, type]:
    """The sections of a program's root class: name -> section dataclass."""
    hints = get_type_hints(root)
    return {f.name: hints[f.name] for f in dataclasses.fields(root)}


@functools.cache
def _field_types(section_cls: type) -> dict[str, Any]:
    return get_type_hints(section_cls)


def _suggest(name: str, known: Sequence[str], prefix: str = "") -> str:
    """'; did you mean X?' for a close match, else the list of valid names."""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    return "; valid: " + ", ".join(prefix + k for k in known)


def _has_key(root: type[Program], name: str) -> bool:
    section, _, key = name.partition(".")
    return section in _sections(root) and key in _field_types(_sections(root)[section])


def _readers(section: str, key: str | None = None) -> str:
    """The programs that read a section (or `section.key`), joined by 'and'; empty for none."""
    return " and ".join(p.PROGRAM for p in PROGRAMS
                        if (section in _sections(p) if key is None else _has_key(p, f"{section}.{key}")))


def _not_read(root: type[Program], section: str, key: str | None = None) -> str:
    """`: a key of edlm_dist.eval, not of edlm_dist.train` for a section (or key) that other
    programs read, or nothing."""
    readers = _readers(section, key)
    return f": a {'section' if key is None else 'key'} of {readers}, not of {root.PROGRAM}" if readers else ""


def _section_class(root: type[Program], section: str, where: str) -> type:
    """The dataclass of a config section, or a ConfigError suggesting the nearest real name."""
    sections = _sections(root)
    if section not in sections:
        raise ConfigError(f"unknown config section {section!r} {where}{_not_read(root, section)}"
                          f"{_suggest(section, list(sections))}")
    return sections[section]


def _field_type(root: type[Program], section: str, key: str, where: str) -> Any:
    """The declared type of `section.key`, or a ConfigError suggesting the nearest real name."""
    other = _not_read(root, section, key) if section not in _sections(root) else ""
    if other:
        raise ConfigError(f"unknown config key '{section}.{key}' {where}{other}"
                          f"{_suggest(section, list(_sections(root)))}")
    types = _field_types(_section_class(root, section, where))
    if key not in types:
        instead = INSTEAD.get((root.PROGRAM, f"{section}.{key}"))
        hint = f"; {root.PROGRAM} uses {instead} instead" if instead else _suggest(key, list(types), section + ".")
        raise ConfigError(f"unknown config key '{section}.{key}' {where}{_not_read(root, section, key)}{hint}")
    return types[key]


def _new_key(root: type[Program], section: str, key: str, where: str) -> _Key:
    """`(section, key)` as the program reads it: an old key (`MOVED_KEYS`) that the program lacks
    becomes the first of its new keys the program has; one whose new keys are all another
    program's is a ConfigError naming them."""
    old = f"{section}.{key}"
    if _has_key(root, old) or old not in MOVED_KEYS:
        return section, key
    mine = [new for new in MOVED_KEYS[old] if _has_key(root, new)]
    if not mine:
        theirs = ", ".join(f"{new} (a key of {_readers(*new.split('.'))})" for new in MOVED_KEYS[old])
        raise ConfigError(f"config key {old} {where} is now {theirs}, which {root.PROGRAM} does not read")
    new_section, _, new_key = mine[0].partition(".")
    return new_section, new_key


def _base_type(tp: Any) -> type:
    """The Python type of a field's values: the type itself, or that of a Literal's choices."""
    return type(get_args(tp)[0]) if get_origin(tp) is Literal else tp


# ---------------------------------------------------------------------------------------------
# Values: TOML values are type-checked, command-line strings are parsed


def _type_error(name: str, tp: Any, shown: str, where: str) -> ConfigError:
    if get_origin(tp) is Literal:
        choices = ", ".join(repr(c) for c in get_args(tp))
        return ConfigError(f"config key {name} must be one of {choices}; got {shown} {where}")
    return ConfigError(f"config key {name} expects {tp.__name__}, got {shown} {where}")


def _check_choice(name: str, tp: Any, value: Any, shown: str, where: str) -> Any:
    if get_origin(tp) is Literal and value not in get_args(tp):
        raise _type_error(name, tp, shown, where)
    return value


def _from_toml(name: str, tp: Any, value: Any, where: str) -> Any:
    """Check a TOML value against the field type; an int is accepted (and converted) for a float."""
    base = _base_type(tp)
    shown = f"{value!r} ({type(value).__name__})"
    if base is float and type(value) is int:
        value = float(value)
    if type(value) is not base:  # `type is`, not isinstance: a TOML bool is not an int
        raise _type_error(name, tp, shown, where)
    return _check_choice(name, tp, value, shown, where)


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse_bool(text: str) -> bool:
    try:
        return _BOOL_WORDS[text.strip().lower()]
    except KeyError:
        raise ValueError(text) from None


_PARSERS: dict[type, Callable[[str], Any]] = {int: int, float: float, str: str, bool: _parse_bool}


def _from_text(name: str, tp: Any, text: str, where: str) -> Any:
    """Parse a command-line string as the field type."""
    try:
        value = _PARSERS[_base_type(tp)](text)
    except ValueError:
        raise _type_error(name, tp, repr(text), where) from None
    return _check_choice(name, tp, value, repr(text), where)


# ---------------------------------------------------------------------------------------------
# Sources


def _dropped(name: str, drop: Sequence[str]) -> bool:
    """Whether `section.key` is one of `drop` (`section.*`: any key of the section)."""
    return name in drop or f"{name.partition('.')[0]}.*" in drop


def _read_toml(root: type[Program], path: str | os.PathLike[str], drop: Sequence[str] = ()) -> dict[_Key, Any]:
    """The typed `(section, key) -> value` pairs set in a TOML file, old keys read as their new
    ones; keys in `drop` (`section.key` or `section.*`) are skipped."""
    where = f"in {os.fspath(path)}"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {os.fspath(path)}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {os.fspath(path)}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {os.fspath(path)} is not UTF-8: {e.reason} at byte {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML {where}: {e}") from None
    values: dict[_Key, Any] = {}
    for section, table in data.items():
        if not (isinstance(table, dict) and table) and not _dropped(f"{section}.*", drop):
            _section_class(root, section, where)  # a table's keys are checked one by one: some may move
        if not isinstance(table, dict):
            shown = f"{table!r} ({type(table).__name__})"
            raise ConfigError(f"config section {section!r} {where} must be a table, got {shown}")
        for key, value in table.items():
            if _dropped(f"{section}.{key}", drop):
                continue
            new = _new_key(root, section, key, where)
            values[new] = _from_toml(".".join(new), _field_type(root, *new, where), value, where)
    return values


def _is_override(arg: str) -> bool:
    """Whether `arg` is meant as an override: `--something.with.a.dot[=value]`."""
    return arg.startswith("--") and "." in arg.partition("=")[0]


def _take_value(args: Sequence[str], i: int) -> tuple[str, str, int]:
    """Split `--name=value` or `--name value` at `args[i]` into (name, value, next index)."""
    name, eq, value = args[i].partition("=")
    if eq:
        return name, value, i + 1
    if i + 1 >= len(args) or args[i + 1].startswith("--"):
        raise ConfigError(f"{name} needs a value: use {name}=VALUE or {name} VALUE")
    return name, args[i + 1], i + 2


def _read_overrides(root: type[Program], args: Sequence[str]) -> dict[_Key, Any]:
    """The typed `(section, key) -> value` pairs set by `--section.key=value` arguments, old keys
    read as their new ones."""
    values: dict[_Key, Any] = {}
    i = 0
    while i < len(args):
        parts = args[i].partition("=")[0][2:].split(".")
        if not _is_override(args[i]) or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {args[i]!r} is not of the form --section.key=value")
        name, text, i = _take_value(args, i)
        new = _new_key(root, *parts, _CLI)
        values[new] = _from_text(".".join(new), _field_type(root, *new, _CLI), text, _CLI)
    return values


# ---------------------------------------------------------------------------------------------
# Validation

# Bounds on single keys: key -> (wording for the message, predicate on the value).
_AT_LEAST_1 = (">= 1", lambda v: v >= 1)
_NON_NEGATIVE = (">= 0", lambda v: v >= 0)
_POSITIVE = ("> 0", lambda v: v > 0)
_FRACTION = ("in [0, 1)", lambda v: 0 <= v < 1)
_OPEN_FRACTION = ("in (0, 1)", lambda v: 0 < v < 1)

_BOUNDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "model.n_layers": _AT_LEAST_1,
    "model.hidden_size": _AT_LEAST_1,
    "model.n_heads": _AT_LEAST_1,
    "model.cond_dim": _AT_LEAST_1,
    "model.mlp_ratio": _AT_LEAST_1,
    "model.dropout": _FRACTION,
    "model.start_token": (">= 0 or -1 (the mask id)", lambda v: v >= -1),
    "model.vocab_size": _NON_NEGATIVE,
    "model.mask_id": (">= 0 or -1 (the id after the vocabulary)", lambda v: v >= -1),
    "model.embedding_rows": _NON_NEGATIVE,
    "model.n_kv_heads": _NON_NEGATIVE,
    "model.intermediate_size": _NON_NEGATIVE,
    "model.norm_eps": _OPEN_FRACTION,
    "model.rope_theta": _POSITIVE,
    "model.rope_factor": _POSITIVE,
    "model.rope_low_freq_factor": _POSITIVE,
    "model.rope_high_freq_factor": _POSITIVE,
    "model.rope_original_max_positions": _AT_LEAST_1,
    "model.max_positions": _AT_LEAST_1,
    "diffusion.eps": _OPEN_FRACTION,
    "diffusion.t_min": _FRACTION,
    "data.seq_len": (">= 4 (room for BOS and EOS)", lambda v: v >= 4),
    "data.val_fraction": _OPEN_FRACTION,
    "data.num_workers": _NON_NEGATIVE,
    "data.shuffle_buffer": _AT_LEAST_1,
    "training.steps": _AT_LEAST_1,
    "training.global_batch_size": _AT_LEAST_1,
    "training.micro_batch_size": _NON_NEGATIVE,
    "training.max_grad_norm": _NON_NEGATIVE,
    "training.ema_decay": _FRACTION,
    "training.max_bad_steps": _AT_LEAST_1,
    "parallel.dp_replicate": _AT_LEAST_1,
    "parallel.dp_shard": (">= 1 or -1 (the rest)", lambda v: v >= 1 or v == -1),
    "parallel.ac_every": _AT_LEAST_1,
    "runtime.collective_timeout_s": _AT_LEAST_1,
    "optim.lr": ("in (0, 1]", lambda v: 0 < v <= 1),
    "optim.beta1": _FRACTION,
    "optim.beta2": _FRACTION,
    "optim.eps": _OPEN_FRACTION,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.warmup_steps": _NON_NEGATIVE,
    "optim.min_lr_ratio": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "checkpoint.interval": _AT_LEAST_1,
    "checkpoint.keep_last": _AT_LEAST_1,
    "checkpoint.keep_every": _NON_NEGATIVE,
    "metrics.log_interval": _AT_LEAST_1,
    "metrics.eval_interval": _AT_LEAST_1,
    "metrics.eval_batch_size": _AT_LEAST_1,
    "nce.num_negatives": _AT_LEAST_1,
    "nce.max_batch": _AT_LEAST_1,
    "nce.ess_candidates": ("0 (off) or >= 2", lambda v: v == 0 or v >= 2),
    "nce.ess_sequences": _AT_LEAST_1,
    "energy.max_batch": _AT_LEAST_1,
    "sample.num_samples": _AT_LEAST_1,
    "sample.steps": _AT_LEAST_1,
    "sample.num_candidates": _AT_LEAST_1,
    "sample.window": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "sample.batch_size": _AT_LEAST_1,
    "eval.num_sequences": _NON_NEGATIVE,
    "eval.batch_size": _AT_LEAST_1,
    "eval.num_samples": _AT_LEAST_1,
    "eval.num_proposals": (">= 2 (log Z needs two draws)", lambda v: v >= 2),
    "eval.poll_interval_s": _POSITIVE,
    "debug.step_sleep_s": _NON_NEGATIVE,
    "debug.fault_step": _AT_LEAST_1,
    "debug.fault_rank": _NON_NEGATIVE,
    "debug.stall_s": _NON_NEGATIVE,
}


def _get(cfg: Program, name: str) -> Any:
    section, key = name.split(".")
    return getattr(getattr(cfg, section), key)


def validate_config(cfg: Program) -> None:
    """Raise ConfigError for values that type-check but cannot make a run (every number finite,
    bounds on the keys of the program, and the cross-field rules of training)."""
    for section in _sections(type(cfg)):
        for key, value in vars(getattr(cfg, section)).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"config key {section}.{key} must be a finite number, got {value!r}")
    for name, (wording, ok) in _BOUNDS.items():
        if _has_key(type(cfg), name) and not ok(value := _get(cfg, name)):  # NaN fails every bound, as it should
            raise ConfigError(f"config key {name} must be {wording}, got {value!r}")
    if isinstance(cfg, TrainProgram):
        _validate_training(cfg)


def _validate_training(cfg: TrainProgram) -> None:
    m, t = cfg.model, cfg.training
    if m.hidden_size % m.n_heads:
        raise ConfigError(f"model.hidden_size ({m.hidden_size}) must be divisible by model.n_heads ({m.n_heads})")
    if m.family != "gpt2" and (m.hidden_size // m.n_heads) % 2:
        raise ConfigError(
            f"model.hidden_size / model.n_heads = {m.hidden_size // m.n_heads} must be even (rotary embeddings)"
        )
    if m.family == "dit":
        _validate_dit_keys(m)
    else:
        _validate_decoder(cfg)
    if t.micro_batch_size and t.global_batch_size % t.micro_batch_size:
        raise ConfigError(
            f"training.global_batch_size ({t.global_batch_size}) must be a multiple of "
            f"training.micro_batch_size ({t.micro_batch_size})"
        )
    if cfg.optim.lr * cfg.optim.weight_decay >= 1:
        raise ConfigError(f"optim.lr * optim.weight_decay = {cfg.optim.lr * cfg.optim.weight_decay:g} must be < 1 "
                          f"(AdamW shrinks the weights by that factor each step); lower optim.weight_decay")
    if t.task == "nce" and not cfg.nce.denoiser:
        raise ConfigError("training.task = 'nce' requires nce.denoiser (the MDLM run to fine-tune from)")
    if t.task == "nce" and t.init_from:
        raise ConfigError("training.init_from does not apply to training.task = 'nce': its energy network starts "
                          "from nce.denoiser")
    if cfg.data.dataset in ("text", "files") and not cfg.data.path:
        raise ConfigError(f"data.dataset = {cfg.data.dataset!r} requires data.path")


# The [model] keys of the llama and gpt2 families, and those of them gpt2 does not read either.
_DECODER_KEYS = ("vocab_size", "mask_id", "embedding_rows", "n_kv_heads", "intermediate_size", "norm_eps",
                 "rope_theta", "rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                 "rope_original_max_positions", "qkv_bias", "tie_embeddings", "logit_shift", "max_positions")
_LLAMA_ONLY_KEYS = ("n_kv_heads", "rope_theta", "rope_scaling", "rope_factor", "rope_low_freq_factor",
                    "rope_high_freq_factor", "rope_original_max_positions", "qkv_bias", "logit_shift")


def _unread_keys(model: ModelConfig, keys: Sequence[str], family: str) -> None:
    """Refuse a key of `keys` set away from its default in a model of `family`, which does not read it."""
    default = ModelConfig()
    for key in keys:
        if getattr(model, key) != getattr(default, key):
            raise ConfigError(f"model.{key} = {getattr(model, key)!r} is not read by model.family = {family!r} "
                              f"(keep the default {getattr(default, key)!r})")


def _validate_dit_keys(model: ModelConfig) -> None:
    _unread_keys(model, _DECODER_KEYS, "dit")


def _validate_decoder(cfg: TrainProgram) -> None:
    """The rules of the llama and gpt2 families: a stated vocabulary, ids that fit the embedding, heads
    that group, and only the tasks each family has a model for."""
    m, task = cfg.model, cfg.training.task
    family = repr(m.family)
    if m.family == "gpt2":
        _unread_keys(m, _LLAMA_ONLY_KEYS, "gpt2")
        if task != "ar":
            raise ConfigError(f"model.family = 'gpt2' is a causal LM: training.task must be 'ar', got {task!r}")
        if cfg.data.seq_len > m.max_positions:
            raise ConfigError(f"data.seq_len ({cfg.data.seq_len}) exceeds model.max_positions ({m.max_positions}), "
                              "the rows of GPT-2's position embedding")
    if m.vocab_size < 1:
        raise ConfigError(f"model.family = {family} requires model.vocab_size (the tokenizer's number of ids)")
    if m.time_conditioning:
        raise ConfigError(f"model.family = {family} does not read the time: model.time_conditioning must be false")
    if m.logit_shift and task != "mdlm":
        raise ConfigError("model.logit_shift (Dream's convention) belongs to a bidirectional denoiser "
                          f"(training.task = 'mdlm'), not to training.task = {task!r}")
    kv_heads = m.n_kv_heads or m.n_heads
    if m.n_heads % kv_heads:
        raise ConfigError(f"model.n_heads ({m.n_heads}) must be a multiple of model.n_kv_heads ({kv_heads})")
    if m.rope_scaling == "llama3" and m.rope_high_freq_factor <= m.rope_low_freq_factor:
        raise ConfigError(f"model.rope_high_freq_factor ({m.rope_high_freq_factor}) must exceed "
                          f"model.rope_low_freq_factor ({m.rope_low_freq_factor})")
    rows = m.embedding_rows or padded_vocab_size(m.vocab_size)
    mask = m.mask_id if m.mask_id >= 0 else m.vocab_size
    ids = {"the last token id (model.vocab_size - 1)": m.vocab_size - 1}
    if task in ("mdlm", "nce"):
        ids["the mask id (model.mask_id)"] = mask
    else:
        ids["the start token (model.start_token)"] = m.start_token if m.start_token >= 0 else mask
    for name, value in ids.items():
        if value >= rows:
            raise ConfigError(f"{name} {value} is outside the {rows} rows of the embedding (model.embedding_rows)")


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(root: type[_Root], path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> _Root:
    """Build the validated config of a program (its root class `root`) from defaults,
    `model.preset`, the TOML file at `path` (None: no file) and `--section.key=value` /
    `--section.key value` overrides, in increasing precedence."""
    return _build(root, _read_toml(root, path) if path is not None else {}, overrides)


def load_run_config(path: str | os.PathLike[str]) -> TrainProgram:
    """The config.toml of a run folder, also one written before each program had its own root:
    its old keys are read as their new ones, and those that training never read are dropped."""
    return _build(TrainProgram, _read_toml(TrainProgram, path, drop=UNREAD_BY_TRAINING), ())


def _build(root: type[_Root], values: dict[_Key, Any], overrides: Sequence[str]) -> _Root:
    """The validated config of `root` from the values of a file and then `overrides` over them."""
    values = {**values, **_read_overrides(root, overrides)}
    cfg = root()
    preset = values.get(("model", "preset"), "")
    merged: dict[_Key, Any] = {("model", k): v for k, v in MODEL_PRESETS.get(preset, {}).items()}
    merged.update(values)  # explicit values beat the preset
    for (section, key), value in merged.items():
        setattr(getattr(cfg, section), key, value)
    validate_config(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# Writing


def config_to_dict(cfg: Program) -> dict[str, dict[str, Any]]:
    """`{section: {key: value}}`, e.g. for logging hyperparameters."""
    return dataclasses.asdict(cfg)


# TOML basic-string escapes: the short forms where TOML has one, a four-hex-digit \u escape for other control characters.
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_TOML_ESCAPES = {c: f"\\u{c:04X}" for c in [*range(0x20), 0x7F]} | {ord(k): v for k, v in _SHORT_ESCAPES.items()}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # repr round-trips floats exactly
    if isinstance(value, str):
        return '"' + value.translate(_TOML_ESCAPES) + '"'
    raise TypeError(f"cannot write a {type(value).__name__} as a TOML value")


def config_to_toml(cfg: Program) -> str:
    """TOML text that `load_config` of the program reads back into an equal config."""
    blocks = []
    for section, table in config_to_dict(cfg).items():
        lines = [f"[{section}]"] + [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def save_config(cfg: Program, path: str | os.PathLike[str]) -> None:
    """Write `cfg` as TOML atomically (temp file in the same folder, then os.replace), so a crash
    never leaves a truncated config next to a checkpoint."""
    atomic_write_text(path, config_to_toml(cfg))


# ---------------------------------------------------------------------------------------------
# Command line


@dataclass
class CliArgs:
    """What an entry point needs from its command line: the resolved config and how it was asked for."""

    config: Program
    config_path: str | None
    print_config: bool
    switches: frozenset[str] = frozenset()  # the entry point's own switches that were given (`--overwrite`)


HELP_WIDTH = 100  # help lines are wrapped at this many characters


def _help_type(tp: Any) -> str:
    """`int`, or the choices of a Literal as TOML values: `"mdlm"|"ar"`."""
    return "|".join(map(_toml_value, get_args(tp))) if get_origin(tp) is Literal else tp.__name__


def _wrap_choices(text: str, indent: int) -> str:
    """`text` wrapped after a `|` so that no line passes HELP_WIDTH; continuation lines are indented."""
    lines, line = [], ""
    for part in text.split("|"):
        piece = part if not line else "|" + part
        if line and indent + len(line) + len(piece) > HELP_WIDTH:
            lines.append(line + "|")
            line = part
        else:
            line += piece
    lines.append(line)
    return ("\n" + " " * indent).join(lines)


def _help_text(root: type[Program], description: str, options: Mapping[str, str]) -> str:
    """Usage, the options, and every config key of the program with its default and type (last,
    as the choices of a Literal can be long)."""
    prog = os.path.basename(sys.argv[0]) or "edlm"
    defaults = root()
    rows = [
        (f"--{section}.{key}", _toml_value(_get(defaults, f"{section}.{key}")), _help_type(tp))
        for section, cls in _sections(root).items()
        for key, tp in _field_types(cls).items()
    ]
    w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
    keys = "\n".join(f"  {name:<{w0}}  {default:<{w1}}  {_wrap_choices(tp, w0 + w1 + 6)}" for name, default, tp in rows)
    own = "".join(f"  {name:<19}  {text}\n" for name, text in options.items())
    intro = f"\n\n{description}" if description else ""
    return (
        f"usage: {prog} [-h] [--config PATH] [--print-config] [--section.key=VALUE ...]{intro}\n\n"
        "options:\n"
        "  -h, --help           show this help and exit\n"
        "  --config PATH        TOML config file\n"
        "  --print-config       print the resolved config as TOML\n"
        f"{own}"
        "  --section.key=VALUE  override one config key (also: --section.key VALUE)\n\n"
        f"precedence: defaults{' < model.preset' if 'model' in _sections(root) else ''} < --config file < overrides\n\n"
        f"config keys (default, type):\n{keys}"
    )


def parse_cli(
    root: type[Program], argv: Sequence[str] | None, description: str = "",
    aliases: Mapping[str, tuple[str, str]] | None = None, switches: Mapping[str, str] | None = None,
) -> CliArgs:
    """Parse `--config PATH`, `--print-config`, `-h/--help` and overrides (argv None: sys.argv[1:])
    and load the config of the program whose root class is `root`. `aliases` maps extra options to
    (config key, help text) (`--out` -> `eval.output`), taken like overrides; `switches` are the
    entry point's own options without a value (`--overwrite`), each with its help text. Help prints
    usage and every key of the program, then exits 0."""
    aliases, switches = aliases or {}, switches or {}
    args = list(sys.argv[1:] if argv is None else argv)
    config_path: str | None = None
    print_config = False
    given: set[str] = set()
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            options = {f"{name} VALUE": f"{text} (--{key}=VALUE)" for name, (key, text) in aliases.items()}
            print(_help_text(root, description, {**options, **switches}))
            raise SystemExit(0)
        if arg == "--print-config":
            print_config, i = True, i + 1
        elif arg in switches:
            given.add(arg)
            i += 1
        elif arg.partition("=")[0] == "--config":
            _, config_path, i = _take_value(args, i)
        elif arg.partition("=")[0] in aliases:
            name, value, i = _take_value(args, i)
            overrides.append(f"--{aliases[name][0]}={value}")
        elif _is_override(arg):
            name, value, i = _take_value(args, i)
            overrides.append(f"{name}={value}")
        else:
            expected = ", ".join(["--config PATH", "--print-config", *aliases, *switches, "--section.key=VALUE"])
            raise ConfigError(f"unrecognized argument {arg!r}; expected {expected} (see --help)")
    return CliArgs(load_config(root, config_path, overrides), config_path, print_config, frozenset(given))


def exit_on_user_error(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate an entry point so user errors (ConfigError, or any exception class with
    `user_error = True`) print `error: <message>` on stderr and exit with status 2 without a
    traceback, and Ctrl-C prints `interrupted` and exits 130. Other exceptions are bugs and
    propagate unchanged."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except Exception as exc:
            if not getattr(type(exc), "user_error", False):
                raise
            message = " ".join(str(exc).splitlines()) or type(exc).__name__
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
