"""Tokenizers: GPT-2 BPE (tiktoken), characters, words, and the shared interface.

Conventions: `vocab_size` counts the DATA tokens (EOS included); the diffusion mask token is
`mask_id = vocab_size`, so models embed `vocab_size + 1` ids. EOS doubles as BOS. `encode`
never adds EOS; `decode` renders ids it cannot map to text (the mask) with a marker instead
of failing, so model samples can always be printed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tiktoken

GPT2_VOCAB_SIZE = 50257
GPT2_EOS_ID = 50256
ENDOFTEXT = "<|endoftext|>"
# The split pattern of the original GPT-2 release.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_FILES_HINT = (
    "set data.tokenizer_path to a folder holding vocab.bpe + encoder.json (or r50k_base.tiktoken), "
    "or set EDLM_DATA_DIR to a folder containing gpt2_tokenizer/"
)


class TokenizerError(ValueError):
    """A tokenizer problem caused by user input (files, settings, text); printed as one line."""

    user_error = True


class Tokenizer(ABC):
    """Common interface: text <-> data-token ids, plus what a run needs to store and check it."""

    name: str
    vocab_size: int
    eos_id: int

    @property
    def mask_id(self) -> int:
        """The diffusion mask token, one past the data tokens."""
        return self.vocab_size

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without EOS."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; ids >= vocab_size (the mask) render as a marker."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description that `tokenizer_from_dict` turns back into this tokenizer."""

    @abstractmethod
    def _vocabulary_bytes(self) -> bytes:
        """A canonical serialisation of the vocabulary, hashed by `fingerprint`."""

    def fingerprint(self) -> str:
        """Short stable hash of the vocabulary, to detect checkpoint/data/tokenizer mismatches."""
        return hashlib.sha256(self._vocabulary_bytes()).hexdigest()[:16]

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        """`ids` as plain ints; negative ids are a caller bug, reported as such."""
        out = [int(i) for i in ids]
        if any(i < 0 for i in out):
            raise TokenizerError(f"{self.name} tokenizer: cannot decode negative token id {min(out)}")
        return out


class GPT2Tokenizer(Tokenizer):
    """tiktoken's GPT-2 BPE, built from local files when available (works offline)."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eos_id = GPT2_EOS_ID
    mask_marker = "[MASK]"

    def __init__(self, path: str | None = None) -> None:
        self.path = path or ""
        self._encoding = _gpt2_encoding(path or None)
        self._fingerprint: str | None = None

    def encode(self, text: str) -> list[int]:
        """BPE ids; "<|endoftext|>" inside the text is encoded as ordinary text."""
        return self._encoding.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; runs of data tokens are decoded together so multi-byte characters survive."""
        pieces: list[str] = []
        run: list[int] = []
        for i in self._check_ids(ids):
            if i < self.vocab_size:
                run.append(i)
                continue
            pieces += [self._encoding.decode(run), self.mask_marker]
            run = []
        pieces.append(self._encoding.decode(run))
        return "".join(pieces)

    def to_dict(self) -> dict[str, Any]:
        """Only the name and the user's path: the files themselves are not stored."""
        return {"name": self.name, "path": self.path}

    def fingerprint(self) -> str:
        """Hash of every token's bytes (computed once; ~50k tokens)."""
        if self._fingerprint is None:
            self._fingerprint = super().fingerprint()
        return self._fingerprint

    def _vocabulary_bytes(self) -> bytes:
        tokens = (self._encoding.decode_single_token_bytes(i) for i in range(self.vocab_size))
        return b"".join(len(t).to_bytes(4, "little") + t for t in tokens)


def _gpt2_encoding(path: str | None) -> tiktoken.Encoding:
    """The GPT-2 encoding from `path`, else $EDLM_DATA_DIR/gpt2_tokenizer, else tiktoken's cache."""
    if path is not None:
        return _gpt2_encoding_from_folder(Path(path))
    data_dir = os.environ.get("EDLM_DATA_DIR")
    if data_dir and (Path(data_dir) / "gpt2_tokenizer").is_dir():
        return _gpt2_encoding_from_folder(Path(data_dir) / "gpt2_tokenizer")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # network or cache failure: tiktoken raises many kinds
        raise TokenizerError(
            f"could not load tiktoken's gpt2 encoding ({type(e).__name__}: {e}); {GPT2_FILES_HINT}"
        ) from e


