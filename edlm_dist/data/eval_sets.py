"""Held-out likelihood sets by name, cut into blocks with the MDLM paper's conventions.

A set is a token stream (each document or line, detokenised, then tokenised and followed by
EOS) cut into consecutive blocks `[EOS, w_1 .. w_{L-2}, EOS]`; the tail that does not fill a
block is dropped, and every one of the L positions is scored (docs/evaluation.md). Names, with
an optional `:split` and `=path` (`ptb:test`, `files=s3://bucket/corpus`):

- `wikitext2`, `ptb`, `lambada`: the files under `$EDLM_DATA_DIR` (or `=path`: the data root or
  the set's own folder); with the GPT-2 tokenizer the MDLM detokenisers are applied (a character-
  or word-level model reads the text as is).
- `openwebtext`, `files`: the validation token shards of a prepared corpus (`=path`; without
  one, the corpus the evaluated run trained on).
- `val`: the evaluated run's own validation split (for the synthetic source: the blocks its
  trainer validates on, continued with further validation blocks when more are asked for).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edlm_dist.config import TrainProgram
from edlm_dist.data.dataset import BlockSource
from edlm_dist.data.datasets import DATASETS, build_dataset, named_file
from edlm_dist.data.errors import DataError
from edlm_dist.data.corpus_reader import TokenCorpus
from edlm_dist.data.text import TextBlocks
from edlm_dist.data.tokenizers import GPT2Tokenizer, Tokenizer

# The split each set is scored on when none is named (`DatasetEntry.eval_split`): the choice of
# the MDLM reference code (validation where a set has one, LAMBADA's only split otherwise).
DEFAULT_SPLITS = {**{name: e.eval_split for name, e in DATASETS.items() if e.eval_split}, "val": "val"}
_SPEC = re.compile(r"^(?P<name>[a-z0-9_]+)(?::(?P<split>[a-z0-9]+))?(?:=(?P<path>.+))?$")


@dataclass(frozen=True)
class EvalSetSpec:
    name: str
    split: str
    path: str = ""

    @property
    def label(self) -> str:
        """How results name the set: `name:split`."""
        return f"{self.name}:{self.split}"

    @property
    def folder(self) -> str:
        """Where results of the set go: `<name>_<split>` (result folder and TensorBoard tag)."""
        return f"{self.name}_{self.split}"


def parse_eval_sets(text: str, key: str = "eval.datasets") -> list[EvalSetSpec]:
    """The comma-separated set names of `text`, each checked (unknown names and splits are errors)."""
    specs = []
    for item in (part.strip() for part in text.split(",")):
        match = _SPEC.match(item)
        if not match or match["name"] not in DEFAULT_SPLITS:
            raise DataError(f"{key}: unknown evaluation set {item!r} (known: {', '.join(DEFAULT_SPLITS)})")
        split = match["split"] or DEFAULT_SPLITS[match["name"]]
        entry = DATASETS.get(match["name"])
        known = entry.files if entry is not None and entry.files else {"val": ""}
        if split not in known:
            raise DataError(f"{key}: {match['name']} has no split {split!r} (has {', '.join(known)})")
        specs.append(EvalSetSpec(match["name"], split, match["path"] or ""))
    if not specs:
        raise DataError(f"{key} names no evaluation set")
    return specs


class EvalSet:
    """Blocks [EOS, stream window, EOS] of one token stream: block i holds stream tokens
    [i (L - 2), (i + 1)(L - 2)). A pure function of the index, so any rank reads any block."""

    def __init__(self, label: str, stream: torch.Tensor | TokenCorpus, seq_len: int, eos_id: int,
                 documents: int | None = None) -> None:
        self.label, self.stream, self.seq_len, self.eos_id = label, stream, seq_len, eos_id
        self.window = seq_len - 2
        self.documents = documents
        if len(self) == 0:
            raise DataError(f"evaluation set {label}: {len(stream)} tokens, too few for one block of {seq_len}")

    def __len__(self) -> int:
        return len(self.stream) // self.window

    def blocks(self, start: int, stop: int) -> torch.Tensor:
        """Blocks [start, stop) as a long tensor [stop - start, seq_len]."""
        if isinstance(self.stream, torch.Tensor):
            inside = self.stream[start * self.window: stop * self.window]
        else:
            inside = torch.from_numpy(self.stream.read(start * self.window, stop * self.window).astype(np.int64))
        eos = torch.full((stop - start, 1), self.eos_id, dtype=torch.long)
        return torch.cat((eos, inside.view(stop - start, self.window), eos), dim=1)


class FixedBlocks:
    """A set given as its blocks (the synthetic source's validation blocks)."""

    def __init__(self, label: str, blocks: torch.Tensor) -> None:
        self.label, self._blocks, self.documents = label, blocks, None
        self.seq_len = blocks.shape[1]

    def __len__(self) -> int:
        return self._blocks.shape[0]

    def blocks(self, start: int, stop: int) -> torch.Tensor:
        return self._blocks[start:stop]


def _records(spec: EvalSetSpec, folder: Path | None) -> list[str]:
    """The documents of a named set in `folder` (None: $EDLM_DATA_DIR), as the MDLM reference reads
    them: WikiText lines (empty ones too), PTB sentences (stripped), LAMBADA passages."""
    path = named_file(spec.name, spec.split, folder, f"evaluation set {spec.label}")
    if not path.is_file():
        raise DataError(f"evaluation set {spec.label}: file not found: {path}")
    try:
        return DATASETS[spec.name].records(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"evaluation set {spec.label}: {path} is not UTF-8 ({err.reason} at byte {err.start})") from None
    except ValueError as err:
        raise DataError(f"evaluation set {spec.label}: {path} is {err}") from None


def named_stream(spec: EvalSetSpec, tokenizer: Tokenizer, folder: Path | None) -> tuple[torch.Tensor, int]:
    """The token stream of a named set (documents each followed by EOS) and its document count."""
    records = _records(spec, folder)
    detokenize = DATASETS[spec.name].detokenize
    if isinstance(tokenizer, GPT2Tokenizer) and detokenize is not None:
        records = [detokenize(r) for r in records]
    ids: list[int] = []
    for record in records:
        ids += tokenizer.encode(record)
        ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.long), len(records)


