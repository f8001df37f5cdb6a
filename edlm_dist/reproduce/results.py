"""The figures of one finished setting, read back from its run folder: Table 1 (likelihood, from
the evaluation JSONs), Table 3 (generation, from the sampling summaries and `scores.json`) and
the three claims of the paper judged on them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edlm_dist.diffusion.likelihood import CONSISTENT, GUARANTEED, PAPER
from edlm_dist.evaluation.perplexity import COMPANIONS, STATS, cannot_decide
from edlm_dist.evaluation.reportable import NOT_REPORTED, impossible_reason
from edlm_dist.reproduce.setting import Setting
from edlm_dist.reproduce.stages import EVAL_MODELS, likelihood_folder, sample_name, sampler_configs

Z = 2.0  # a difference counts when it exceeds Z standard errors
ENERGY_NAMES = {"nce": "EDLM-NCE", "ar": "EDLM-AR", "coar": "EDLM-coAR"}
EDLM_NAMES = {f"edlm_{energy}": name for energy, name in ENERGY_NAMES.items()}  # evaluation label -> name


@dataclass
class SamplePoint:
    """One sampler configuration at one step count (its seeds pooled by their mean)."""

    sampler: str  # "MDLM" or e.g. "EDLM-NCE k=4 w=1"
    steps: int
    gen_ppl: float
    nll: float
    nll_se: float
    entropy: float
    entropy_se: float
    seconds_per_sample: float
    mean_ess: float | None


def likelihood_rows(root: Path, setting: Setting) -> dict[str, dict[str, Any]]:
    """The evaluation JSON of each Table 1 model (label -> result)."""
    rows = {}
    for label in EVAL_MODELS:
        files = sorted(likelihood_folder(root, setting, label).glob("step_*.json"))
        if not files:
            raise FileNotFoundError(f"no evaluation of {label} under {root / 'likelihood'}")
        rows[label] = screened(json.loads(files[-1].read_text()))
    return rows


def _screened_figure(figure: dict[str, Any]) -> dict[str, Any]:
    """A figure of an evaluation JSON, withheld (None, with the reason) when its value is not
    finite or impossible, as the evaluation does now."""
    if NOT_REPORTED in figure:
        return figure
    reason = impossible_reason(figure["nats_per_token"])
    if reason is None:
        se = figure["stderr"]
        return {**figure, "stderr": se if se is not None and math.isfinite(se) else None}
    return {**figure, **dict.fromkeys(STATS), NOT_REPORTED: reason}


def screened(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation result as the current rules report it, also one written before them (a
    stage skipped because its JSON exists): figures that are not finite or impossible withheld,
    with the differences to them, and every judgement that cannot decide (a withheld figure, a
    consistent estimate below the ESS floor) saying so. Judgements that can decide are kept."""
    figures = {name: _screened_figure(f) for name, f in result["figures"].items()}
    if "judgements" not in result:
        return {**result, "figures": figures}
    differences = {}
    for name, d in result["differences"].items():
        withheld = [part for part in name.split(" - ") if NOT_REPORTED in figures[part]]
        differences[name] = ({"nats_per_token": None, "stderr": None,
                              NOT_REPORTED: f"{withheld[0]} {figures[withheld[0]][NOT_REPORTED]}"} if withheld else d)
    n, n2 = result["num_proposals"]
    judgements = {}
    for name, j in result["judgements"].items():
        estimator = name.rsplit("_n", 1)[0]
        companion = figures[f"{estimator}_{COMPANIONS[estimator]}_n{n2}"]
        excluded = cannot_decide(j["kind"], differences[f"{name} - mdlm_nelbo"],
                                 differences[f"{name} - {estimator}_n{n}"], companion, j["ess"], n2)
        judgements[name] = j if excluded is None else {"kind": j["kind"], "ess": j["ess"], **excluded}
    return {**result, "figures": figures, "differences": differences, "judgements": judgements}


def sampler_label(energy: str, k: int, window: float) -> str:
    """The row name of a sampler: "MDLM" or e.g. "EDLM-AR k=4 w=0.2"."""
    return "MDLM" if energy == "mdlm" else f"{ENERGY_NAMES[energy]} k={k} w={window:g}"


def generation_points(root: Path, setting: Setting) -> list[SamplePoint]:
    """Every (sampler, steps) of the grid, seeds averaged (standard errors combined as for a mean)."""
    scores = json.loads((root / "scores.json").read_text())["runs"]
    s = setting.sample
    points = []
    for energy, k, window in sampler_configs(setting):
        for steps in s["steps"]:
            names = [sample_name(energy, k, window, steps, seed) for seed in s["seeds"]]
            figs = [scores[n] for n in names]
            summaries = [json.loads((root / "samples" / n / "summary.json").read_text()) for n in names]
            m = len(figs)
            nll = sum(f["nll_per_token"] for f in figs) / m
            ess = [x["mean_ess"] for x in summaries if x.get("mean_ess") is not None]
            points.append(SamplePoint(
                sampler_label(energy, k, window), steps, math.exp(nll), nll,
                math.sqrt(sum(f["nll_se"] ** 2 for f in figs)) / m,
                sum(f["entropy_bits"] for f in figs) / m, math.sqrt(sum(f["entropy_se"] ** 2 for f in figs)) / m,
                sum(x["wall_time_per_sample_s"] for x in summaries) / m, sum(ess) / len(ess) if ess else None,
            ))
    return points


