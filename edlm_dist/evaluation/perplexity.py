"""Likelihood evaluation behind `python -m edlm_dist.eval`: per-token NELBO / NLL and perplexity
of MDLM, AR and EDLM checkpoints on held-out sets, on any number of ranks.

Each set is cut into blocks (`edlm_dist.data.eval_sets`); global batch b holds blocks
[b B, (b + 1) B) and goes to rank b mod world size, and its noise comes from a generator keyed
by (seed, b): the figures depend on the seed and `eval.batch_size`, not on the world size.
With `eval.split = "proposals"` every rank scores every EDLM batch instead, drawing n / world
size of the proposals (from a generator keyed by (seed, b, rank)) and sharing their energies.
Every estimate of a batch restarts that generator, so MDLM and EDLM (both estimators, n and
2n proposals) see the same (t, xt) and their differences are paired. Rank 0 gathers the
per-sequence values in global order and writes one JSON per (checkpoint, set) and TensorBoard
scalars under `eval/` into the run's results folder: `<run>/eval`, or `<eval.output>/<run folder
name>`, never the training run's own files (`results_folder`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from edlm_dist.config import ConfigError, EvalProgram, TrainProgram
from edlm_dist.data import Tokenizer, run_tokenizer
from edlm_dist.data.eval_sets import EvalSet, EvalSetSpec, FixedBlocks, load_eval_set, parse_eval_sets
from edlm_dist.diffusion import Schedule, TokenSpace, build_schedule, edlm_nelbo, keyed_generator, nelbo
from edlm_dist.diffusion.likelihood import (
    CONSISTENT,
    ESS_FLOOR,
    GUARANTEED,
    PAPER,
    below_ess_floor,
    estimator_kind,
    estimators_for,
    is_self_normalised,
)
from edlm_dist.distributed import DistEnv, RankPool, all_gather_object, autocast, compute_dtype, on_main_rank
from edlm_dist.energy import Energy
from edlm_dist.evaluation.outputs import (
    EVALUATION,
    check_output,
    damaged_name,
    refuse_foreign,
    remove,
    remove_leftovers,
    result_name,
)
from edlm_dist.evaluation.reportable import NOT_REPORTED, finite_or_none, impossible_reason, non_finite_reason
from edlm_dist.fileio import atomic_write_text
from edlm_dist.models import Transformer
from edlm_dist.energy.loading import energy_token_space, load_denoiser, load_energy
from edlm_dist.runs.weights import Checkpoint, checkpoint_tokens, find_checkpoint, inference_dtype, load_weights
from edlm_dist.runs.tensorboard import MetricsLogger

# What each figure is, for readers of the JSON (docs/evaluation.md explains them); the EDLM
# estimators' own kinds come from `estimator_kind`.
KINDS = {"nelbo": "upper bound", "nll": "exact", "mdlm_nelbo": "upper bound (the denoiser alone)"}
COMPANIONS = {"conservative": "low", "paper": "low", "coupled": "jackknife", "truncated": "jackknife", "joint": "jackknife"}
COMPANION_KINDS = {"low": "the low side of log Z (not a bound)",
                   "jackknife": f"{CONSISTENT} (jackknife bias-corrected)"}
Z = 2.0  # standard errors for a difference to count
STATS = ("nats_per_token", "stderr", "ppl", "bits_per_token")
CANNOT_DECIDE = "cannot decide"  # the verdict of a figure that is not compared with MDLM at all


@dataclass
class EvalModel:
    """A checkpoint ready to score: `label` (mdlm, ar, edlm_nce, edlm_ar, edlm_coar), the network
    (denoiser or AR model), the energy of EDLM, and the token space and diffusion settings of
    the denoiser."""

    label: str
    ckpt: Checkpoint
    model: Transformer
    energy: Energy | None
    tokens: TokenSpace
    schedule: Schedule | None
    t_min: float


def model_label(task: str, cfg: EvalProgram) -> str:
    """What a checkpoint of a `task` run is scored as: that task, and EDLM for an MDLM when
    `energy.checkpoint` is set."""
    if task == "mdlm":
        return f"edlm_{cfg.energy.kind}" if cfg.energy.checkpoint else "mdlm"
    return "edlm_nce" if task == "nce" else "ar"


def build_eval_model(ckpt: Checkpoint, cfg: EvalProgram, device: torch.device) -> EvalModel:
    """The model `model_label` names, with its weights (in `inference_dtype`), on `device`."""
    label = model_label(ckpt.config.training.task, cfg)
    dtype = inference_dtype(cfg.runtime, device)
    if label == "ar":
        model, _ = load_weights(ckpt, cfg.eval.weights, device=device, dtype=dtype)
        return EvalModel(label, ckpt, model, None, checkpoint_tokens(ckpt), None, 0.0)
    energy_cfg = cfg.energy
    if label == "edlm_nce":
        energy_cfg = replace(cfg.energy, kind="nce", checkpoint=ckpt.path, weights=cfg.eval.weights)
        denoiser, denoiser_ckpt = load_denoiser(cfg.eval.denoiser, "eval.denoiser", energy_cfg, device, dtype)
    else:
        denoiser, _ = load_weights(ckpt, cfg.eval.weights, device=device, dtype=dtype)
        denoiser_ckpt = ckpt
    if label == "mdlm":
        energy, tokens = None, checkpoint_tokens(denoiser_ckpt)
    else:  # the denoiser's token space less what the energy cannot score
        energy, tokens = load_energy(energy_cfg, denoiser_ckpt, device, dtype), energy_token_space(energy_cfg,
                                                                                                 denoiser_ckpt)
    diffusion = denoiser_ckpt.config.diffusion
    return EvalModel(label, ckpt, denoiser, energy, tokens,
                     build_schedule(diffusion.schedule, diffusion.eps), diffusion.t_min)


def sequence_figures(
    em: EvalModel, x0: torch.Tensor, key: tuple[object, ...], cfg: EvalProgram, pool: RankPool | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sequence figures in nats, float64 [B], of one batch: `<estimator>_n<n>`, its companion
    `<estimator>_<low|jackknife>_n<n>` and `ess_<estimator>_n<n>` for every estimator of the
    energy at n and 2n proposals. Every figure restarts the generator of `key`, so all see the
    same (t, xt). With a `pool`, this rank draws its share of the EDLM proposals from a
    generator keyed by `key` and its rank."""
    if em.label == "ar":
        return {"nll": -em.model.log_prob(x0).double()}
    e = cfg.eval

    def generator() -> torch.Generator:
        return keyed_generator(*key, device=x0.device)

    common = dict(tokens=em.tokens, schedule=em.schedule, num_samples=e.num_samples, t_min=em.t_min)
    plain = nelbo(em.model, x0, generator=generator(), **common).double()
    if em.energy is None:
        return {"nelbo": plain}
    out = {"mdlm_nelbo": plain}
    for n in (e.num_proposals, 2 * e.num_proposals):
        for estimator in estimators_for(em.energy, joint=e.coar_joint):
            proposals = keyed_generator(*key, "proposals", pool.rank, device=x0.device) if pool else None
            estimate, companion, ess = edlm_nelbo(
                em.model, em.energy, x0, estimator=estimator, num_proposals=n, generator=generator(),
                pool=pool, proposal_generator=proposals, **common)
            out[f"{estimator}_n{n}"], out[f"{estimator}_{COMPANIONS[estimator]}_n{n}"] = estimate, companion
            if not ess.isnan().any():  # the exact coAR paper figure draws no proposals
                out[f"ess_{estimator}_n{n}"] = ess
    return out


