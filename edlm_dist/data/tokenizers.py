"""Tokenizers: GPT-2 BPE (tiktoken), Hugging Face model folders (`tokenizers`), characters,
words, and the shared interface.

Conventions: `vocab_size` counts the tokenizer's ids (EOS included). The diffusion mask token is
`mask_id`: one past them (`mask_id = vocab_size`) unless the model's own vocabulary holds one
(LLaDA's, Dream's: `mask_in_vocabulary`); `num_token_ids` counts the ids a model reads and
writes, the mask included (`vocab_size + 1`, or `vocab_size` where the mask is inside). EOS
doubles as BOS where a tokenizer names no BOS. `encode` adds no special token and reads special
tokens' text as text; `decode` renders ids it cannot map to text (the mask) with a marker instead
of failing, so model samples can always be printed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tiktoken
from tokenizers import Tokenizer as HFBackend

from edlm_dist.data.chat_template import render_chat
from edlm_dist.data.errors import TokenizerError
from edlm_dist.data.hf_files import read_model_tokenizer
from edlm_dist.data.token_table import (
    GPT2_PATTERN,
    TokenTable,
    byte_alphabet,
    table_difference,
    table_from_hf,
    table_from_tiktoken,
)

GPT2_VOCAB_SIZE = 50257
GPT2_EOS_ID = 50256
ENDOFTEXT = "<|endoftext|>"
GPT2_FILES_HINT = (
    "set data.tokenizer_path to a folder holding vocab.bpe + encoder.json (or r50k_base.tiktoken), "
    "or set EDLM_DATA_DIR to a folder containing gpt2_tokenizer/"
)


class Tokenizer(ABC):
    """Common interface: text <-> data-token ids, plus what a run needs to store and check it."""

    name: str
    vocab_size: int
    eos_id: int

    @property
    def mask_id(self) -> int:
        """The diffusion mask token, one past the data tokens."""
        return self.vocab_size

    @property
    def mask_in_vocabulary(self) -> bool:
        """Whether the mask is one of the tokenizer's own ids (LLaDA, Dream) rather than one past them."""
        return self.mask_id < self.vocab_size

    @property
    def num_token_ids(self) -> int:
        """The ids a model over this tokenizer reads and writes, the mask included (a model may pad
        its logits beyond them)."""
        return max(self.vocab_size, self.mask_id + 1)

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

    def token_table(self) -> TokenTable:
        """What decides this tokenizer's ids, to compare it with another (`check_same_token_ids`)."""
        raise TokenizerError(f"the {self.name} tokenizer cannot be compared id by id with another tokenizer")

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
        self._table: TokenTable | None = None

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

    def token_table(self) -> TokenTable:
        """tiktoken's ranked BPE: the merged tokens in rank order, then <|endoftext|> (computed once)."""
        if self._table is None:
            merged = [self._encoding.decode_single_token_bytes(i) for i in range(GPT2_EOS_ID)]
            source = f"GPT-2 BPE (tiktoken, {self.path or 'default files'})"
            self._table = table_from_tiktoken(merged, {GPT2_EOS_ID: ENDOFTEXT}, GPT2_PATTERN, source)
        return self._table


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


def _ranks_from_data_gym(vocab_bpe: Path, encoder_json: Path) -> dict[bytes, int]:
    """Token bytes -> rank from encoder.json, checked against the merge order in vocab.bpe
    (tiktoken needs ranks to follow merge priority)."""
    byte_of = {c: b for b, c in byte_alphabet().items()}

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