def reference_row(root: Path) -> dict[str, float]:
    """Gen PPL and entropy of the test text (the reference row)."""
    return json.loads((root / "scores.json").read_text())["reference"]


def not_worse(p: SamplePoint, q: SamplePoint) -> bool:
    """Whether p's Gen PPL is not above q's by more than Z standard errors (independent samples)."""
    return p.nll - q.nll <= Z * math.hypot(p.nll_se, q.nll_se)


def _figure_text(r: dict[str, Any], name: str) -> str:
    """`<estimator> - MDLM = d ± se nats/token: <verdict> (<reason>)` for the figure `name` of `r`
    (without the difference when it is not reported: the reason says why)."""
    d, j = r["differences"][f"{name} - mdlm_nelbo"], r["judgements"][name]
    versus = "" if NOT_REPORTED in d else f" - MDLM = {d['nats_per_token']:+.4f} ± {d['stderr']:.4f} nats/token"
    return f"{name.rsplit('_n', 1)[0]}{versus}: {j['verdict']} ({j['reason']})"


def _nats(r: dict[str, Any], name: str) -> float | None:
    """The per-token figure `name` of `r`, None when it is not reported."""
    return r["figures"][name]["nats_per_token"]


def _bound_effect(r: dict[str, Any], name: str) -> str:
    """Why coAR's guaranteed bound `name` stays above MDLM: the bound still moving with n (the
    estimator) or not (the coAR joint, which reads no unmasked token right of a position)."""
    diff = r["differences"][f"{name} - mdlm_nelbo"]["nats_per_token"]
    n = r["num_proposals"][0]
    movement = r["differences"][f"{name} - {name.rsplit('_n', 1)[0]}_n{n}"]
    if NOT_REPORTED in movement:
        return f"its movement from n to 2n is not reported ({movement[NOT_REPORTED]}): the estimator keeps it open"
    moved = movement["nats_per_token"]
    if diff > 0 and abs(moved) < diff / 2:
        return (f"the bound moved only {moved:+.4f} from n to 2n, so its gap above MDLM is the coAR joint's (it reads "
                "no unmasked token to the right of a position), not the estimator's")
    return f"the bound still moves by {moved:+.4f} from n to 2n: the estimator keeps it above MDLM"