def load_eval_set(
    spec: EvalSetSpec, tokenizer: Tokenizer, run: TrainProgram, blocks: BlockSource | None = None, sequences: int = 0,
) -> EvalSet | FixedBlocks:
    """The blocks of `spec` for a model of the run `run` (its tokenizer and sequence length);
    `blocks` is the run's own block source when the caller has built it already (for `val`).
    `sequences` is how many blocks are wanted: a finite set has what it has, the synthetic `val`
    is made at least that long (`synthetic_val`)."""
    data = run.data
    entry = DATASETS.get(spec.name)
    if entry is not None and entry.files:  # a named text set
        folder = Path(os.path.expandvars(spec.path)).expanduser() if spec.path else None
        stream, documents = named_stream(spec, tokenizer, folder)
        return EvalSet(spec.label, stream, data.seq_len, tokenizer.eos_id, documents)
    prepared = DATASETS[data.dataset].prepared
    if spec.name != "val" and not (spec.path or prepared):
        raise DataError(f"evaluation set {spec.name} needs a prepared corpus: write {spec.name}=<folder or URL>")
    if spec.path or prepared:
        corpus = TokenCorpus(os.path.expandvars(spec.path or data.path), "val")
        if corpus.manifest.tokenizer["fingerprint"] != tokenizer.fingerprint():
            raise DataError(f"evaluation set {spec.label}: {corpus.folder} was tokenised with another tokenizer than the model's")
        return EvalSet(spec.label, corpus, data.seq_len, corpus.eos_id, corpus.documents)
    if data.dataset == "synthetic" and data.tokenizer != "synthetic":
        raise DataError(f"evaluation set {spec.label}: the run has no validation data of its own (an imported model's "
                        f"config names none, data.tokenizer = {data.tokenizer!r}): name a set in eval.datasets, e.g. "
                        "wikitext2, ptb, lambada or files=<prepared corpus>")
    blocks = blocks or build_dataset(data).blocks
    if isinstance(blocks, TextBlocks):
        return EvalSet(spec.label, blocks.splits["val"], data.seq_len, tokenizer.eos_id)
    return synthetic_val(spec.label, blocks, run, sequences)


def synthetic_val(label: str, blocks: BlockSource, run: TrainProgram, sequences: int) -> FixedBlocks:
    """The synthetic source's validation blocks: the eval_batches x eval_batch_size blocks its
    trainer validates on, followed by as many further validation batches as `sequences` needs
    (the first blocks, and so the figures of fewer sequences, never change)."""
    size = run.metrics.eval_batch_size
    batches = max(run.metrics.eval_batches, -(-sequences // size))
    return FixedBlocks(label, torch.cat([blocks.batch("val", i, size) for i in range(batches)]))
