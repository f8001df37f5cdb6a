"""Evaluation: likelihood (per-token NELBO / NLL, EDLM bound and paper estimate) one-shot or as a
service beside training, and generation (the sharded `Sampler`, Gen PPL, unigram entropy)."""

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
from edlm_dist.evaluation.perplexity import (
    EvalModel,
    LikelihoodEvaluator,
    build_eval_model,
    checkpoints_to_evaluate,
    format_result,
    model_label,
)
from edlm_dist.evaluation.sampler import Sampler
from edlm_dist.evaluation.service import EvalService

__all__ = [
    "EvalModel",
    "EvalService",
    "LikelihoodEvaluator",
    "build_eval_model",
    "checkpoints_to_evaluate",
    "format_result",
    "model_label",
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
