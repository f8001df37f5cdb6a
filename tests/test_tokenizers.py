"""Tokenizers: GPT-2 from local files, characters, storage round trips."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tiktoken

from edlm_dist.data import (
    CharTokenizer,
    GPT2Tokenizer,
    TokenizerError,
    WordTokenizer,
    build_tokenizer,
    tokenizer_from_dict,
)

HELLO_WORLD = [15496, 995]


@pytest.fixture(scope="module")
def gpt2_dir(data_dir: Path) -> Path:
    folder = data_dir / "gpt2_tokenizer"
    assert folder.is_dir(), f"{folder} is missing"
    return folder


@pytest.fixture(scope="module")
def gpt2(gpt2_dir: Path) -> GPT2Tokenizer:
    return GPT2Tokenizer(str(gpt2_dir))


def _copy_files(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir()
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst


@pytest.mark.parametrize("files", [["vocab.bpe", "encoder.json"], ["r50k_base.tiktoken"]])
def test_gpt2_from_each_file_format(gpt2_dir: Path, gpt2: GPT2Tokenizer, tmp_path: Path, files: list[str]) -> None:
    tok = GPT2Tokenizer(str(_copy_files(gpt2_dir, tmp_path / "tok", files)))
    assert tok.encode("Hello world") == HELLO_WORLD
    assert (tok.vocab_size, tok.eos_id, tok.mask_id) == (50257, 50256, 50257)
    assert tok.fingerprint() == gpt2.fingerprint()


def test_gpt2_round_trip_shakespeare(gpt2: GPT2Tokenizer, data_dir: Path) -> None:
    text = (data_dir / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")[:3000]
    ids = gpt2.encode(text)
    assert 500 < len(ids) < len(text)
    assert gpt2.decode(ids) == text


def test_gpt2_endoftext_is_plain_text(gpt2: GPT2Tokenizer) -> None:
    ids = gpt2.encode("a<|endoftext|>b")
    assert gpt2.eos_id not in ids
    assert gpt2.decode(ids) == "a<|endoftext|>b"


def test_gpt2_decodes_mask(gpt2: GPT2Tokenizer) -> None:
    assert gpt2.decode([15496, gpt2.mask_id, 995]) == "Hello[MASK] world"


def test_gpt2_from_env_data_dir(data_dir: Path, gpt2: GPT2Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDLM_DATA_DIR", str(data_dir))
    tok = tokenizer_from_dict(build_tokenizer("gpt2").to_dict())
    assert tok.encode("Hello world") == HELLO_WORLD
    assert tok.to_dict() == {"name": "gpt2", "path": ""}


def test_gpt2_missing_folder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(TokenizerError, match="nowhere.*does not exist"):
        GPT2Tokenizer(str(missing))
    with pytest.raises(TokenizerError, match="holds neither vocab.bpe"):
        GPT2Tokenizer(str(tmp_path))


def test_gpt2_offline_without_files_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str) -> None:
        raise ConnectionError("no network")

    monkeypatch.delenv("EDLM_DATA_DIR", raising=False)
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(TokenizerError, match="tokenizer_path.*EDLM_DATA_DIR"):
        GPT2Tokenizer()


def test_char_round_trip_and_ids() -> None:
    tok = CharTokenizer.from_corpus("hello world\n")
    assert tok.chars == sorted(set("hello world\n"))
    assert (tok.eos_id, tok.vocab_size, tok.mask_id) == (9, 10, 10)
    ids = tok.encode("low hold")
    assert tok.decode(ids) == "low hold"
    assert tok.decode([tok.eos_id, *ids, tok.mask_id]) == "\nlow hold_"


def test_char_unknown_character_names_it() -> None:
    tok = CharTokenizer.from_corpus("abc")
    with pytest.raises(TokenizerError, match=r"'z' at position 2"):
        tok.encode("abz")


def test_char_dict_round_trip_and_fingerprint() -> None:
    tok = CharTokenizer.from_corpus("the quick brown fox")
    again = tokenizer_from_dict(tok.to_dict())
    assert isinstance(again, CharTokenizer) and again.chars == tok.chars
    assert again.fingerprint() == tok.fingerprint()
    assert CharTokenizer.from_corpus("the quick brown fax").fingerprint() != tok.fingerprint()
    assert build_tokenizer("char", corpus="the quick brown fox").fingerprint() == tok.fingerprint()


@pytest.mark.parametrize("chars", [[], ["ab"], ["a", "a"]])
def test_char_invalid_vocabulary(chars: list[str]) -> None:
    with pytest.raises(TokenizerError):
        CharTokenizer(chars)


def test_word_round_trip_newline_is_eos() -> None:
    tok = WordTokenizer.from_corpus("the cat sat\non the <unk>\n")
    assert tok.words == ["<unk>", "cat", "on", "sat", "the"]
    assert (tok.eos_id, tok.vocab_size, tok.mask_id) == (5, 6, 6)
    ids = tok.encode("the cat\nsat on the mat")
    assert ids == [4, 1, 5, 3, 2, 4, 0]  # "mat" is not in the vocabulary: <unk>
    assert tok.decode(ids) == "the cat\nsat on the <unk>"
    assert tok.decode([tok.eos_id, 4, tok.mask_id, 1, tok.eos_id]) == "\nthe _ cat\n"


def test_word_unknown_word_without_unk_names_it() -> None:
    tok = WordTokenizer.from_corpus("a b c")
    with pytest.raises(TokenizerError, match=r"word 'z' on line 2 is not in the vocabulary"):
        tok.encode("a b\nc z")


def test_word_dict_round_trip_and_fingerprint() -> None:
    tok = WordTokenizer.from_corpus("the quick brown fox")
    again = tokenizer_from_dict(tok.to_dict())
    assert isinstance(again, WordTokenizer) and again.words == tok.words
    assert again.fingerprint() == tok.fingerprint()
    assert WordTokenizer.from_corpus("the quick brown fax").fingerprint() != tok.fingerprint()
    assert build_tokenizer("word", corpus="the quick brown fox").fingerprint() == tok.fingerprint()
    assert tok.fingerprint() != CharTokenizer(list("abc")).fingerprint()


@pytest.mark.parametrize("words", [[], ["a b"], ["a", "a"], [""]])
def test_word_invalid_vocabulary(words: list[str]) -> None:
    with pytest.raises(TokenizerError):
        WordTokenizer(words)


def test_word_ptb_has_its_10k_vocabulary(data_dir: Path) -> None:
    from edlm_dist.config import TrainProgram, load_config
    from edlm_dist.data import build_dataset

    data = build_dataset(load_config(TrainProgram, None, ["--data.dataset=ptb", "--data.tokenizer=word", "--data.seq_len=32"]).data)
    tok = data.tokenizer
    assert isinstance(tok, WordTokenizer) and tok.vocab_size == 10_000  # 9,999 words and EOS, as the release says
    test_text = (data_dir / "ptb" / "ptb.test.txt").read_text()
    assert tok.decode(tok.encode(test_text)).split() == test_text.split()  # every test word is in the vocabulary


def test_build_tokenizer_errors() -> None:
    with pytest.raises(TokenizerError, match="training text"):
        build_tokenizer("char")
    with pytest.raises(TokenizerError, match="training text"):
        build_tokenizer("word")
    with pytest.raises(TokenizerError, match="SyntheticTokenizer"):
        build_tokenizer("synthetic")
    with pytest.raises(TokenizerError, match="unknown tokenizer 'bpe'"):
        build_tokenizer("bpe")
    with pytest.raises(TokenizerError, match="unknown name"):
        tokenizer_from_dict({"name": "bpe"})
    assert TokenizerError.user_error