def _stats(per_sequence: torch.Tensor, seq_len: int) -> dict[str, float | None]:
    """Per-token mean, standard error over sequences (Monte-Carlo noise plus the spread of the
    data, so an upper bound on the MC error; None for one sequence), perplexity and bits of
    per-sequence nats."""
    n = per_sequence.numel()
    per_token = per_sequence / seq_len
    mean = float(per_token.mean())
    stderr = float(per_token.std() / math.sqrt(n)) if n > 1 else None
    return {"nats_per_token": mean, "stderr": stderr, "ppl": math.exp(mean), "bits_per_token": mean / math.log(2)}


def _figure(per_sequence: torch.Tensor, seq_len: int, kind: str) -> dict[str, Any]:
    """`_stats` of a figure and its kind; a figure that is not finite or is impossible (below 0
    nats) keeps its fields empty (None) and says why under `NOT_REPORTED`."""
    reason = non_finite_reason(per_sequence, "sequences") or impossible_reason(float(per_sequence.mean()) / seq_len)
    if reason:
        return {**dict.fromkeys(STATS), "kind": kind, NOT_REPORTED: reason}
    return {**_stats(per_sequence, seq_len), "kind": kind}


def _difference(values: dict[str, torch.Tensor], figures: dict[str, dict[str, Any]], a: str, b: str,
                 seq_len: int) -> dict[str, Any]:
    """The paired per-token difference a - b with its standard error; empty, with the reason,
    when either figure is not reported."""
    for name in (a, b):
        if NOT_REPORTED in figures[name]:
            return {"nats_per_token": None, "stderr": None, NOT_REPORTED: f"{name} {figures[name][NOT_REPORTED]}"}
    d = _stats(values[a] - values[b], seq_len)
    return {"nats_per_token": d["nats_per_token"], "stderr": d["stderr"]}


