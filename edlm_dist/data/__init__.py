"""Data: tokenizers and document sources, the prepared-corpus format, datasets by name and
their training loaders, evaluation sets."""

from edlm_dist.data.batches import Batch, BatchPlan
from edlm_dist.data.dataset import BlockSource, Dataset
from edlm_dist.data.datasets import DATASETS, DatasetEntry, build_dataset, run_tokenizer
from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.loaders import TrainLoader

from edlm_dist.data.synthetic import (
    MarkovSource,
    SyntheticBlocks,
    SyntheticTokenizer,
    is_primitive,
    syllable,
)
from edlm_dist.data.text import TextBlocks
from edlm_dist.data.tokenizers import (
    CharTokenizer,
    GPT2Tokenizer,
    HFTokenizer,
    Tokenizer,
    TokenizerError,
    WordTokenizer,
    build_tokenizer,
    check_same_token_ids,
    tokenizer_from_dict,
)

__all__ = [
    "Batch",
    "BatchPlan",
    "BlockSource",
    "DATASETS",
    "DatasetEntry",
    "DataError",
    "Dataset",
    "SkipCounter",
    "TextBlocks",
    "TrainLoader",
    "build_dataset",
    "run_tokenizer",
    "CharTokenizer",
    "GPT2Tokenizer",
    "HFTokenizer",
    "MarkovSource",
    "SyntheticBlocks",
    "SyntheticTokenizer",
    "Tokenizer",
    "TokenizerError",
    "WordTokenizer",
    "build_tokenizer",
    "check_same_token_ids",
    "is_primitive",
    "syllable",
    "tokenizer_from_dict",
]