class HFTokenizer(Tokenizer):
    """The tokenizer of a Hugging Face model folder (`tokenizer.json`, or a GPT-2 or Qwen2
    `vocab.json` + `merges.txt`; see `edlm_dist.data.hf_files`), read offline with the `tokenizers`
    library, with the folder's special tokens, mask token and chat template.

    `vocab_size` counts every id the tokenizer has, special tokens included (a model may pad its
    logits further: LLaDA's to 126,464, Dream's to 152,064); `mask_id` is the mask token the
    folder names (LLaDA's 126,336, Dream's 151,666, both from config.json), else `vocab_size`.
    """

    name = "hf"
    mask_marker = "[MASK]"

    def __init__(self, path: str) -> None:
        if not path:
            raise TokenizerError("the hf tokenizer needs data.tokenizer_path: a Hugging Face model folder")
        files = read_model_tokenizer(path)
        self.path, self.folder = path, str(files.folder)
        self.eos_id, self.bos_id, self.stop_ids = files.eos_id, files.bos_id, files.stop_ids
        self.special_tokens, self.chat_template = files.special_tokens, files.chat_template
        self._mask_id = files.mask_id
        self._text = files.tokenizer
        self._text.encode_special_tokens = True  # data text: special tokens' text is text
        self._chat: HFBackend | None = None  # rendered chats: special tokens are themselves (made on first use)
        self.vocab_size = 1 + max([*self._text.get_vocab(with_added_tokens=True).values(), -1])
        self._table: TokenTable | None = None
        self._fingerprint: str | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled (a dataloader worker's copy): the `tokenizers` library does not pickle
        `encode_special_tokens`, so it is set again."""
        self.__dict__.update(state)
        self._text.encode_special_tokens = True

    @property
    def mask_id(self) -> int:
        """The folder's mask token, else one past the tokenizer's ids."""
        return self.vocab_size if self._mask_id is None else self._mask_id

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special token added; special tokens' text is encoded as text."""
        return self._text.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens as their text; an id no token has (the mask past the
        vocabulary) renders as "[MASK]". Runs of tokens are decoded together so multi-byte
        characters survive."""
        pieces: list[str] = []
        run: list[int] = []
        for i in self._check_ids(ids):
            if i < self.vocab_size and self._text.id_to_token(i) is not None:
                run.append(i)
                continue
            pieces += [self._text.decode(run, skip_special_tokens=False), self.mask_marker]
            run = []
        pieces.append(self._text.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    **variables: Any) -> str:
        """The prompt text of `messages` ([{"role": ..., "content": ...}]) under the folder's chat
        template, rendered in a sandbox (`edlm_dist.data.chat_template`)."""
        if self.chat_template is None:
            raise TokenizerError(f"{self.folder!r} has no chat template (tokenizer_config.json or chat_template.jinja)")
        return render_chat(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           special_tokens=self.special_tokens, where=self.folder, **variables)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    **variables: Any) -> list[int]:
        """Token ids of the rendered chat; the template's special tokens are encoded as themselves
        and nothing is added (the template writes its own BOS), as transformers does."""
        if self._chat is None:
            self._chat = HFBackend.from_str(self._text.to_str())
            self._chat.encode_special_tokens = False
        return self._chat.encode(self.render_chat(messages, add_generation_prompt, **variables),
                                 add_special_tokens=False).ids

    def to_dict(self) -> dict[str, Any]:
        """Only the name and the folder: the files themselves are not stored."""
        return {"name": self.name, "path": self.path}

    def token_table(self) -> TokenTable:
        if self._table is None:
            self._table = table_from_hf(json.loads(self._text.to_str()), self.folder)
        return self._table

    def fingerprint(self) -> str:
        """Hash of the token table and the EOS, BOS and mask ids (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = super().fingerprint()
        return self._fingerprint

    def _vocabulary_bytes(self) -> bytes:
        roles = json.dumps([self.eos_id, self.bos_id, self._mask_id]).encode()
        return self.token_table().serialise() + roles


def check_same_token_ids(first: Tokenizer, second: Tokenizer, ids: Iterable[int] | None = None) -> None:
    """Refuse, in one line naming both tokenizers and the first difference, two tokenizers that
    do not give the same ids: the same token at every id (only `ids` when given, e.g. the ids a
    denoiser writes, its mask left out), the same added and special tokens, the same normaliser,
    pre-tokeniser and merges. GPT-2's tiktoken encoding and a GPT-2 `tokenizer.json` compare equal."""
    a, b = first.token_table(), second.token_table()
    difference = table_difference(a, b, ids)
    if difference is not None:
        raise TokenizerError(f"the tokenizers of {a.source} and {b.source} give different ids: {difference}")


def build_tokenizer(name: str, path: str = "", corpus: str | None = None) -> Tokenizer:
    """The tokenizer named by the config: "gpt2" (files at `path`), "hf" (the model folder
    `path`), "char" or "word" (from `corpus`)."""
    if name == "gpt2":
        return GPT2Tokenizer(path or None)
    if name == "hf":
        return HFTokenizer(path)
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
    raise TokenizerError(f"unknown tokenizer {name!r}; expected 'gpt2', 'hf', 'char', 'word' or 'synthetic'")


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer stored with `Tokenizer.to_dict`."""
    name = d.get("name")
    if name == "gpt2":
        return GPT2Tokenizer(d.get("path") or None)
    if name == "hf":
        return HFTokenizer(d.get("path") or "")
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