def figure_kind(name: str, self_normalised: bool) -> str:
    """What the figure `name` (e.g. `coupled_jackknife_n16`) is."""
    base = re.sub(r"_n\d+$", "", name)
    if base in KINDS:
        return KINDS[base]
    estimator, _, companion = base.partition("_")
    if companion == "low" and estimator == "paper":
        return PAPER
    return COMPANION_KINDS[companion] if companion else estimator_kind(estimator, self_normalised)


def _undecided(limited_by: str, reason: str, verdict: str = "undecided") -> dict[str, Any]:
    return {"decides": False, "verdict": verdict, "limited_by": limited_by, "reason": reason}


def cannot_decide(kind: str, versus_mdlm: dict[str, Any], movement: dict[str, Any] | None = None,
                  companion: dict[str, Any] | None = None, ess: float | None = None,
                  num_proposals: int | None = None) -> dict[str, Any] | None:
    """The judgement of a figure that is not compared with MDLM at all ("cannot decide"), or None
    when it can be: what it is judged by (its difference to MDLM; for a consistent estimate also
    its movement and companion) is not reported, or it is a consistent estimate whose mean ESS
    of `num_proposals` weights lies below the floor (`below_ess_floor`)."""
    needed = [versus_mdlm, movement, companion] if kind == CONSISTENT else [versus_mdlm]
    for part in (p for p in needed if p is not None):
        if NOT_REPORTED in part:
            return _undecided("estimator", f"not reported: {part[NOT_REPORTED]}", CANNOT_DECIDE)
    if kind == CONSISTENT and ess is not None and num_proposals and below_ess_floor(ess, num_proposals):
        return _undecided("ess", f"mean ESS {ess:.2f} of {num_proposals}, below the floor of {ESS_FLOOR:.0%} of the "
                                 "proposals (docs/likelihood.md): the estimate can then lie several standard errors "
                                 "from its limit", CANNOT_DECIDE)
    return None