def _gpt2_encoding_from_folder(folder: Path) -> tiktoken.Encoding:
    """Assemble the GPT-2 encoding from vocab.bpe + encoder.json or from r50k_base.tiktoken."""
    if not folder.is_dir():
        raise TokenizerError(f"GPT-2 tokenizer folder {str(folder)!r} does not exist; {GPT2_FILES_HINT}")
    if (folder / "vocab.bpe").is_file() and (folder / "encoder.json").is_file():
        ranks = _ranks_from_data_gym(folder / "vocab.bpe", folder / "encoder.json")
    elif (folder / "r50k_base.tiktoken").is_file():
        ranks = _ranks_from_tiktoken_file(folder / "r50k_base.tiktoken")
    else:
        raise TokenizerError(
            f"GPT-2 tokenizer folder {str(folder)!r} holds neither vocab.bpe + encoder.json "
            f"nor r50k_base.tiktoken"
        )
    if len(ranks) != GPT2_EOS_ID or sorted(ranks.values()) != list(range(GPT2_EOS_ID)):
        raise TokenizerError(
            f"GPT-2 tokenizer files in {str(folder)!r} define {len(ranks)} tokens, "
            f"expected ranks 0..{GPT2_EOS_ID - 1}"
        )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_EOS_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def _data_gym_byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for bytes: printable non-space bytes map to themselves,
    the rest to chr(256 + n) in byte order."""
    decoder: dict[str, int] = {}
    shifted = 0
    for b in range(256):
        if chr(b).isprintable() and chr(b) != " ":
            decoder[chr(b)] = b
        else:
            decoder[chr(256 + shifted)] = b
            shifted += 1
    return decoder


def _ranks_from_data_gym(vocab_bpe: Path, encoder_json: Path) -> dict[bytes, int]:
    """Token bytes -> rank from encoder.json, checked against the merge order in vocab.bpe
    (tiktoken needs ranks to follow merge priority)."""
    byte_of = _data_gym_byte_decoder()

    def to_bytes(token: str, source: Path) -> bytes:
        try:
            return bytes(byte_of[c] for c in token)
        except KeyError as e:
            raise TokenizerError(f"{str(source)!r}: token {token!r} has a character outside GPT-2's byte map") from e

    try:
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
        merges = vocab_bpe.read_text(encoding="utf-8").split("\n")[1:]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"cannot read GPT-2 tokenizer files in {str(vocab_bpe.parent)!r}: {e}") from e
    ranks = {to_bytes(tok, encoder_json): int(rank) for tok, rank in encoder.items() if tok != ENDOFTEXT}
    for n, line in enumerate(m for m in merges if m):
        first, _, second = line.partition(" ")
        if ranks.get(to_bytes(first, vocab_bpe) + to_bytes(second, vocab_bpe)) != 256 + n:
            raise TokenizerError(f"{str(vocab_bpe)!r} merge {n} ({line!r}) does not match {str(encoder_json)!r}")
    return ranks


def _ranks_from_tiktoken_file(path: Path) -> dict[bytes, int]:
    """Token bytes -> rank from a .tiktoken file (lines of "base64 rank")."""
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_bytes().splitlines()
        for line in filter(None, lines):
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (OSError, ValueError, binascii.Error) as e:
        raise TokenizerError(f"cannot parse {str(path)!r}: {e}") from e
    return ranks


class _PieceTokenizer(Tokenizer):
    """A vocabulary that is an explicit list of pieces (characters, words): ids in the list's
    order, EOS after them, the list itself stored with the run."""

    piece: str  # what one entry is, for messages
    key: str  # the list's name in `to_dict`
    eos_marker = "\n"
    mask_marker = "_"

    def __init__(self, pieces: Sequence[str]) -> None:
        pieces = list(pieces)
        if not pieces:
            raise TokenizerError(f"{self.name} tokenizer: the vocabulary is empty")
        bad = [p for p in pieces if not (isinstance(p, str) and self._is_piece(p))]
        if bad:
            raise TokenizerError(f"{self.name} tokenizer: vocabulary entry {bad[0]!r} is not a single {self.piece}")
        if len(set(pieces)) != len(pieces):
            raise TokenizerError(f"{self.name} tokenizer: the vocabulary lists a {self.piece} twice")
        self.pieces = pieces
        self._ids = {p: i for i, p in enumerate(pieces)}
        self.eos_id = len(pieces)
        self.vocab_size = len(pieces) + 1

    @staticmethod
    @abstractmethod
    def _is_piece(entry: str) -> bool:
        """Whether `entry` is one piece of this kind."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, self.key: list(self.pieces)}

    def _vocabulary_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=True).encode()


