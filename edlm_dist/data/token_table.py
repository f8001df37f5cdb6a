"""What decides the ids a tokenizer gives, and the id-by-id comparison of two tokenizers.

A `TokenTable` holds, for every id, the token it stands for (a byte-level BPE's token in GPT-2's
printable byte alphabet, so that tiktoken's tables and Hugging Face's read alike), the added
tokens and how text is matched against them, the BPE merges in priority order, and the text
pipeline before the model (normaliser, pre-tokeniser, the model's options). Decoders and
post-processors are left out: they change no id of a text.

A tiktoken encoding is a ranked BPE: its ids are the merge priorities. It gives the ids of a
merge-list BPE whose merges create its tokens in id order, one merge per token, which is the
test tiktoken's own loader applies to GPT-2's `vocab.bpe` (`_ranks_from_data_gym`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The pre-tokeniser of Hugging Face's ByteLevel(use_regex=True): the split of the original GPT-2
# release, the same pattern as tiktoken's "gpt2" encoding.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# BPE options that change ids, with the defaults of the tokenizers library (ignore_merges apart)
_BPE_DEFAULTS: dict[str, Any] = {
    "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
    "fuse_unk": False, "byte_fallback": False,
}
_MESSAGE_WIDTH = 160


def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in of each byte: printable non-space bytes stand for themselves,
    the rest for chr(256 + n) in byte order."""
    alphabet: dict[int, str] = {}
    shifted = 0
    for b in range(256):
        if chr(b).isprintable() and chr(b) != " ":
            alphabet[b] = chr(b)
        else:
            alphabet[b] = chr(256 + shifted)
            shifted += 1
    return alphabet


@dataclass(frozen=True)
class TokenTable:
    """Everything that decides a tokenizer's ids (see the module docstring)."""

    source: str  # what the table was read from, for messages
    tokens: tuple[str | None, ...]  # id -> token; None: an id no token has
    # added token id -> (special, lstrip, rstrip, single_word, normalized): how text is matched against it
    added: Mapping[int, tuple[bool, ...]]
    merges: tuple[tuple[str, str], ...] | None  # None: a ranked BPE (tiktoken), ids are merge priorities
    ignore_merges: bool  # a word that is a token is that token, whatever the merges
    pipeline: Mapping[str, Any]  # "normalizer", "pre_tokenizer", "model" (options), canonical JSON values

    def token(self, i: int) -> str | None:
        return self.tokens[i] if 0 <= i < len(self.tokens) else None

    def serialise(self) -> bytes:
        """A canonical serialisation (what a fingerprint hashes)."""
        return json.dumps([self.tokens, sorted(self.added.items()), self.merges, self.ignore_merges, self.pipeline],
                          ensure_ascii=True, sort_keys=True).encode()


def table_from_tiktoken(token_bytes: Sequence[bytes], specials: Mapping[int, str], pattern: str,
                        source: str) -> TokenTable:
    """The table of a tiktoken encoding: its mergeable tokens in rank order (`token_bytes[rank]`),
    its special tokens by id, its split pattern."""
    alphabet = byte_alphabet()
    tokens: list[str | None] = ["".join(alphabet[b] for b in t) for t in token_bytes]
    tokens += [None] * (max(specials, default=-1) + 1 - len(tokens))
    for i, text in specials.items():
        tokens[i] = text
    pipeline = {
        "normalizer": None,
        "pre_tokenizer": [_split(pattern), _byte_level(add_prefix_space=False)],
        "model": {"type": "BPE", **_BPE_DEFAULTS},
    }
    added = {i: (True, False, False, False, False) for i in specials}
    return TokenTable(source, tuple(tokens), added, None, True, pipeline)


