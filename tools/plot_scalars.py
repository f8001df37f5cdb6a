"""Plot TensorBoard scalars of one or more runs, one panel per tag, into an image file.

    python tools/plot_scalars.py --out docs/figures/recipe.png \\
        runs/shakespeare_mdlm:val/nelbo_per_token runs/shakespeare_nce:val/accuracy,val/accuracy_t_ge_0.5

Each positional argument is RUN_FOLDER:TAG[,TAG...]; the tags of one run share its panel row.
Needs matplotlib (the `[plots]` extra). The image is written atomically; an existing one is
replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edlm_dist.config import exit_on_user_error
from edlm_dist.fileio import atomic_output, refuse_existing


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder's `tb/` events: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def parse_panel(spec: str) -> tuple[Path, list[str]]:
    run, sep, tags = spec.rpartition(":")
    if not sep or not run or not tags:
        raise SystemExit(f"error: {spec!r} is not RUN_FOLDER:TAG[,TAG...]")
    return Path(run), tags.split(",")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("panels", nargs="+", help="RUN_FOLDER:TAG[,TAG...]")
    parser.add_argument("--out", required=True, help="image file (.png, .svg, .pdf)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out image")
    args = parser.parse_args(argv)
    refuse_existing([args.out], args.overwrite)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: plotting needs matplotlib: pip install -e '.[plots]'") from None
    panels = [parse_panel(spec) for spec in args.panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (run, tags) in zip(axes[0], panels):
        if not (run / "tb").is_dir():
            raise SystemExit(f"error: no TensorBoard folder {run / 'tb'}")
        scalars = read_scalars(run)
        for tag in tags:
            if tag not in scalars:
                raise SystemExit(f"error: {run} has no scalar {tag!r} (it has {', '.join(sorted(scalars))})")
            steps, values = zip(*scalars[tag])
            ax.plot(steps, values, marker="o", markersize=3, label=tag)
        ax.set_title(run.name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
