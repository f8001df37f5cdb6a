"""The end-of-run summary of a training run (summary.json) and its console report."""

from __future__ import annotations

import math
from typing import Any

from edlm_dist.data import BlockSource


def run_summary(step: int, task: str, val: dict[str, float], headline: str, reference: BlockSource | None,
                skipped_steps: int, samples: list[str]) -> dict[str, Any]:
    """The final validation figures; for a model of the data (`reference`: its block source) also
    its NELBO or NLL against the data's entropy floor and unigram baseline; the samples."""
    summary: dict[str, Any] = {"step": step, "task": task, "val": val}
    if reference is not None:
        nll, floor, unigram = val[headline], reference.entropy_per_token(), reference.unigram_nll_per_token()
        summary.update({
            "val_nll_per_token": nll,
            "entropy_floor_per_token": floor,
            "unigram_nll_per_token": unigram,
            "gap_closed": (unigram - nll) / (unigram - floor) if math.isfinite(floor) else None,
        })
    summary["skipped_steps"] = skipped_steps
    summary["samples"] = samples
    return summary


def format_report(summary: dict[str, Any]) -> str:
    """The end-of-run figures and samples, as printed on the console."""
    if "val_nll_per_token" in summary:
        bound = "validation NELBO" if summary["task"] == "mdlm" else "validation NLL"
        figures = [
            (bound, summary["val_nll_per_token"]),
            ("entropy floor", summary["entropy_floor_per_token"]),
            ("unigram (context-free)", summary["unigram_nll_per_token"]),
        ]
        lines = [f"{name + ':':<26}{value:.4f} nats/token" for name, value in figures if math.isfinite(value)]
    else:
        lines = [f"{'validation ' + name + ':':<36}{value:.4f}" for name, value in summary["val"].items()]
    if summary.get("gap_closed") is not None:
        lines.append(f"{'gap closed:':<26}{100 * summary['gap_closed']:.1f}% of unigram -> floor")
    lines.append("samples:")
    lines += [f"  [{i}] " + text.strip().replace("\n", " | ") for i, text in enumerate(summary["samples"])]
    return "\n".join(lines)
