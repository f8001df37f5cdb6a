"""The tokenizer files of a Hugging Face model folder, read offline with the `tokenizers` library.

Read: `tokenizer.json` (else, for the byte-level BPE classes GPT-2 and Qwen2, whose Dream folders
ship no `tokenizer.json`, `vocab.json` + `merges.txt` assembled as transformers converts them),
`tokenizer_config.json` (added tokens, the special tokens by role, the chat template),
`special_tokens_map.json` (roles the config leaves out), `chat_template.jinja`, and the model's
`config.json` and `generation_config.json` (EOS, BOS and mask ids where the tokenizer files name
none). Nothing is fetched and no code from the folder runs; a missing or unreadable file is one
line naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from edlm_dist.data.errors import TokenizerError

ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Qwen2's split (transformers' Qwen2Converter); Dream's DreamTokenizer is Qwen2's slow tokenizer renamed
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                 r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_GPT2_CLASSES = ("GPT2Tokenizer", "GPT2TokenizerFast")
_QWEN2_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast", "DreamTokenizer")


@dataclass(frozen=True)
class ModelTokenizerFiles:
    """What a model folder says about its tokenizer."""

    folder: Path
    tokenizer: Tokenizer
    special_tokens: dict[str, str]  # role ("eos_token", ...) -> token text, for chat templates
    eos_id: int
    bos_id: int | None
    mask_id: int | None  # the diffusion mask token, where the model has one
    stop_ids: tuple[int, ...]  # the ids generation stops at (generation_config.json), else EOS
    chat_template: str | None


def read_model_tokenizer(folder: str | Path) -> ModelTokenizerFiles:
    """The tokenizer of the Hugging Face model folder `folder` (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerError(f"tokenizer folder {str(folder)!r} does not exist")
    config = _read_json(folder / "tokenizer_config.json")
    tokenizer = _read_tokenizer(folder, config)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    _check_added_tokens(tokenizer, config, folder)
    roles = _special_tokens(folder, config)
    special_tokens = {role: text for role, (text, _) in roles.items()}
    role_ids = {role: _token_id(tokenizer, text, f"{role} {text!r}", folder) for role, text in special_tokens.items()}

    def role(name: str) -> list[tuple[str, int | None]]:
        """(the file naming the token of role `name`, its id), where a file names one."""
        return [(roles[name][1], role_ids[name])] if name in roles else []

    model_files = {name: _read_json(folder / name) for name in ("config.json", "generation_config.json")}

    def named(key: str, *files: str) -> list[tuple[str, int | None]]:
        """(file, the first id `key` names there) for each of the model's `files`."""
        return [(name, next(iter(_config_ids(model_files[name], key, folder / name)), None)) for name in files]

    eos_id = _first_id(folder, tokenizer, [*role("eos_token"),
                                           *named("eos_token_id", "config.json", "generation_config.json")])
    if eos_id is None:
        raise TokenizerError(f"{str(folder)!r} names no EOS token (eos_token in tokenizer_config.json or "
                             f"special_tokens_map.json, eos_token_id in config.json or generation_config.json)")
    bos_id = _first_id(folder, tokenizer, [*role("bos_token"), *named("bos_token_id", "config.json")])
    masks = [*role("mask_token"), *named("mask_token_id", "config.json", "generation_config.json")]
    stops = _config_ids(model_files["generation_config.json"], "eos_token_id", folder / "generation_config.json")
    return ModelTokenizerFiles(folder, tokenizer, special_tokens, eos_id, bos_id, _mask_id(folder, tokenizer, masks),
                               stops or (eos_id,), _chat_template(folder, config))


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; {} when the file is absent."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"cannot read {str(path)!r}: {' '.join(str(e).split())}") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{str(path)!r} should hold a JSON object, got {type(value).__name__}")
    return value


def _read_tokenizer(folder: Path, config: dict[str, Any]) -> Tokenizer:
    path = folder / "tokenizer.json"
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust library raises plain Exceptions for any bad file
            raise TokenizerError(f"cannot read {str(path)!r}: {' '.join(str(e).split())}") from None
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    kind = config.get("tokenizer_class")
    if not (vocab.is_file() and merges.is_file()):
        raise TokenizerError(f"{str(folder)!r} holds no tokenizer.json (nor vocab.json + merges.txt)")
    if kind not in _GPT2_CLASSES + _QWEN2_CLASSES:
        raise TokenizerError(
            f"{str(folder)!r} holds no tokenizer.json, and its vocab.json + merges.txt are read only for the "
            f"tokenizer classes {', '.join(_GPT2_CLASSES + _QWEN2_CLASSES)} (tokenizer_config.json says {kind!r})"
        )
    return _byte_level_bpe(vocab, merges, qwen2=kind in _QWEN2_CLASSES,
                           add_prefix_space=bool(config.get("add_prefix_space")))