def judge(kind: str, versus_mdlm: dict[str, Any], movement: dict[str, Any],
          companion_versus_mdlm: dict[str, Any] | None = None, ess: float | None = None,
          num_proposals: int | None = None) -> dict[str, Any]:
    """Whether a figure decides against MDLM's NELBO at its standard error, why, and otherwise
    what keeps it from deciding (`limited_by`: "kind", "noise", "estimator" or "ess").

    A guaranteed upper bound decides only when it lies below MDLM's NELBO beyond Z s.e. (above
    it, the bound may be loose). A consistent estimate decides when it differs beyond Z s.e.,
    moved less than half that difference from n to 2n proposals, and its companion (the
    jackknife correction, or log Z's other side) lies on the same side of MDLM's NELBO beyond Z
    s.e. too: with a tiny ESS an estimate can still be far from its limit while barely moving.
    With a mean ESS of its `num_proposals` weights below the floor (`ESS_FLOOR` of them) a
    consistent estimate is not compared at all: "cannot decide", as for any figure whose
    difference is not reported (not finite, or impossible) or has no standard error (one
    sequence). The paper's estimate never decides (not a bound).
    """
    excluded = cannot_decide(kind, versus_mdlm, movement, companion_versus_mdlm, ess, num_proposals)
    if excluded is not None:
        return excluded
    if kind == PAPER:
        return _undecided("kind", "the paper's estimate is not a bound")
    diff, se, moved = versus_mdlm["nats_per_token"], versus_mdlm["stderr"], movement["nats_per_token"]
    if se is None:
        return _undecided("noise", "one sequence gives no standard error", CANNOT_DECIDE)
    if kind == GUARANTEED:
        if diff + Z * se < 0:
            return {"decides": True, "verdict": "below MDLM", "limited_by": None,
                    "reason": f"an upper bound {-diff:.4f} nats/token below"}
        return _undecided("estimator", "an upper bound not below MDLM's NELBO beyond 2 s.e. says nothing against EDLM")
    if abs(diff) <= Z * se:
        return _undecided("noise", "within 2 s.e. of MDLM's NELBO")
    if abs(moved) > abs(diff) / 2:
        return _undecided("estimator", f"still moving: {moved:+.4f} nats/token from n to 2n proposals")
    if companion_versus_mdlm is not None:
        other = companion_versus_mdlm["nats_per_token"]
        if other * diff <= 0 or abs(other) <= Z * companion_versus_mdlm["stderr"]:
            return _undecided("estimator", f"its companion is at {other:+.4f} nats/token from MDLM's NELBO, "
                                           "not on the same side beyond 2 s.e.")
    return {"decides": True, "verdict": "below MDLM" if diff < 0 else "above MDLM", "limited_by": None,
            "reason": f"{diff:+.4f} ± {se:.4f} nats/token, moved {moved:+.4f} from n to 2n"}


def summarize(values: dict[str, torch.Tensor], seq_len: int, num_proposals: int,
              self_normalised: bool = False) -> dict[str, Any]:
    """Per-token means, standard errors and perplexities of per-sequence values, each with its
    kind (a figure that is not finite or impossible is withheld with its reason, `_figure`); for
    EDLM also, per estimator at 2n proposals, the mean ESS, the paired difference to MDLM, the
    movement from n to 2n and whether the figure decides against MDLM (`judge`)."""
    figures = {name: _figure(v, seq_len, figure_kind(name, self_normalised))
               for name, v in values.items() if not name.startswith("ess_")}
    ess = {name: finite_or_none(float(v.mean())) for name, v in values.items() if name.startswith("ess_")}
    summary: dict[str, Any] = {"figures": figures}
    if "nll" in values or "nelbo" in values:
        summary["headline"] = "nll" if "nll" in values else "nelbo"
        return summary
    n, n2 = num_proposals, 2 * num_proposals
    estimators = [name[: -len(f"_n{n2}")] for name in values if name.endswith(f"_n{n2}") and name[:-len(f"_n{n2}")] in COMPANIONS]
    summary["headline"] = f"{estimators[0]}_n{n2}"  # the tightest valid one: joint, truncated or coupled
    summary["mean_ess"] = ess
    differences, judgements = {}, {}
    for estimator in estimators:
        name = f"{estimator}_n{n2}"
        versus = differences[f"{name} - mdlm_nelbo"] = _difference(values, figures, name, "mdlm_nelbo", seq_len)
        moved = differences[f"{name} - {estimator}_n{n}"] = _difference(values, figures, name, f"{estimator}_n{n}",
                                                                         seq_len)
        companion = _difference(values, figures, f"{estimator}_{COMPANIONS[estimator]}_n{n2}", "mdlm_nelbo", seq_len)
        mean_ess = ess.get(f"ess_{estimator}_n{n2}")
        judgements[name] = {"kind": figures[name]["kind"], "ess": mean_ess,
                            **judge(figures[name]["kind"], versus, moved, companion, mean_ess, n2)}
    summary["differences"] = differences
    summary["judgements"] = judgements
    return summary


