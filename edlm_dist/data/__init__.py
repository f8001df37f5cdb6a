"""Data: tokenizers and the embedded synthetic Markov corpus."""

from edlm_dist.data.synthetic import (
    MarkovSource,
    SyntheticBlocks,
    SyntheticTokenizer,
    is_primitive,
    syllable,
)
from edlm_dist.data.tokenizers import (
    CharTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    TokenizerError,
    build_tokenizer,
    tokenizer_from_dict,
)

__all__ = [
    "CharTokenizer",
    "GPT2Tokenizer",
    "MarkovSource",
    "SyntheticBlocks",
    "SyntheticTokenizer",
    "Tokenizer",
    "TokenizerError",
    "build_tokenizer",
    "is_primitive",
    "syllable",
    "tokenizer_from_dict",
]