def _byte_level_bpe(vocab_path: Path, merges_path: Path, *, qwen2: bool, add_prefix_space: bool) -> Tokenizer:
    """GPT-2's or Qwen2's byte-level BPE from its slow files, as transformers' converters build it."""
    vocab = _read_json(vocab_path)
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read {str(merges_path)!r}: {e}") from None
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise TokenizerError(f"{str(merges_path)!r} line {number}: expected two tokens, got {line!r}")
        merges.append((pair[0], pair[1]))
    try:
        tokenizer = Tokenizer(models.BPE(vocab, merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                                         end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    except Exception as e:  # the Rust library raises plain Exceptions (a merge of unknown tokens, ...)
        raise TokenizerError(f"cannot build a BPE from {str(vocab_path)!r} and {str(merges_path)!r}: {e}") from None
    if qwen2:
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False),
        ])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _check_added_tokens(tokenizer: Tokenizer, config: dict[str, Any], folder: Path) -> None:
    """Add the tokens of tokenizer_config.json's `added_tokens_decoder` that the tokenizer does
    not hold as added tokens (a slow folder's added tokens live there only; one already in the
    vocabulary keeps its id), each at its stated id, and refuse one that names an id the
    tokenizer gives another token."""
    entries = config.get("added_tokens_decoder") or {}
    if not isinstance(entries, dict):
        raise TokenizerError(f"{str(folder / 'tokenizer_config.json')!r}: added_tokens_decoder should be an object")
    held = tokenizer.get_added_tokens_decoder()
    for key in sorted(entries, key=lambda k: int(k) if str(k).isdigit() else -1):
        entry, where = entries[key], f"{str(folder / 'tokenizer_config.json')!r}: added token {key!r}"
        if not (str(key).isdigit() and isinstance(entry, dict) and isinstance(entry.get("content"), str)):
            raise TokenizerError(f"{where} should be an id with an object holding its content")
        i, content = int(key), entry["content"]
        if i not in held:
            options = {k: bool(entry.get(k, False)) for k in ("single_word", "lstrip", "rstrip", "normalized")}
            token = AddedToken(content, special=bool(entry.get("special")), **options)
            (tokenizer.add_special_tokens if entry.get("special") else tokenizer.add_tokens)([token])
        if tokenizer.token_to_id(content) != i:
            raise TokenizerError(f"{where} is {content!r}, but the tokenizer gives that id to "
                                 f"{tokenizer.id_to_token(i)!r} and {content!r} id {tokenizer.token_to_id(content)}")


def _special_tokens(folder: Path, config: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Role -> (token text, the file naming it): tokenizer_config.json, then special_tokens_map.json
    for the rest."""
    found: dict[str, tuple[str, str]] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        table = config if name == "tokenizer_config.json" else _read_json(folder / name)
        for role in ROLES:
            value = table.get(role)
            if role in found or value is None:
                continue
            text = value.get("content") if isinstance(value, dict) else value
            if not isinstance(text, str):
                raise TokenizerError(f"{str(folder / name)!r}: {role} should be a token's text, got {value!r}")
            found[role] = (text, name)
    return found


def _token_id(tokenizer: Tokenizer, text: str, what: str, folder: Path) -> int:
    i = tokenizer.token_to_id(text)
    if i is None:
        raise TokenizerError(f"{str(folder)!r}: the {what} is not a token of its tokenizer")
    return i


def _config_ids(config: dict[str, Any], key: str, path: Path) -> tuple[int, ...]:
    """The id or list of ids `config[key]`; () when absent or null."""
    value = config.get(key)
    values = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise TokenizerError(f"{str(path)!r}: {key} should be a token id or a list of them, got {value!r}")
    return tuple(values)


def _first_id(folder: Path, tokenizer: Tokenizer, sources: list[tuple[str, int | None]]) -> int | None:
    """The first id the (file, id) `sources` name, checked to be a token."""
    for name, i in sources:
        if i is not None:
            if tokenizer.id_to_token(i) is None:
                raise TokenizerError(f"{str(folder / name)!r} names token id {i}, which its tokenizer does not have")
            return i
    return None


def _mask_id(folder: Path, tokenizer: Tokenizer, sources: list[tuple[str, int | None]]) -> int | None:
    """The mask id the (file, id) `sources` name, refused when two of them disagree; None where none does."""
    named = [(name, i) for name, i in sources if i is not None]
    for name, i in named[1:]:
        if i != named[0][1]:
            raise TokenizerError(f"{str(folder)!r}: {named[0][0]} names mask id {named[0][1]}, {name} names {i}")
    return _first_id(folder, tokenizer, named)


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    """chat_template.jinja, else tokenizer_config.json's chat_template (a text, or a list of named
    templates of which the one named "default" is taken)."""
    path = folder / "chat_template.jinja"
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"cannot read {str(path)!r}: {e}") from None
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{str(folder / 'tokenizer_config.json')!r}: chat_template should be a text")
    return template