class LikelihoodEvaluator:
    """Scores checkpoints on the sets of `eval.datasets` and writes the results (rank 0)."""

    def __init__(self, cfg: EvalProgram, env: DistEnv) -> None:
        self.cfg, self.env = cfg, env
        self.specs = parse_eval_sets(cfg.eval.datasets)
        self.pool = RankPool() if cfg.eval.split == "proposals" and env.world_size > 1 else None
        if self.pool is not None and cfg.eval.num_proposals % env.world_size:
            raise ConfigError(f"eval.num_proposals ({cfg.eval.num_proposals}) must be divisible by the world size "
                              f"({env.world_size}) with eval.split = 'proposals'")
        self._tokenizers: dict[str, Tokenizer] = {}
        self._sets: dict[tuple[str, EvalSetSpec, int, int], EvalSet | FixedBlocks] = {}
        self._loggers: dict[Path, MetricsLogger] = {}

    def output_root(self) -> Path | None:
        """`eval.output` (--out), or None: each run's own `eval/` folder."""
        return Path(os.path.expandvars(self.cfg.eval.output)).expanduser() if self.cfg.eval.output else None

    def results_folder(self, run_dir: Path) -> Path:
        """Where the results of the run in `run_dir` go (JSON and TensorBoard in `tb/`): `<run>/eval`,
        or `<eval.output>/<run folder name>`, so that several runs can share one `eval.output`."""
        root = self.output_root()
        return run_dir / "eval" if root is None else root / run_dir.resolve().name

    def result_path(self, ckpt: Checkpoint, label: str, spec: EvalSetSpec) -> Path:
        """Where the JSON of (checkpoint, model, set) goes: `<results folder>/<model>/<set>_<split>/step_<step>.json`."""
        return self.results_folder(ckpt.run_dir) / label / spec.folder / result_name(ckpt.step)

    def damaged_path(self, ckpt: Checkpoint, label: str, spec: EvalSetSpec) -> Path:
        """Where the record of a damaged checkpoint goes instead (`record_damaged`): `.../step_<step>.damaged`."""
        return self.results_folder(ckpt.run_dir) / label / spec.folder / damaged_name(ckpt.step)

    def check_outputs(self, ckpts: list[Checkpoint], overwrite: bool) -> None:
        """Before scoring anything (one-shot mode; a collective: rank 0 checks, every rank stops):
        refuse a results folder that is a training run or a sampling output or cannot be written,
        results (or records of a damaged checkpoint) that exist already (unless `overwrite`, which
        also removes what interrupted writes of them left), and two checkpoints writing the same file."""
        on_main_rank(lambda: self._check(self._planned(ckpts), overwrite), self.env.is_main)

    def check_results_folder(self, run_dir: Path) -> None:
        """`check_outputs` for the service, whose existing results are its record of what is done."""
        on_main_rank(lambda: self._check({self.results_folder(run_dir): []}, overwrite=False), self.env.is_main)

    def _planned(self, ckpts: list[Checkpoint]) -> dict[Path, list[Path]]:
        """The result files of `ckpts` by results folder; two checkpoints writing one file are refused."""
        planned: dict[Path, list[Path]] = {}
        writer: dict[Path, Checkpoint] = {}
        for ckpt in ckpts:
            label = model_label(ckpt.config.training.task, self.cfg)
            paths = [self.result_path(ckpt, label, spec) for spec in self.specs]
            for path in paths:
                other = writer.setdefault(path.resolve(), ckpt)
                if other is not ckpt:
                    raise ConfigError(f"eval.checkpoint: {other.path} and {ckpt.path} would both write {path}; "
                                      f"evaluate them in separate commands with different --out")
            records = [self.damaged_path(ckpt, label, spec) for spec in self.specs]
            planned.setdefault(self.results_folder(ckpt.run_dir), []).extend(paths + records)
        return planned

    def _check(self, planned: dict[Path, list[Path]], overwrite: bool) -> None:
        root = self.output_root()
        if root is not None:
            refuse_foreign(root, "eval.output (--out)", EVALUATION)
        for folder, paths in planned.items():
            check_output(folder, "the results folder", EVALUATION, paths, overwrite)
        if overwrite:
            remove_leftovers(path for paths in planned.values() for path in paths)

    def _tokenizer(self, run: TrainProgram) -> Tokenizer:
        """The run's tokenizer, built once per distinct `[data]`."""
        key = repr(run.data)
        if key not in self._tokenizers:
            self._tokenizers[key] = run_tokenizer(run.data)
        return self._tokenizers[key]

    def eval_set(self, run: TrainProgram, spec: EvalSetSpec) -> EvalSet | FixedBlocks:
        """The blocks of `spec` for a model of `run`, at least `eval.num_sequences` of them where the
        set can make more (the synthetic source's `val`)."""
        key = (repr(run.data), spec, run.metrics.eval_batches, run.metrics.eval_batch_size)
        if key not in self._sets:
            self._sets[key] = load_eval_set(spec, self._tokenizer(run), run, sequences=self.cfg.eval.num_sequences)
        return self._sets[key]

    def evaluate_checkpoint(self, ckpt: Checkpoint) -> list[dict[str, Any]]:
        """Every set's results for `ckpt` (on rank 0; the other ranks get an empty list)."""
        return self.evaluate_model(build_eval_model(ckpt, self.cfg, self.env.device))

    def evaluate_model(self, em: EvalModel) -> list[dict[str, Any]]:
        """Every set's results for the model of a checkpoint (on rank 0; the other ranks get an empty list)."""
        return [r for r in (self.evaluate(em, spec) for spec in self.specs) if r]

    @torch.no_grad()
    def evaluate(self, em: EvalModel, spec: EvalSetSpec) -> dict[str, Any]:
        """Score one set; a collective (every rank must call it). Rank 0 writes and returns the results."""
        cfg, env = self.cfg, self.env
        blocks = self.eval_set(em.ckpt.config, spec)
        requested = cfg.eval.num_sequences
        total = min(len(blocks), requested or len(blocks))
        if requested > len(blocks) and env.is_main:
            tqdm.write(f"{em.label} on {spec.label}: the set has {len(blocks)} sequences, fewer than "
                       f"eval.num_sequences = {requested}; scoring all {len(blocks)}")
        size, batches = cfg.eval.batch_size, math.ceil(total / cfg.eval.batch_size)
        pool = self.pool if em.energy is not None else None  # only EDLM has proposals to share
        mine = range(batches) if pool else range(env.rank, batches, env.world_size)
        bar = tqdm(mine, desc=f"{em.label} {spec.label}", unit="batch",
                   disable=not (env.is_main and cfg.metrics.progress), dynamic_ncols=True)
        start = time.perf_counter()
        parts = []
        for b in bar:
            x0 = blocks.blocks(b * size, min(total, (b + 1) * size)).to(env.device)
            with self._autocast():
                figures = sequence_figures(em, x0, (cfg.job.seed, "eval-likelihood", b), cfg, pool)
            parts.append((b, {name: value.cpu() for name, value in figures.items()}))
        wall = time.perf_counter() - start
        gathered = all_gather_object((parts, wall))
        if not env.is_main:
            return {}
        shares = gathered[:1] if pool else gathered  # with shared proposals every rank holds every value
        ordered = sorted((p for rank_parts, _ in shares for p in rank_parts), key=lambda p: p[0])
        values = {name: torch.cat([p[1][name] for p in ordered]) for name in ordered[0][1]}
        wall = max(w for _, w in gathered)
        result = {
            "model": em.label, "checkpoint": em.ckpt.path, "step": em.ckpt.step, "run": str(em.ckpt.run_dir),
            "dataset": spec.label, "sequences": total, "sequences_requested": requested, "seq_len": blocks.seq_len,
            "tokens": total * blocks.seq_len,
            "documents": blocks.documents, "seed": cfg.job.seed, "batch_size": size,
            "num_samples": cfg.eval.num_samples, "world_size": env.world_size, "split": "proposals" if pool else "sequences",
            **({"num_proposals": [cfg.eval.num_proposals, 2 * cfg.eval.num_proposals]} if em.energy is not None else {}),
            **summarize(values, blocks.seq_len, cfg.eval.num_proposals, is_self_normalised(em.energy)),
            "wall_time_s": wall, "sequences_per_s": total / wall if wall > 0 else None,
        }
        self._write(em, spec, result)
        return result

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.env.device, compute_dtype(self.cfg.runtime.mixed_precision, self.env.device))

    def _write(self, em: EvalModel, spec: EvalSetSpec, result: dict[str, Any]) -> None:
        """The JSON file (in place of a record saying the checkpoint was damaged, which it
        contradicts), and the per-token figures as TensorBoard scalars at the checkpoint's step."""
        path = self.result_path(em.ckpt, em.label, spec)
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        remove([self.damaged_path(em.ckpt, em.label, spec)])
        scalars = tensorboard_scalars(result, f"eval/{spec.folder}/{em.label}")
        self._logger(self.results_folder(em.ckpt.run_dir)).scalars(em.ckpt.step, scalars)

    def record_damaged(self, ckpt: Checkpoint, reason: str, attempts: int) -> list[Path]:
        """Record that `ckpt` could not be read (`reason`, after `attempts` tries) where each set's
        result would go, as `damaged_path` (JSON with `status`, `reason` and the checkpoint, no
        figure), and as TensorBoard text `eval/<model>/damaged` at its step; the records (rank 0)."""
        label = model_label(ckpt.config.training.task, self.cfg)
        record = {"status": "damaged", "reason": reason, "model": label, "checkpoint": ckpt.path, "step": ckpt.step,
                  "run": str(ckpt.run_dir), "attempts": attempts,
                  "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        paths = [self.damaged_path(ckpt, label, spec) for spec in self.specs]
        for spec, path in zip(self.specs, paths):
            atomic_write_text(path, json.dumps({**record, "dataset": spec.label}, indent=2) + "\n")
        self._logger(self.results_folder(ckpt.run_dir)).text(
            f"eval/{label}/damaged", f"checkpoint {ckpt.path} is damaged and was not scored: {reason}", step=ckpt.step)
        return paths

    def _logger(self, folder: Path) -> MetricsLogger:
        if folder not in self._loggers:
            self._loggers[folder] = MetricsLogger(folder / "tb", enabled=self.cfg.metrics.tensorboard)
        return self._loggers[folder]


def tensorboard_scalars(result: dict[str, Any], tag: str) -> dict[str, float]:
    """The scalars of one evaluation under `tag`: each figure per token, the headline's
    perplexity as `<tag>/ppl` and the mean ESS; a withheld figure is left out, never logged."""
    scalars = {f"{tag}/{name}": f["nats_per_token"] for name, f in result["figures"].items()}
    scalars[f"{tag}/ppl"] = result["figures"][result["headline"]]["ppl"]
    scalars.update({f"{tag}/{name}": value for name, value in result.get("mean_ess", {}).items()})
    return {name: value for name, value in scalars.items() if value is not None}


def checkpoints_to_evaluate(cfg: EvalProgram) -> list[Checkpoint]:
    """The checkpoints `eval.checkpoint` names (comma-separated runs or step folders)."""
    paths = [p.strip() for p in cfg.eval.checkpoint.split(",") if p.strip()]
    if not paths:
        raise ConfigError("eval.checkpoint (--checkpoint) names no run or checkpoint; or use --watch <run folder>")
    return [find_checkpoint(os.path.expanduser(os.path.expandvars(p))) for p in paths]


def _plus_minus(d: dict[str, Any], signed: bool) -> str:
    """`value ± s.e.` of a figure, or of a difference (`signed`); `n/a` for a missing standard error."""
    se = "n/a" if d["stderr"] is None else f"{d['stderr']:.4f}"
    return f"{d['nats_per_token']:>{'+' if signed else ''}9.4f} ± {se}"


def format_result(result: dict[str, Any]) -> str:
    """One evaluation's figures as a small table for the console; a withheld figure shows its
    reason, never a number."""
    lines = [f"{result['model']} step {result['step']} on {result['dataset']}: {result['sequences']} sequences "
             f"x {result['seq_len']} tokens"]
    for name, f in result["figures"].items():
        mark = "*" if name == result["headline"] else " "
        if NOT_REPORTED in f:
            lines.append(f" {mark}{name:<16} not reported: {f[NOT_REPORTED]}   ({f['kind']})")
            continue
        lines.append(f" {mark}{name:<16}{_plus_minus(f, signed=False)} nats/token   ppl {f['ppl']:>10.2f}"
                     f"   ({f['kind']})")
    for name, value in result.get("mean_ess", {}).items():
        shown = "not reported (not finite)" if value is None else f"{value:>9.2f}"
        lines.append(f"  {name:<16}{shown} (mean effective sample size of the proposals' weights)")
    for name, d in result.get("differences", {}).items():
        shown = f"not reported: {d[NOT_REPORTED]}" if NOT_REPORTED in d else _plus_minus(d, signed=True)
        lines.append(f"  {name:<32}{shown}")
    for name, j in result.get("judgements", {}).items():
        lines.append(f"  {name} against MDLM: {j['verdict']} ({j['reason']})")
    return "\n".join(lines)
