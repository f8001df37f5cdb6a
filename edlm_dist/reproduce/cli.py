"""`python tools/reproduce.py`: train, evaluate and sample every setting, then write the report
(`results.md` and PNG figures). Resumable: each stage is skipped once its output exists."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from edlm_dist.fileio import atomic_write_text
from edlm_dist.reproduce.plots import plot_generation
from edlm_dist.reproduce.report import SettingReport, write_report
from edlm_dist.reproduce.results import generation_points, likelihood_rows, reference_row
from edlm_dist.reproduce.scoring import score_setting, scores_done
from edlm_dist.reproduce.setting import Setting, SettingError, load_setting
from edlm_dist.reproduce.stages import Stage, Timings, plan, run_stages, sample_name, sample_points
from edlm_dist.runs.weights import find_checkpoint

REPO = Path(__file__).resolve().parents[2]
CPU_SETTINGS = "shakespeare,ptb"


def stages_of(setting: Setting, root: Path, progress: bool) -> list[Stage]:
    """The stages of `setting` under `root`, the last one scoring the samples with the oracle."""
    names = [sample_name(*point) for point in sample_points(setting)]
    oracle = setting.oracle or str(root / "oracle")
    return plan(setting, root, REPO,
                score=lambda: score_setting(root, oracle, setting.eval_set, names),
                score_done=lambda: scores_done(root, names), progress=progress)


def reproduce(setting: Setting, root: Path, out: Path, progress: bool) -> SettingReport:
    """Run what is missing of `setting`, then read its figures back and draw its plots."""
    stages = stages_of(setting, root, progress)
    timings = Timings(root / "timings.json")
    run_stages(stages, timings, setting.name, progress)
    points = generation_points(root, setting)
    reference = reference_row(root)
    figures = plot_generation(points, reference, setting.title, out / "figures", setting.name)
    seeds = {}
    for run in setting.runs:
        cfg = find_checkpoint(root / run).config
        seeds[run] = (cfg.job.seed, cfg.data.seed)
    return SettingReport(setting, likelihood_rows(root, setting), points, reference, figures,
                         [stage.command(REPO) for stage in stages if stage.module], timings.seconds, seeds)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--setting", default=CPU_SETTINGS,
                        help=f"comma-separated settings of configs/reproduce/ (default {CPU_SETTINGS}; "
                             "also wikitext2, owt)")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-scale sizes (configs/reproduce/smoke.toml); needs --out")
    parser.add_argument("--out", help="folder of results.md and figures/ (default docs/)")
    parser.add_argument("--runs", help="folder of the runs (default runs/reproduce, or <out>/runs with --smoke)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.smoke and not args.out:
        parser.error("--smoke writes a throw-away report: give --out (docs/ is for the real run)")
    out = Path(args.out) if args.out else REPO / "docs"
    runs = Path(args.runs) if args.runs else (out / "runs" if args.smoke else REPO / "runs" / "reproduce")
    smoke = REPO / "configs" / "reproduce" / "smoke.toml" if args.smoke else None
    try:
        settings = [load_setting(REPO / "configs" / "reproduce" / f"{name.strip()}.toml", REPO, smoke)
                    for name in args.setting.split(",") if name.strip()]
    except SettingError as err:
        raise SystemExit(f"error: {err}") from None
    reports = [reproduce(s, runs.resolve() / s.name, out, not args.no_progress) for s in settings]
    command = "python tools/reproduce.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(out / "results.md", write_report(reports, out, command.strip()) + "\n")
    print(f"wrote {out / 'results.md'} and {sum(len(r.figures) for r in reports)} figures", file=sys.stderr)