def claim_likelihood(rows: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """Claim 1, per EDLM: judged by its tightest guaranteed upper bound (below MDLM's NELBO
    beyond Z s.e.: held), with the consistent estimate beside it and the paper's estimate for
    reference. "held" when a guaranteed bound shows it for some EDLM; "did not hold" when every
    EDLM's consistent estimate decides above MDLM; otherwise "not shown", saying for each EDLM
    whether the estimator (its ESS among it) or the noise leaves it open. A figure that is not
    reported (not finite, or impossible) is named with its reason, never compared."""
    mdlm, ar = _nats(rows["mdlm"], "nelbo"), _nats(rows["ar"], "nll")
    if mdlm is None:
        return "not shown", f"MDLM's NELBO is not reported: {rows['mdlm']['figures']['nelbo'][NOT_REPORTED]}"
    parts, held, above = [], False, True
    for label, name in EDLM_NAMES.items():
        r = rows[label]
        judged = r["judgements"]
        bounds = [n for n, j in judged.items() if j["kind"] == GUARANTEED]
        consistent = next((n for n, j in judged.items() if j["kind"] == CONSISTENT), None)
        paper = next(n for n, j in judged.items() if j["kind"] == PAPER)
        texts, decided, by_estimator = [], False, False
        if bounds:
            reported = [n for n in bounds if _nats(r, n) is not None]
            tight = min(reported, key=lambda n: _nats(r, n)) if reported else bounds[0]
            texts.append("tightest guaranteed bound, " + _figure_text(r, tight))
            if judged[tight]["decides"]:
                held = decided = True
                if ar is not None and mdlm != ar:
                    texts.append(f"{100 * (mdlm - _nats(r, tight)) / (mdlm - ar):.0f}% of the MDLM-to-AR gap closed")
            elif reported:
                texts.append(_bound_effect(r, tight))
                by_estimator = "estimator keeps" in texts[-1]
        else:
            texts.append("no guaranteed bound for this energy (its log Z must be estimated)")
        if consistent is not None:
            texts.append("consistent estimate, " + _figure_text(r, consistent))
            above &= judged[consistent]["verdict"] == "above MDLM"
            decided |= judged[consistent]["decides"]
            by_estimator |= judged[consistent]["limited_by"] in ("estimator", "ess")
        else:
            above = False
        if not decided and by_estimator:
            texts.append("the estimator, not the model, decides here")
        texts.append(_paper_text(r, paper, ar))
        parts.append(f"{name}: " + "; ".join(texts))
    status = "held" if held else "did not hold" if above else "not shown"
    return status, ". ".join(parts)


def _paper_text(r: dict[str, Any], paper: str, ar: float | None) -> str:
    """The paper's estimate against MDLM, flagged when below the AR model's exact NLL or exact
    itself (coAR: the AR model's NLL of the masked tokens, log Z = 0); its reason when withheld."""
    estimate = _nats(r, paper)
    if estimate is None:
        return f"the paper's estimate (not a bound) is not reported: {r['figures'][paper][NOT_REPORTED]}"
    exact = r["judgements"][paper]["ess"] is None  # coAR: no proposals drawn
    flags = [text for text, hit in (("below the AR model's exact NLL", ar is not None and estimate < ar and not exact),
                                    ("exact here: the AR model's NLL of the masked tokens (log Z = 0)", exact)) if hit]
    d = r["differences"][f"{paper} - mdlm_nelbo"]
    return (f"the paper's estimate (not a bound) - MDLM = {d['nats_per_token']:+.4f} ± {d['stderr']:.4f}"
            + (f", the estimate itself {' and '.join(flags)}" if flags else ""))


def claim_same_steps(points: list[SamplePoint], entropy_tolerance: float = 0.02) -> tuple[bool, str]:
    """Claim 2: at equal steps, an EDLM configuration (the best of the grid; every one is listed)
    lowers Gen PPL beyond Z s.e. without losing more than `entropy_tolerance` of MDLM's entropy,
    at a majority of the step counts."""
    mdlm = {p.steps: p for p in points if p.sampler == "MDLM"}
    edlm = [p for p in points if p.sampler != "MDLM"]
    wins, parts = 0, []
    for label in sorted({p.sampler for p in edlm}):
        mine = {p.steps: p for p in edlm if p.sampler == label}
        won = [s for s, p in mine.items()
               if mdlm[s].nll - p.nll > Z * math.hypot(p.nll_se, mdlm[s].nll_se)
               and p.entropy >= (1 - entropy_tolerance) * mdlm[s].entropy]
        parts.append(f"{label}: {len(won)}/{len(mine)} step counts")
        wins = max(wins, len(won))
    held = wins * 2 > len(mdlm)
    return held, ("lower Gen PPL beyond 2 s.e. with entropy within 2% of MDLM's at " + "; ".join(parts))


def claim_speed(points: list[SamplePoint]) -> tuple[bool, str]:
    """Claim 3: EDLM reaches the quality of MDLM at its largest step count in less wall-clock time
    per sample than MDLM needs for the same quality. "Reaches" allows for sampling noise the same
    way for both samplers: not worse by more than Z standard errors. An EDLM point that reaches the
    target is timed against the fastest MDLM point that is not worse than it; when no MDLM point
    is, against the target itself (the speed-up is then a lower bound). The best EDLM point counts."""
    mdlm = [p for p in points if p.sampler == "MDLM"]
    target = max(mdlm, key=lambda p: p.steps)
    head = f"target: MDLM's Gen PPL {target.gen_ppl:.2f} at T = {target.steps} ({target.seconds_per_sample:.3f} s/sample)"
    best: tuple[float, SamplePoint, SamplePoint | None] | None = None
    for e in (p for p in points if p.sampler != "MDLM" and not_worse(p, target)):
        matching = [m for m in mdlm if not_worse(m, e)]
        rival = min(matching, key=lambda m: m.seconds_per_sample) if matching else None
        speedup = (rival or target).seconds_per_sample / e.seconds_per_sample
        if best is None or speedup > best[0]:
            best = speedup, e, rival
    if best is None:
        return False, f"{head}; no EDLM configuration reaches it (within {Z:g} s.e.) at any measured step count"
    speedup, e, rival = best
    versus = (f"the fastest MDLM point not worse than it is T = {rival.steps} (Gen PPL {rival.gen_ppl:.2f}, "
              f"{rival.seconds_per_sample:.3f} s/sample)" if rival else
              "no MDLM point is as good (within 2 s.e.), so it is timed against the target")
    return speedup > 1, (f"{head}; best EDLM: {e.sampler} at T = {e.steps} (Gen PPL {e.gen_ppl:.2f}, "
                         f"{e.seconds_per_sample:.3f} s/sample); {versus}: {'>= ' if rival is None else ''}"
                         f"{speedup:.2f}x")
