"""`results.md` of a reproduction: per setting the tables in the shape of the paper's Table 1
(likelihood) and Table 3 (generation), the figures, the three claims judged with numbers, the
exact commands and seeds, and the machine and time taken."""

from __future__ import annotations

import datetime
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edlm_dist.diffusion.likelihood import CONSISTENT, ESS_FLOOR, GUARANTEED
from edlm_dist.evaluation.perplexity import COMPANIONS
from edlm_dist.evaluation.reportable import NOT_REPORTED
from edlm_dist.reproduce.results import (
    SamplePoint,
    claim_likelihood,
    claim_same_steps,
    claim_speed,
)
from edlm_dist.reproduce.setting import Setting

CLAIMS = (
    "1. EDLM's likelihood beats MDLM's and approaches AR (Tables 1-2), judged with the tightest guaranteed bound",
    "2. at equal steps, importance sampling lowers Gen PPL without collapsing entropy (Table 3)",
    "3. EDLM reaches MDLM's quality with fewer steps, i.e. less wall-clock time (Figure 1, ~1.3x)",
)
ROW_NAMES = {"ar": "AR (exact NLL)", "mdlm": "MDLM (NELBO)", "edlm_nce": "EDLM-NCE", "edlm_ar": "EDLM-AR",
             "edlm_coar": "EDLM-coAR"}


@dataclass
class SettingReport:
    """What the report needs of one finished setting."""

    setting: Setting
    likelihood: dict[str, dict[str, Any]]
    points: list[SamplePoint]
    reference: dict[str, float]
    figures: list[Path]
    commands: list[str]
    timings: dict[str, float]
    seeds: dict[str, tuple[int, int]]  # run -> (job.seed, data.seed)


def _value(figure: dict[str, Any], unit: str) -> str:
    """A per-token figure in the table's unit with its standard error; the reason it is not
    reported (not finite, or impossible) instead of a number."""
    if NOT_REPORTED in figure:
        return f"not reported: {figure[NOT_REPORTED]}"
    nats, se = figure["nats_per_token"], figure["stderr"]
    if unit == "bpc":
        return f"{nats / math.log(2):.3f} ± {se / math.log(2):.3f}"
    ppl = math.exp(nats)
    return f"{ppl:.2f} ± {ppl * se:.2f}" if ppl < 1e5 else f"{ppl:.3g} ± {ppl * se:.3g}"