class CharTokenizer(_PieceTokenizer):
    """One id per character (ids in the given order), EOS after them."""

    name = "char"
    piece = "character"
    key = "chars"

    @property
    def chars(self) -> list[str]:
        return self.pieces

    @staticmethod
    def _is_piece(entry: str) -> bool:
        return len(entry) == 1

    @classmethod
    def from_corpus(cls, text: str) -> CharTokenizer:
        """The sorted distinct characters of `text`."""
        if not text:
            raise TokenizerError("char tokenizer: the corpus is empty")
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        """Character ids; an unknown character is an error naming it and its position."""
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            pos, char = next((p, c) for p, c in enumerate(text) if c not in self._ids)
            raise TokenizerError(
                f"char tokenizer: character {char!r} at position {pos} is not in the vocabulary "
                f"({len(self.chars)} characters)"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        """Characters of `ids`; EOS renders as a newline, the mask as "_"."""
        n = len(self.chars)
        return "".join(
            self.chars[i] if i < n else self.eos_marker if i == n else self.mask_marker
            for i in self._check_ids(ids)
        )


class WordTokenizer(_PieceTokenizer):
    """One id per whitespace-separated word (ids in the given order), EOS after them; a newline
    is EOS. A word outside the vocabulary becomes `unk` when the vocabulary has it (PTB's
    "<unk>"), else it is an error naming it."""

    name = "word"
    piece = "word"
    key = "words"
    unk = "<unk>"

    def __init__(self, words: Sequence[str]) -> None:
        super().__init__(words)
        self._unk_id = self._ids.get(self.unk)

    @property
    def words(self) -> list[str]:
        return self.pieces

    @staticmethod
    def _is_piece(entry: str) -> bool:
        return bool(entry) and entry == entry.strip() and len(entry.split()) == 1

    @classmethod
    def from_corpus(cls, text: str) -> WordTokenizer:
        """The sorted distinct words of `text`."""
        words = sorted(set(text.split()))
        if not words:
            raise TokenizerError("word tokenizer: the corpus has no words")
        return cls(words)

    def encode(self, text: str) -> list[int]:
        """Word ids, with EOS for every newline."""
        get, unk = self._ids.get, self._unk_id
        ids: list[int] = []
        for number, line in enumerate(text.split("\n"), start=1):
            if number > 1:
                ids.append(self.eos_id)
            words = [get(w, unk) for w in line.split()]
            if unk is None and None in words:
                word = line.split()[words.index(None)]
                raise TokenizerError(
                    f"word tokenizer: word {word!r} on line {number} is not in the vocabulary "
                    f"({len(self.words)} words, no {self.unk!r})"
                )
            ids += words
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Words of `ids` separated by spaces; EOS renders as a newline, the mask as "_"."""
        n = len(self.words)
        pieces: list[str] = []
        for i in self._check_ids(ids):
            if i == n:
                pieces.append(self.eos_marker)
                continue
            if pieces and pieces[-1] != self.eos_marker:
                pieces.append(" ")
            pieces.append(self.words[i] if i < n else self.mask_marker)
        return "".join(pieces)


def build_tokenizer(name: str, path: str = "", corpus: str | None = None) -> Tokenizer:
    """The tokenizer named by the config: "gpt2" (files at `path`), "char" or "word" (from `corpus`)."""
    if name == "gpt2":
        return GPT2Tokenizer(path or None)
    if name == "char":
        if corpus is None:
            raise TokenizerError("the char tokenizer needs the training text to build its vocabulary")
        return CharTokenizer.from_corpus(corpus)
    if name == "word":
        if corpus is None:
            raise TokenizerError("the word tokenizer needs the training text to build its vocabulary")
        return WordTokenizer.from_corpus(corpus)
    if name == "synthetic":
        raise TokenizerError(
            "the synthetic tokenizer is built from its Markov source: "
            "use edlm_dist.data.SyntheticTokenizer(MarkovSource(...))"
        )
    raise TokenizerError(f"unknown tokenizer {name!r}; expected 'gpt2', 'char', 'word' or 'synthetic'")


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer stored with `Tokenizer.to_dict`."""
    name = d.get("name")
    if name == "gpt2":
        return GPT2Tokenizer(d.get("path") or None)
    if name == "char":
        return CharTokenizer(d["chars"])
    if name == "word":
        return WordTokenizer(d["words"])
    if name in _REBUILDERS:
        return _REBUILDERS[name](d)
    raise TokenizerError(f"cannot rebuild tokenizer from {d!r}: unknown name {name!r}")


_REBUILDERS: dict[str, Callable[[dict[str, Any]], Tokenizer]] = {}


def register_tokenizer(name: str, from_dict: Callable[[dict[str, Any]], Tokenizer]) -> None:
    """Let `tokenizer_from_dict` rebuild the tokenizers stored under `name` (a tokenizer defined
    outside this module, e.g. the synthetic one, registers itself where it is defined)."""
    _REBUILDERS[name] = from_dict
