"""Datasets by name: a tokenizer plus a source of fixed-length blocks, built from `[data]`.

- `synthetic`: the embedded Markov corpus (closed-form entropy figures).
- `text`: one UTF-8 file in memory, its tail held out for validation.
- `wikitext2`, `ptb`, `tiny_shakespeare`, `text8`: the real files under `$EDLM_DATA_DIR`
  (or `data.path`: the data root or the dataset's own folder, see `named_file`), with their own
  train/validation splits where they ship them.
- `files`, `openwebtext`: a corpus prepared by `tools/prepare_data.py` (`data.path`, a folder or
  an fsspec URL), streamed from its shards.
`lambada` ships a test split only: it is an evaluation set, not a training set.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from edlm_dist.config import DataConfig
from edlm_dist.data.errors import DataError
from edlm_dist.data.dataset import Dataset
from edlm_dist.data.prepared import prepared_dataset
from edlm_dist.data.synthetic import MarkovSource, SyntheticBlocks, SyntheticTokenizer
from edlm_dist.data.text import TextBlocks
from edlm_dist.data.tokenizers import Tokenizer, build_tokenizer

# Files of the named text datasets inside $EDLM_DATA_DIR (see shared/data/MANIFEST.txt).
NAMED_FILES: dict[str, dict[str, str]] = {
    "wikitext2": {"train": "wikitext2/wiki.train.tokens", "val": "wikitext2/wiki.valid.tokens",
                  "test": "wikitext2/wiki.test.tokens"},
    "ptb": {"train": "ptb/ptb.train.txt", "val": "ptb/ptb.valid.txt", "test": "ptb/ptb.test.txt"},
    "tiny_shakespeare": {"all": "tiny_shakespeare/input.txt"},
    "lambada": {"test": "lambada/lambada_test.jsonl"},
    "text8": {"all": "text8/text8"},
}
TEXT8_SPLIT = (90_000_000, 95_000_000)  # the standard text8 split: 90M / 5M / 5M characters


def build_dataset(cfg: DataConfig) -> Dataset:
    """The tokenizer and block source that `cfg` names."""
    if cfg.dataset == "synthetic":
        if cfg.tokenizer != "synthetic":
            raise DataError(f"data.dataset = 'synthetic' needs data.tokenizer = 'synthetic', got {cfg.tokenizer!r}")
        source = MarkovSource(
            cfg.synthetic_states, cfg.synthetic_branching, cfg.synthetic_concentration, cfg.seed
        )
        tokenizer = SyntheticTokenizer(source)
        return Dataset(tokenizer, SyntheticBlocks(source, cfg.seq_len, cfg.seed), tokenizer.fingerprint())
    if cfg.tokenizer == "synthetic":
        raise DataError("data.tokenizer = 'synthetic' only works with data.dataset = 'synthetic'")
    if cfg.dataset in ("files", "openwebtext"):
        return prepared_dataset(cfg)
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


def run_tokenizer(cfg: DataConfig) -> Tokenizer:
    """The tokenizer of a run's data; GPT-2's without reading the corpus, which sampling and
    zero-shot evaluation do not need (a run imported from MDLM has none prepared here)."""
    if cfg.tokenizer == "gpt2":
        return build_tokenizer("gpt2", cfg.tokenizer_path)
    return build_dataset(cfg).tokenizer


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
    relative = Path(NAMED_FILES[name][split])
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
    if cfg.dataset == "text":
        return {"all": _read_text(given)}
    files = NAMED_FILES[cfg.dataset]
    if "train" not in files and "all" not in files:
        raise DataError(f"data.dataset {cfg.dataset!r} has only a test split: it is an evaluation set")
    if given is not None and given.is_file():  # e.g. data.path = the text8 file itself
        texts = {"all": _read_text(given)}
    else:
        texts = {split: _read_text(named_file(cfg.dataset, split, given, "data.path"))
                 for split in files if split != "test"}
    if cfg.dataset == "text8":
        train_end, val_end = TEXT8_SPLIT
        return {"train": texts["all"][:train_end], "val": texts["all"][train_end:val_end]}
    return texts
