"""Datasets by name: one `DATASETS` entry each says how training builds it from `[data]` and,
for a named text dataset, where its files are and how a zero-shot evaluation reads them.

- `synthetic`: the embedded Markov corpus (closed-form entropy figures).
- `text`: one UTF-8 file in memory, its tail held out for validation.
- `wikitext2`, `ptb`, `tiny_shakespeare`, `text8`, `lambada`: the real files under
  `$EDLM_DATA_DIR` (or `data.path`: the data root or the dataset's own folder, see
  `named_file`), with their own train/validation splits where they ship them. `lambada` ships a
  test split only: it is an evaluation set, not a training set.
- `files`, `openwebtext`: a corpus prepared by `tools/prepare_data.py` (`data.path`, a folder or
  an fsspec URL), streamed from its shards.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edlm_dist.config import DataConfig
from edlm_dist.data.dataset import Dataset
from edlm_dist.data.detokenizers import (
    json_texts,
    lambada_detokenize,
    lines,
    ptb_detokenize,
    stripped_lines,
    wikitext_detokenize,
)
from edlm_dist.data.errors import DataError
from edlm_dist.data.prepared import prepared_dataset
from edlm_dist.data.synthetic import MarkovSource, SyntheticBlocks, SyntheticTokenizer
from edlm_dist.data.text import TextBlocks
from edlm_dist.data.tokenizers import Tokenizer, build_tokenizer

TEXT8_SPLIT = (90_000_000, 95_000_000)  # the standard text8 split: 90M / 5M / 5M characters


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: how training builds it and, for the named text datasets, their files."""

    build: Callable[[DataConfig], Dataset]
    files: Mapping[str, str] = field(default_factory=dict)  # split -> file inside $EDLM_DATA_DIR
    # the split a zero-shot evaluation scores when none is named ("": not an evaluation set)
    eval_split: str = ""
    records: Callable[[str], list[str]] = lines  # a file's documents, as a zero-shot evaluation reads them
    detokenize: Callable[[str], str] | None = None  # undoes the file's tokenisation before GPT-2's
    # cuts a single-file dataset's text into train and val (None: its tail by data.val_fraction)
    split_all: Callable[[str], dict[str, str]] | None = None

    @property
    def prepared(self) -> bool:
        """Whether it is a corpus prepared by tools/prepare_data.py."""
        return self.build is prepared_dataset


def check_dataset(cfg: DataConfig) -> None:
    """Refuse, in one line, a `data.dataset` the registry does not know (with the closest name)
    or a tokenizer it cannot take; reads no data (`train --check` runs it)."""
    if cfg.dataset not in DATASETS:
        close = difflib.get_close_matches(cfg.dataset, DATASETS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(DATASETS)}"
        raise DataError(f"data.dataset: unknown dataset {cfg.dataset!r}; {hint}")
    if cfg.tokenizer == "synthetic" and cfg.dataset != "synthetic":
        raise DataError("data.tokenizer = 'synthetic' only works with data.dataset = 'synthetic'")
    if cfg.tokenizer == "hf" and not cfg.tokenizer_path and not DATASETS[cfg.dataset].prepared:
        raise DataError("data.tokenizer = 'hf' needs data.tokenizer_path: a Hugging Face model folder")


def build_dataset(cfg: DataConfig) -> Dataset:
    """The tokenizer and block source that `cfg` names."""
    check_dataset(cfg)
    return DATASETS[cfg.dataset].build(cfg)


def run_tokenizer(cfg: DataConfig) -> Tokenizer:
    """The tokenizer of a run's data; GPT-2's or a model folder's without reading the corpus,
    which sampling and zero-shot evaluation do not need (an imported run has none prepared here);
    a prepared corpus's model folder, where `data.tokenizer_path` names none, from its manifest."""
    if cfg.tokenizer == "gpt2" or (cfg.tokenizer == "hf" and cfg.tokenizer_path):
        return build_tokenizer(cfg.tokenizer, cfg.tokenizer_path)
    return build_dataset(cfg).tokenizer


def _synthetic(cfg: DataConfig) -> Dataset:
    if cfg.tokenizer != "synthetic":
        raise DataError(f"data.dataset = 'synthetic' needs data.tokenizer = 'synthetic', got {cfg.tokenizer!r}")
    source = MarkovSource(cfg.synthetic_states, cfg.synthetic_branching, cfg.synthetic_concentration, cfg.seed)
    tokenizer = SyntheticTokenizer(source)
    return Dataset(tokenizer, SyntheticBlocks(source, cfg.seq_len, cfg.seed), tokenizer.fingerprint())


