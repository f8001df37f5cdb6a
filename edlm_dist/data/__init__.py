"""Data: tokenizers, the embedded synthetic Markov corpus, and block sources by name."""

from edlm_dist.data.dataset import BlockSource, Dataset
from edlm_dist.data.datasets import build_dataset, run_tokenizer
from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.pipeline import TrainStream, build_train_stream

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
    Tokenizer,
    TokenizerError,
    WordTokenizer,
    build_tokenizer,
    tokenizer_from_dict,
)

__all__ = [
    "BlockSource",
    "DataError",
    "Dataset",
    "SkipCounter",
    "TextBlocks",
    "TrainStream",
    "build_dataset",
    "run_tokenizer",
    "build_train_stream",
    "CharTokenizer",
    "GPT2Tokenizer",
    "MarkovSource",
    "SyntheticBlocks",
    "SyntheticTokenizer",
    "Tokenizer",
    "TokenizerError",
    "WordTokenizer",
    "build_tokenizer",
    "is_primitive",
    "syllable",
    "tokenizer_from_dict",
]
