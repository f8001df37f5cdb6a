"""Per-sample oracle scores of every sampling run of a setting, for standard errors: Gen PPL is
a ratio (summed NLL over summed scored tokens), so its error comes from the per-sample values,
which the sampler's summary does not keep. Also scores the reference row: as many blocks of the
real test text (the setting's evaluation set) as there are samples, under the same oracle."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from edlm_dist.data import build_dataset
from edlm_dist.data.eval_sets import load_eval_set, parse_eval_sets
from edlm_dist.evaluation.generation import build_oracle, unigram_entropy
from edlm_dist.evaluation.reportable import impossible_reason, non_finite_reason
from edlm_dist.fileio import atomic_write_text
from edlm_dist.runs.weights import find_checkpoint


def corpus_figures(nll: torch.Tensor, counts: torch.Tensor, tokens: torch.Tensor, source: str) -> dict[str, float]:
    """Gen PPL (token-weighted) with the delta-method standard error of its log, and the mean
    unigram entropy with its standard error, of samples [N, L] from `source`; an error naming it
    where Gen PPL is not finite or impossible (no claim can be judged on it)."""
    nll, counts = nll.double(), counts.double()
    n, total = nll.numel(), float(counts.sum())
    rate = float(nll.sum()) / total
    reason = non_finite_reason(nll, "samples") or impossible_reason(rate)
    if reason:
        raise RuntimeError(f"{source}: the oracle's Gen PPL is not reported: {reason}")
    residual = nll - rate * counts
    se = math.sqrt(float((residual**2).sum()) * n / max(n - 1, 1)) / total
    bits, _ = unigram_entropy(tokens)
    return {
        "gen_ppl": math.exp(rate), "nll_per_token": rate, "nll_se": se,
        "entropy_bits": float(bits.mean()), "entropy_se": float(bits.std() / math.sqrt(n)) if n > 1 else math.nan,
        "scored_tokens": int(total), "samples": n,
    }


def read_samples(folder: Path) -> torch.Tensor:
    """The token ids of a sampling run's samples.jsonl, [N, L]."""
    lines = (folder / "samples.jsonl").read_text().splitlines()
    return torch.tensor([json.loads(line)["tokens"] for line in lines if line.strip()])


def score_setting(root: Path, oracle_spec: str, eval_set: str, names: list[str]) -> None:
    """Write `<root>/scores.json`: the reference row and the figures of each sampling run in `names`."""
    mdlm = find_checkpoint(root / "mdlm").config
    data = build_dataset(mdlm.data)
    tokenizer = data.tokenizer
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    oracle = build_oracle(oracle_spec, device, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id,
                          tokenizer=tokenizer)
    runs: dict[str, Any] = {}
    for name in names:
        folder = root / "samples" / name
        tokens = read_samples(folder)
        figures = corpus_figures(*oracle.score(tokens), tokens, str(folder))
        logged = json.loads((folder / "summary.json").read_text())["gen_ppl"]["gen_ppl"]
        if not math.isclose(figures["gen_ppl"], logged, rel_tol=1e-6):
            raise RuntimeError(f"{folder}: rescored Gen PPL {figures['gen_ppl']:.6g} != the sampler's {logged:.6g}")
        runs[name] = figures
    n = max(f["samples"] for f in runs.values())
    blocks = load_eval_set(parse_eval_sets(eval_set)[0], tokenizer, mdlm, data.blocks)
    reference = blocks.blocks(0, min(n, len(blocks)))
    scores = {"reference": corpus_figures(*oracle.score(reference), reference, f"the reference row ({eval_set})"),
              "runs": runs}
    atomic_write_text(root / "scores.json", json.dumps(scores, indent=2) + "\n")


def scores_done(root: Path, names: list[str]) -> bool:
    """Whether `<root>/scores.json` holds every run of `names`."""
    path = root / "scores.json"
    return path.is_file() and set(names) <= set(json.loads(path.read_text())["runs"])