def _in_memory_text(cfg: DataConfig) -> Dataset:
    """A text dataset held in memory: its splits tokenised, blocks cut at random offsets."""
    texts = _split_texts(cfg)
    # a word vocabulary comes from the training split alone (PTB's own 10k words, <unk> included)
    corpus = texts["train"] if cfg.tokenizer == "word" and "train" in texts else "".join(texts.values())
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.tokenizer_path, corpus=corpus)
    splits = {name: torch.tensor(tokenizer.encode(text), dtype=torch.long) for name, text in texts.items()}
    try:
        if "train" in splits:
            blocks = TextBlocks(splits, seq_len=cfg.seq_len, eos_id=tokenizer.eos_id, seed=cfg.seed)
        else:
            blocks = TextBlocks.from_stream(
                splits["all"], seq_len=cfg.seq_len, eos_id=tokenizer.eos_id, val_fraction=cfg.val_fraction, seed=cfg.seed
            )
    except ValueError as err:
        raise DataError(f"data.dataset {cfg.dataset!r}: {err}") from None
    digest = hashlib.sha256(tokenizer.fingerprint().encode())
    for name in sorted(splits):
        digest.update(name.encode() + splits[name].numpy().tobytes())
    return Dataset(tokenizer, blocks, digest.hexdigest()[:16])


def _text8_split(text: str) -> dict[str, str]:
    train_end, val_end = TEXT8_SPLIT
    return {"train": text[:train_end], "val": text[train_end:val_end]}


DATASETS: dict[str, DatasetEntry] = {
    "synthetic": DatasetEntry(_synthetic),
    "text": DatasetEntry(_in_memory_text),
    "files": DatasetEntry(prepared_dataset, eval_split="val"),
    "openwebtext": DatasetEntry(prepared_dataset, eval_split="val"),
    "wikitext2": DatasetEntry(
        _in_memory_text, {"train": "wikitext2/wiki.train.tokens", "val": "wikitext2/wiki.valid.tokens",
                          "test": "wikitext2/wiki.test.tokens"},
        eval_split="val", records=lines, detokenize=wikitext_detokenize),
    "ptb": DatasetEntry(
        _in_memory_text, {"train": "ptb/ptb.train.txt", "val": "ptb/ptb.valid.txt", "test": "ptb/ptb.test.txt"},
        eval_split="val", records=stripped_lines, detokenize=ptb_detokenize),
    "lambada": DatasetEntry(_in_memory_text, {"test": "lambada/lambada_test.jsonl"}, eval_split="test",
                            records=json_texts, detokenize=lambada_detokenize),
    "tiny_shakespeare": DatasetEntry(_in_memory_text, {"all": "tiny_shakespeare/input.txt"}),
    "text8": DatasetEntry(_in_memory_text, {"all": "text8/text8"}, split_all=_text8_split),
}


def data_dir() -> Path:
    """The shared data folder, `$EDLM_DATA_DIR`."""
    folder = os.environ.get("EDLM_DATA_DIR")
    if not folder:
        raise DataError("EDLM_DATA_DIR is not set: point it at the data folder, or set data.path")
    return Path(folder)


def named_file(name: str, split: str, folder: Path | None, key: str) -> Path:
    """The file of `split` of the named dataset `name` in `folder`, which may be the data root
    (holding `ptb/ptb.train.txt`) or the dataset's own folder (holding `ptb.train.txt`); without a
    folder, under $EDLM_DATA_DIR. `key` names the setting when the file is in neither place."""
    relative = Path(DATASETS[name].files[split])
    if folder is None:
        return data_dir() / relative
    places = (folder / relative, folder / relative.name)
    found = next((path for path in places if path.is_file()), None)
    if found is None:
        raise DataError(f"{key}: {relative.name} not found in {folder}: give the data root (holding "
                        f"{relative}) or the {name} folder itself")
    return found


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"data.path: text file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"data.path: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _split_texts(cfg: DataConfig) -> dict[str, str]:
    """The text of each split ("train"/"val", or "all" to be split by `data.val_fraction`)."""
    given = Path(os.path.expandvars(cfg.path)).expanduser() if cfg.path else None
    entry = DATASETS[cfg.dataset]
    if not entry.files:  # `text`: the user's own file
        return {"all": _read_text(given)}
    if "train" not in entry.files and "all" not in entry.files:
        raise DataError(f"data.dataset {cfg.dataset!r} has only a test split: it is an evaluation set")
    if given is not None and given.is_file():  # e.g. data.path = the text8 file itself
        texts = {"all": _read_text(given)}
    else:
        texts = {split: _read_text(named_file(cfg.dataset, split, given, "data.path"))
                 for split in entry.files if split != "test"}
    return entry.split_all(texts["all"]) if entry.split_all else texts