def table_from_hf(tokenizer_json: Mapping[str, Any], source: str) -> TokenTable:
    """The table of a Hugging Face tokenizer, from its `tokenizer.json` content."""
    model = dict(tokenizer_json["model"])
    vocab = model.pop("vocab")
    merges = model.pop("merges", None)
    ignore_merges = bool(model.pop("ignore_merges", False))
    if isinstance(vocab, list):  # Unigram: [piece, score] pairs in id order; the scores decide the pieces
        entries = {piece: i for i, (piece, _) in enumerate(vocab)}
        model["scores"] = [score for _, score in vocab]
    else:
        entries = dict(vocab)
    normalizer = _flatten(tokenizer_json.get("normalizer"), "normalizers")
    added = {}
    for entry in tokenizer_json.get("added_tokens") or []:
        entries[entry["content"]] = entry["id"]
        # `normalized` only matters where there is a normaliser
        added[entry["id"]] = (bool(entry.get("special")), bool(entry.get("lstrip")), bool(entry.get("rstrip")),
                              bool(entry.get("single_word")), bool(entry.get("normalized")) and bool(normalizer))
    tokens: list[str | None] = [None] * (max(entries.values(), default=-1) + 1)
    for text, i in entries.items():
        tokens[i] = text
    if model.get("type") == "BPE":
        model = {"type": "BPE", **{key: model.get(key) or default for key, default in _BPE_DEFAULTS.items()}}
    pre_tokenizer = [canonical for step in _flatten(tokenizer_json.get("pre_tokenizer"), "pretokenizers") or []
                     for canonical in _canonical_pre_tokenizer(step)]
    pipeline = {"normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "model": model}
    pairs = None if merges is None else tuple(_pair(m) for m in merges)
    return TokenTable(source, tuple(tokens), added, pairs, ignore_merges, pipeline)


def _pair(merge: str | Sequence[str]) -> tuple[str, str]:
    """A merge as saved: "a b" (older files) or ["a", "b"]."""
    first, second = merge.split(" ", 1) if isinstance(merge, str) else merge
    return first, second


def _flatten(component: Mapping[str, Any] | None, key: str) -> list[Any] | None:
    """A normaliser or pre-tokeniser as a flat list of its steps (a Sequence's steps in order); None if none."""
    if component is None:
        return None
    if component.get("type") == "Sequence":
        steps = [step for part in component[key] for step in _flatten(part, key) or []]
        return steps or None
    return [dict(component)]


def _split(pattern: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def _byte_level(add_prefix_space: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "use_regex": False}


def _canonical_pre_tokenizer(step: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One pre-tokeniser step as steps that compare equal where the ids are equal: ByteLevel's
    built-in GPT-2 split becomes an explicit Split step, offsets-only options are dropped."""
    if step.get("type") == "ByteLevel":
        byte_level = _byte_level(bool(step.get("add_prefix_space")))
        return [_split(GPT2_PATTERN), byte_level] if step.get("use_regex", True) else [byte_level]
    return [{key: value for key, value in step.items() if key != "trim_offsets"}]


def table_difference(first: TokenTable, second: TokenTable, ids: Iterable[int] | None = None) -> str | None:
    """The first thing that makes the two tables give different ids, in words, or None where
    they give the same: the token of each id (only `ids` when given, e.g. the ids a denoiser
    writes; else every id of either), added tokens, the text pipeline, the merges."""
    ids = range(max(len(first.tokens), len(second.tokens))) if ids is None else sorted(set(ids))
    for i in ids:
        a, b = first.token(i), second.token(i)
        if a != b:
            return f"id {i} is {_token_words(a)} in the first, {_token_words(b)} in the second"
        if first.added.get(i) != second.added.get(i):
            return f"id {i} ({a!r}) is {_added_words(first.added.get(i))} in the first, " \
                   f"{_added_words(second.added.get(i))} in the second"
    for key in ("normalizer", "pre_tokenizer", "model"):
        if first.pipeline[key] != second.pipeline[key]:
            where, a, b = _first_mismatch(first.pipeline[key], second.pipeline[key], key.replace("_", "-"))
            return f"the {where} differs: {_short(a)} in the first, {_short(b)} in the second"
    if first.merges is None and second.merges is None:
        return None
    if first.merges is not None and second.merges is not None:
        return _merge_list_difference(first, second)
    ranked, listed = (first, second) if first.merges is None else (second, first)
    order = "first" if listed is first else "second"
    return _ranked_difference(ranked, listed.merges or (), order)


def _first_mismatch(a: Any, b: Any, where: str) -> tuple[str, Any, Any]:
    """The innermost place where two JSON values differ: (its path in words, a's value, b's)."""
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        k = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
        return _first_mismatch(a[k], b[k], f"{where} step {k}")
    if isinstance(a, dict) and isinstance(b, dict):
        key = next(key for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key))
        return _first_mismatch(a.get(key), b.get(key), f"{where} {key}")
    return where, a, b


def _merge_list_difference(first: TokenTable, second: TokenTable) -> str | None:
    a, b = first.merges or (), second.merges or ()
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"merge {k} is {' '.join(x)!r} in the first, {' '.join(y)!r} in the second"
    if len(a) != len(b):
        return f"the first has {len(a)} merges, the second {len(b)}"
    if first.ignore_merges != second.ignore_merges:
        return f"ignore_merges is {first.ignore_merges} in the first, {second.ignore_merges} in the second"
    return None


def _ranked_difference(ranked: TokenTable, merges: Sequence[tuple[str, str]], order: str) -> str | None:
    """Whether `merges` create the ranked table's merged tokens in its id order, one merge each."""
    ids = {t: i for i, t in enumerate(ranked.tokens) if t is not None and i not in ranked.added}
    merged = sorted(i for t, i in ids.items() if len(t) > 1)
    for k, (x, y) in enumerate(merges):
        made = ids.get(x + y)
        expected = merged[k] if k < len(merged) else None
        if made != expected:
            makes = "no token" if made is None else f"id {made}"
            other = f"the other's merged token {k} is id {expected}" if expected is not None else \
                f"the other has {len(merged)} merged tokens"
            return f"merge {k} ({x + ' ' + y!r}) of the {order} makes {makes}, where {other}"
    if len(merges) != len(merged):
        return f"the {order} has {len(merges)} merges, the other {len(merged)}"
    return None


def _token_words(token: str | None) -> str:
    return "absent" if token is None else repr(token)


def _added_words(flags: tuple[bool, ...] | None) -> str:
    if flags is None:
        return "an ordinary token"
    special, lstrip, rstrip, single_word, normalized = flags
    options = [name for name, on in (("lstrip", lstrip), ("rstrip", rstrip), ("single_word", single_word),
                                     ("normalized", normalized)) if on]
    return ("a special token" if special else "an added token") + (f" ({', '.join(options)})" if options else "")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, sort_keys=True)
    return text if len(text) <= _MESSAGE_WIDTH else text[: _MESSAGE_WIDTH - 3] + "..."
