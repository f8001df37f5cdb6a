"""Generation and its evaluation: the sharded sampler (`Sampler`) and generation quality
(Gen PPL under an oracle LM, unigram entropy)."""

from edlm_dist.evaluation.generation import (
    HFOracle,
    Oracle,
    OracleError,
    ProjectAROracle,
    build_oracle,
    gen_ppl,
    scored_span,
    unigram_entropy,
)
from edlm_dist.evaluation.sampler import Sampler

__all__ = [
    "HFOracle",
    "Oracle",
    "OracleError",
    "ProjectAROracle",
    "Sampler",
    "build_oracle",
    "gen_ppl",
    "scored_span",
    "unigram_entropy",
]