def likelihood_table(rows: dict[str, dict[str, Any]], unit: str) -> list[str]:
    """Table 1: AR and MDLM, then each EDLM's figures at 2n proposals, one row per estimator
    with what it is (guaranteed upper bound, consistent estimate, paper's estimate), its
    companion, the paired difference to MDLM, its movement from n to 2n, the ESS and whether it
    decides against MDLM."""
    lines = [f"| model | estimator | what it is | {unit.upper()} | companion | - MDLM, paired (nats/token) "
             "| 2n - n (nats/token) | ESS at 2n | against MDLM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        f = r["figures"]
        main = _value(f[r["headline"]], unit)
        if label in ("ar", "mdlm"):
            what = "exact NLL" if label == "ar" else "NELBO, upper bound"
            sign = "" if NOT_REPORTED in f[r["headline"]] else "= " if label == "ar" else "<= "
            lines.append(f"| {ROW_NAMES[label]} | | {what} | {sign}{main} | | | | | |")
            continue
        n, n2 = r["num_proposals"]
        for name, j in r["judgements"].items():
            estimator = name.rsplit("_n", 1)[0]
            companion = f[f"{estimator}_{COMPANIONS[estimator]}_n{n2}"]
            d_mdlm, d_n = r["differences"][f"{name} - mdlm_nelbo"], r["differences"][f"{name} - {estimator}_n{n}"]
            sign = "" if NOT_REPORTED in f[name] else {GUARANTEED: "<= ", CONSISTENT: "~ "}.get(j["kind"], "")
            ess = f"{j['ess']:.2f} of {n2}" if j["ess"] is not None else "(exact log Z)"
            lines.append(
                f"| {ROW_NAMES[label]} | {estimator} | {j['kind']} | {sign}{_value(f[name], unit)} "
                f"| {_value(companion, unit)} ({COMPANIONS[estimator]}) | {_difference(d_mdlm)} | {_difference(d_n)} "
                f"| {ess} | {j['verdict']} |")
    return lines


def _difference(d: dict[str, Any]) -> str:
    """A paired difference in nats/token with its standard error, or "not reported"."""
    return "not reported" if NOT_REPORTED in d else f"{d['nats_per_token']:+.4f} ± {d['stderr']:.4f}"


def _gen_ppl(nll: float, se: float) -> str:
    """Gen PPL with its one-standard-error range, exp(NLL -+ s.e.)."""
    return f"{math.exp(nll):.2f} ({math.exp(nll - se):.2f}-{math.exp(nll + se):.2f})"


def generation_table(points: list[SamplePoint], reference: dict[str, float]) -> list[str]:
    """Table 3: Gen PPL and entropy of each sampler at each step count, and the test text."""
    lines = ["| sampler | steps T | Gen PPL (± 1 s.e.) | entropy, bits | mean ESS | s / sample |",
             "|---|---|---|---|---|---|"]
    for p in points:
        ess = f"{p.mean_ess:.2f}" if p.mean_ess is not None else ""
        lines.append(f"| {p.sampler} | {p.steps} | {_gen_ppl(p.nll, p.nll_se)} "
                     f"| {p.entropy:.3f} ± {p.entropy_se:.3f} | {ess} | {p.seconds_per_sample:.3f} |")
    r = reference
    lines.append(f"| test text (reference) | | {_gen_ppl(r['nll_per_token'], r['nll_se'])} "
                 f"| {r['entropy_bits']:.3f} ± {r['entropy_se']:.3f} | | |")
    return lines


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _verdict(held: bool, detail: str) -> tuple[str, str]:
    return ("held" if held else "did not hold"), detail


def setting_section(rep: SettingReport, out: Path) -> tuple[list[str], list[str]]:
    """The markdown of one setting and each claim's status (held, did not hold, not shown)."""
    s = rep.setting
    judged = [claim_likelihood(rep.likelihood), _verdict(*claim_same_steps(rep.points)), _verdict(*claim_speed(rep.points))]
    mdlm, n = rep.likelihood["mdlm"], rep.likelihood["edlm_nce"]["num_proposals"]
    oracle = f"oracle `{s.oracle}`" if s.oracle else "oracle (a larger AR run, trained apart from the energy)"
    lines = [f"## {s.title}", "",
             f"Likelihood on `{s.eval_set}` ({mdlm['sequences']} blocks of {mdlm['seq_len']} {s.token}s, all "
             f"positions scored; ± one standard error over blocks; EDLM with n = {n[0]} and {n[1]} proposals "
             f"per estimate, the figures at {n[1]}):", "",
             *likelihood_table(rep.likelihood, s.unit), "",
             f"Generation ({s.sample['num_samples']} samples of {mdlm['seq_len']} {s.token}s per row and seed, "
             f"sampling seeds {s.sample['seeds']}; Gen PPL under the {oracle}; the range is exp(NLL ± 1 s.e.) "
             f"over samples; the reference row is as many blocks of the test text, scored the same way):", "",
             *generation_table(rep.points, rep.reference), ""]
    lines += [f"![{f.stem}]({os.path.relpath(f, out)})" for f in rep.figures] + [""]
    lines += ["Claims in this setting:", ""]
    lines += [f"- **{status}** — {claim}: {detail}" for claim, (status, detail) in zip(CLAIMS, judged)]
    stage_kinds: dict[str, float] = {}
    for stage, seconds in rep.timings.items():
        stage_kinds[stage.split()[0]] = stage_kinds.get(stage.split()[0], 0.0) + seconds
    lines += ["", "Training seeds (`job.seed` / `data.seed`): "
              + ", ".join(f"{run} {job} / {data}" for run, (job, data) in rep.seeds.items()) + "."]
    lines += ["", "Time taken: " + ", ".join(f"{kind} {_minutes(t)}" for kind, t in stage_kinds.items())
              + f"; total {_minutes(sum(rep.timings.values()))}.", "",
              "<details><summary>Exact commands of this setting</summary>", "", "```bash", *rep.commands, "```", "",
              "</details>", ""]
    return lines, [status for status, _ in judged]


def write_report(reports: list[SettingReport], out: Path, command: str) -> str:
    """The whole `results.md` text."""
    total = sum(sum(r.timings.values()) for r in reports)
    sections, verdicts = [], {}
    for rep in reports:
        text, held = setting_section(rep, out)
        sections += text
        verdicts[rep.setting.title] = held
    machine = (f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"torch {torch.__version__}")
    lines = ["# Results: the paper's three claims at small scale", "",
             "Written by `tools/reproduce.py`; do not edit by hand. How the stages run and how each claim is "
             "judged: [reproduce.md](reproduce.md); the earlier hand-run recipes: [experiments.md](experiments.md). "
             "Negative results stay in.", "",
             f"Generated {datetime.date.today().isoformat()} on {machine}; stage time {_minutes(total)} "
             f"(the sum over stages; skipped stages keep the time of the run that made them).", "",
             "```bash", command, "```", "",
             "| claim | " + " | ".join(verdicts) + " |", "|---|" + "---|" * len(verdicts)]
    for i, claim in enumerate(CLAIMS):
        lines.append(f"| {claim} | " + " | ".join(v[i] for v in verdicts.values()) + " |")
    lines += ["", "How to read the tables: every EDLM figure estimates the valid NELBO of the joint (its "
              "single-position marginals, docs/likelihood.md) and says what it is: a guaranteed upper bound (at any "
              "number of proposals), a consistent estimate (exact as the proposals grow; its jackknife-corrected "
              "companion beside it), or the paper's eq. 13 estimate, which is not a bound and can sit below the true "
              "NLL. Claim 1 is judged with the tightest guaranteed bound; where none decides, the consistent estimate "
              "is shown and the report says the estimator, not the model, decides. Differences are judged at 2 "
              f"standard errors. A consistent estimate whose mean ESS is below {ESS_FLOOR:.0%} of its proposals "
              "cannot decide; a figure that is not finite or impossible (below 0 nats) is not reported, its reason "
              "in its place. Seeds: every training run's `job.seed` and `data.seed` are in its config file (the "
              "oracle uses other seeds than the energy); sampling seeds are listed per table. Wall time is per "
              "sample on the shared CPU, so it carries the noise of other work on the machine.", "", *sections]
    return "\n".join(lines)
