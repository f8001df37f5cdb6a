"""The generation figures of one setting as PNG files (matplotlib, written atomically): Gen PPL
against denoising steps, against wall-clock time per sample, and against unigram entropy, one
line per sampler, error bars of one standard error, the real test text as a reference line,
Gen PPL on a log axis."""

from __future__ import annotations

import math
from pathlib import Path

from edlm_dist.fileio import atomic_output
from edlm_dist.reproduce.results import SamplePoint

FIGURES = {  # file suffix -> (x attribute, x label, log x)
    "gen_ppl_vs_steps": ("steps", "denoising steps", True),
    "gen_ppl_vs_time": ("seconds_per_sample", "wall-clock seconds per sample", True),
    "gen_ppl_vs_entropy": ("entropy", "unigram entropy (bits)", False),
}


def plot_generation(points: list[SamplePoint], reference: dict[str, float], title: str, folder: Path,
                    prefix: str) -> list[Path]:
    """Write the three figures as `<folder>/<prefix>_<figure>.png`; returns their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullLocator
    except ImportError:
        raise SystemExit("error: the report's plots need matplotlib: pip install -e '.[plots]'") from None
    samplers = list(dict.fromkeys(p.sampler for p in points))
    written = []
    for name, (attr, xlabel, logx) in FIGURES.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for sampler in samplers:
            mine = sorted((p for p in points if p.sampler == sampler), key=lambda p: getattr(p, attr))
            x = [getattr(p, attr) for p in mine]
            y = [p.gen_ppl for p in mine]
            err = [[p.gen_ppl - math.exp(p.nll - p.nll_se) for p in mine],
                   [math.exp(p.nll + p.nll_se) - p.gen_ppl for p in mine]]
            style = dict(color="black", linewidth=2.2) if sampler == "MDLM" else dict(linewidth=1.2, alpha=0.85)
            ax.errorbar(x, y, yerr=err, marker="o", markersize=3, capsize=2, label=sampler,
                        linestyle="-" if attr != "entropy" else "none", **style)
        ax.axhline(reference["gen_ppl"], color="grey", linestyle="--", label="test text (reference)")
        if attr == "entropy":
            ax.axvline(reference["entropy_bits"], color="grey", linestyle=":")
        if logx:
            ax.set_xscale("log")
        if attr == "steps":  # label the measured step counts themselves, not powers of ten
            steps = sorted({p.steps for p in points})
            ax.set_xticks(steps, labels=[str(s) for s in steps])
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(xlabel)
        ax.set_yscale("log")  # the samplers' spread and the far lower test text on one readable axis
        ax.set_ylabel("Gen PPL under the oracle")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = folder / f"{prefix}_{name}.png"
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        written.append(path)
    return written
