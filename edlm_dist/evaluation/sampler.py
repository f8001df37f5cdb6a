"""The sharded sampler behind `python -m edlm_dist.sample`: MDLM or EDLM (importance sampling)
generation on any number of ranks, with its cost, Gen PPL and entropy written to its own output
folder (`output_folder`), never into a training run.

Two ways to use the ranks (`sample.mode`): `batch`, where each rank generates its own share of
the sequences, and `candidates`, where all ranks generate the same sequences and split the k
candidates of every step between them (`RankPool`), so k is limited by the memory of all ranks
together rather than of one. Sequences are generated in batches of `sample.batch_size`; the
shared noise of a batch is keyed by (seed, its first sequence) and each rank's candidate draws
by (seed, first sequence, rank), so a run is reproducible for a given world size (and on one
rank both modes give the same samples).

The output folder is checked on rank 0 before anything is loaded beyond the denoiser: a training
run folder and an evaluation results folder are refused, earlier results (samples.jsonl,
summary.json, TensorBoard events) are kept unless `overwrite`, and a folder that cannot be
written fails at once, not after the sampling. Only `overwrite` removes anything: the earlier
TensorBoard events, and what interrupted writes of the folder's files left behind.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from edlm_dist.config import ConfigError, SampleProgram, save_config
from edlm_dist.data import BlockSource, DataError, build_dataset, run_tokenizer
from edlm_dist.diffusion import SamplingStats, build_schedule, keyed_generator, sample
from edlm_dist.distributed import RankPool, all_gather_object, autocast, compute_dtype, init_runtime, on_main_rank
from edlm_dist.evaluation.generation import Oracle, build_oracle, gen_ppl, unigram_entropy
from edlm_dist.evaluation.outputs import SAMPLES, SAMPLING, check_output, remove, remove_leftovers, tensorboard_events
from edlm_dist.evaluation.reportable import NOT_REPORTED
from edlm_dist.fileio import atomic_write_text
from edlm_dist.energy.loading import denoiser_checkpoint, energy_token_space, load_denoiser, load_energy
from edlm_dist.runs.weights import Checkpoint, checkpoint_tokens, find_checkpoint, inference_dtype
from edlm_dist.runs.device_stats import peak_memory_gib, reset_peak_memory
from edlm_dist.runs.memory_check import check_sampling_memory
from edlm_dist.runs.tensorboard import MetricsLogger

RESULTS = (SAMPLES, "summary.json")  # a sampling run's results, written in this order, then CONFIG and TensorBoard
CONFIG = "config.toml"


def sample_name(cfg: SampleProgram, step: int) -> str:
    """The folder name of a sampling run, from the settings that define it: the sampler (`mdlm`,
    or `edlm-<energy.kind>_k<num_candidates>_w<window>`), steps, seed and the denoiser's step,
    e.g. `mdlm_T64_seed0_step00000006` or `edlm-ar_k4_w0.5_T8_seed0_step00000004`."""
    s = cfg.sample
    sampler = "mdlm" if s.num_candidates == 1 else f"edlm-{cfg.energy.kind}_k{s.num_candidates}_w{s.window:g}"
    return f"{sampler}_T{s.steps}_seed{cfg.job.seed}_step{step:08d}"


def output_folder(cfg: SampleProgram, denoiser: Checkpoint) -> Path:
    """Where a sampling run writes: `sample.output` (--out), else `<denoiser run>/samples/<sample_name>`."""
    if cfg.sample.output:
        return Path(os.path.expandvars(cfg.sample.output)).expanduser()
    return denoiser.run_dir / "samples" / sample_name(cfg, denoiser.step)


def read_prompts(path: str, tokenizer: Any, seq_len: int, chat: bool = False) -> list[list[int]]:
    """Token ids of every non-empty line of `path` (with `chat`, as a user's message in the
    tokenizer's chat template, the assistant's turn opened); a prompt must leave room to generate."""
    if chat and getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(f"sample.chat: the {tokenizer.name!r} tokenizer of this model has no chat template (an "
                          "Instruct model's Hugging Face folder brings one); set sample.chat = false")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConfigError(f"sample.prompts: cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"sample.prompts: {path} is not UTF-8 ({err.reason} at byte {err.start})") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        ids = tokenizer.encode_chat([{"role": "user", "content": line}]) if chat else tokenizer.encode(line)
        if len(ids) >= seq_len:
            raise ConfigError(f"sample.prompts: line {number} of {path} has {len(ids)} tokens; data.seq_len is {seq_len}")
        prompts.append(ids)
    if not prompts:
        raise ConfigError(f"sample.prompts: {path} has no prompt (no non-empty line)")
    return prompts


class Sampler:
    """Builds the denoiser, energy, oracle and data from a `SampleProgram`; `run()` generates and reports.
    `overwrite` lets it replace the results of an earlier run in its output folder."""

    def __init__(self, cfg: SampleProgram, overwrite: bool = False) -> None:
        self.cfg, self.overwrite = cfg, overwrite
        s = cfg.sample
        self.env = init_runtime(cfg.runtime)
        self.pool = RankPool() if s.mode == "candidates" and self.env.world_size > 1 else None
        if self.pool is not None and s.num_candidates % self.env.world_size:
            raise ConfigError(
                f"sample.num_candidates ({s.num_candidates}) must be divisible by the world size "
                f"({self.env.world_size}) in candidates mode"
            )
        if s.chat and not s.prompts:
            raise ConfigError("sample.chat = true renders the prompts of sample.prompts, which is empty: name the "
                              "file of user messages")
        denoiser = (cfg.sample.checkpoint, "sample.checkpoint (--checkpoint)", cfg.energy)
        check_sampling_memory(cfg, denoiser_checkpoint(*denoiser), self.env.world_size, self.env.device)
        dtype = inference_dtype(cfg.runtime, self.env.device)  # of the denoiser's and the energy's weights
        self.denoiser, self.denoiser_ckpt = load_denoiser(*denoiser, self.env.device, dtype)
        self.output = output_folder(cfg, self.denoiser_ckpt)
        on_main_rank(self._check_output, self.env.is_main)
        self.energy = (load_energy(cfg.energy, self.denoiser_ckpt, self.env.device, dtype) if s.num_candidates > 1
                       else None)
        self._refuse_oracle_as_energy()
        self.seq_len = self.denoiser_ckpt.config.data.seq_len
        self.compute_dtype = compute_dtype(cfg.runtime.mixed_precision, self.env.device)
        self.tokenizer = run_tokenizer(self.denoiser_ckpt.config.data)
        # with an energy: the denoiser's token space less what the energy cannot score
        self.tokens = (checkpoint_tokens(self.denoiser_ckpt) if self.energy is None
                       else energy_token_space(cfg.energy, self.denoiser_ckpt))
        self.schedule = build_schedule(self.denoiser_ckpt.config.diffusion.schedule, self.denoiser_ckpt.config.diffusion.eps)
        self.prompts = read_prompts(s.prompts, self.tokenizer, self.seq_len, s.chat) if s.prompts else None
        self.oracle: Oracle | None = None
        self.reference: BlockSource | None = None
        on_main_rank(self._load_judges, self.env.is_main)
        if s.compile:
            self.denoiser = torch.compile(self.denoiser)
            model = getattr(self.energy, "model", None) or getattr(self.energy, "ar_model", None)
            if model is not None:
                model.compile()

    def _check_output(self) -> None:
        """`check_output` of the output folder, whose earlier results include its TensorBoard events."""
        results = [self.output / name for name in RESULTS] + tensorboard_events(self.output / "tb")
        check_output(self.output, "the output folder", SAMPLING, results, self.overwrite)

    def _refuse_oracle_as_energy(self) -> None:
        """Importance sampling toward the judge itself would make Gen PPL meaningless."""
        s, e = self.cfg.sample, self.cfg.energy
        if not (s.oracle and self.energy is not None and e.kind in ("ar", "coar")) or s.oracle.startswith("hf:"):
            return
        if find_checkpoint(s.oracle).run_dir.resolve() == find_checkpoint(e.checkpoint).run_dir.resolve():
            raise ConfigError(
                f"sample.oracle ({s.oracle}) is the AR model of the energy (energy.checkpoint = {e.checkpoint}): "
                f"importance sampling would target the judge itself; use another oracle"
            )

    # ---- generation ----------------------------------------------------------------------
    def _my_sequences(self) -> range:
        """Indices of the sequences this rank generates (all of them in candidates mode)."""
        n, env = self.cfg.sample.num_samples, self.env
        if self.cfg.sample.mode == "candidates":
            return range(n)
        share = math.ceil(n / env.world_size)
        return range(min(n, env.rank * share), min(n, (env.rank + 1) * share))

    def _init(self, indices: range) -> torch.Tensor | None:
        """Masks everywhere but the prompt of each sequence (None: no prompts)."""
        if self.prompts is None:
            return None
        init = torch.full((len(indices), self.seq_len), self.tokens.mask_id, dtype=torch.long)
        for row, i in enumerate(indices):
            prompt = self.prompts[i % len(self.prompts)]
            init[row, : len(prompt)] = torch.tensor(prompt)
        return init.to(self.env.device)

    def _synchronize(self) -> None:
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)

    def generate(self) -> tuple[list[dict[str, Any]], SamplingStats, float]:
        """This rank's samples (records with ids and wall time), the cost, and the wall time."""
        s, cfg = self.cfg.sample, self.cfg
        mine = self._my_sequences()
        stats = SamplingStats()
        records: list[dict[str, Any]] = []
        batches = [mine[i: i + s.batch_size] for i in range(0, len(mine), s.batch_size)]
        # in batch mode ranks may get one batch fewer; they wait at the gather afterwards
        bar = tqdm(batches, desc="sampling", unit="batch", disable=not (self.env.is_main and cfg.metrics.progress))
        reset_peak_memory(self.env.device)
        self._synchronize()
        start = time.perf_counter()
        for indices in bar:
            first = indices[0]
            batch_start = time.perf_counter()
            with autocast(self.env.device, self.compute_dtype):
                tokens = sample(
                    self.denoiser, batch_size=len(indices), seq_len=self.seq_len, tokens=self.tokens,
                    steps=s.steps, schedule=self.schedule, init=self._init(indices), energy=self.energy,
                    num_candidates=s.num_candidates if self.energy is not None else 1, window=s.window,
                    generator=keyed_generator(cfg.job.seed, "sample", first, device=self.env.device),
                    candidate_generator=keyed_generator(cfg.job.seed, "candidates", first, self.env.rank, device=self.env.device),
                    pool=self.pool, stats=stats, candidate_draw=s.candidate_draw, device=self.env.device,
                )
            self._synchronize()
            per_sample = (time.perf_counter() - batch_start) / len(indices)
            for i, row in zip(indices, tokens.cpu().tolist()):
                records.append({"index": i, "tokens": row, "text": self.tokenizer.decode(row), "wall_time_s": per_sample})
        self._synchronize()
        return records, stats, time.perf_counter() - start

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Generate, gather on rank 0, score, and write the outputs (`_write`)."""
        s, env = self.cfg.sample, self.env
        records, stats, wall = self.generate()
        gathered = all_gather_object((records, stats, wall, peak_memory_gib(env.device)))
        if not env.is_main:
            return {}
        if s.mode == "candidates":
            records = gathered[0][0]  # every rank holds the same sequences
        else:
            records = sorted((r for part in gathered for r in part[0]), key=lambda r: r["index"])
        summary = self._summary(records, [part[1] for part in gathered], max(part[2] for part in gathered),
                                [part[3] for part in gathered])
        self._write(records, summary)
        print(format_summary(summary))
        print(f"outputs: {self.output} (samples.jsonl, summary.json, config.toml, tb/)")
        return summary

    def _write(self, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """samples.jsonl, then summary.json and the resolved config (with the output folder used),
        each atomically, and TensorBoard in `<output>/tb`; with `overwrite`, in place of the
        earlier events and of what interrupted writes of those files left behind."""
        cfg, s = self.cfg, self.cfg.sample
        files = [self.output / name for name in (*RESULTS, CONFIG)]
        if self.overwrite:
            remove_leftovers(files)
        settings = {"steps": s.steps, "num_candidates": summary["num_candidates"], "window": s.window,
                    "mode": s.mode, "energy": summary["energy"], "seed": cfg.job.seed}
        lines = [json.dumps({**record, "settings": settings}) for record in records]
        atomic_write_text(files[0], "\n".join(lines) + "\n")
        atomic_write_text(files[1], json.dumps(summary, indent=2) + "\n")
        save_config(replace(cfg, sample=replace(s, output=str(self.output))), files[2])
        if self.overwrite:
            remove(tensorboard_events(self.output / "tb"))
        logger = MetricsLogger(self.output / "tb", enabled=cfg.metrics.tensorboard)
        logger.text("samples", "\n\n".join(r["text"] for r in records[:16]))
        logger.scalars(0, {f"sample/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})

    def _summary(self, records: list[dict[str, Any]], stats: list[SamplingStats], wall: float,
                 peak_memory: list[float]) -> dict[str, Any]:
        s = self.cfg.sample
        tokens = torch.tensor([r["tokens"] for r in records])
        bits, nats = unigram_entropy(tokens)
        n = len(records)
        # in candidates mode every rank runs the same denoiser forwards; in batch mode each its own
        denoiser_rows = stats[0].denoiser_rows if s.mode == "candidates" else sum(st.denoiser_rows for st in stats)
        mean_ess, unreported_ess = mean_ess_of(stats)
        summary: dict[str, Any] = {
            "num_samples": n,
            "steps": s.steps,
            "num_candidates": s.num_candidates if self.energy is not None else 1,
            "window": s.window,
            "mode": s.mode,
            "world_size": self.env.world_size,
            "energy": self.cfg.energy.kind if self.energy is not None else "none",
            "denoiser": str(self.denoiser_ckpt.path),
            "wall_time_s": wall,
            "wall_time_per_sample_s": wall / n,
            "wall_time_per_step_s": wall / max(1, max(st.steps for st in stats)),
            "denoiser_evals_per_sample": denoiser_rows / n,
            "energy_evals_per_sample": sum(st.energy_rows for st in stats) / n,
            "mean_ess": mean_ess,
            "peak_memory_gib_per_rank": peak_memory,
            "entropy_bits": float(bits.mean()),
            "entropy_nats": float(nats.mean()),
        }
        if unreported_ess:
            summary[NOT_REPORTED] = {"mean_ess": unreported_ess}
        if self.oracle is not None:
            summary["gen_ppl"] = gen_ppl(self.oracle, tokens)
            if self.reference is not None:
                reference = self._reference_tokens(n)
                ref_bits, ref_nats = unigram_entropy(reference)
                summary["reference"] = {"gen_ppl": gen_ppl(self.oracle, reference), "num_samples": len(reference),
                                        "entropy_bits": float(ref_bits.mean()), "entropy_nats": float(ref_nats.mean())}
        return summary

    def _load_judges(self) -> None:
        """Rank 0's Gen PPL oracle and the held-out text of its reference row, found before any
        sampling (a failure stops every rank)."""
        s = self.cfg.sample
        if not s.oracle:
            return
        self.oracle = build_oracle(s.oracle, self.env.device, vocab_size=self.tokenizer.vocab_size,
                                   eos_id=self.tokenizer.eos_id, tokenizer=self.tokenizer, tokens=self.tokens)
        if s.reference:
            self.reference = self._reference_source()

    def _reference_source(self) -> BlockSource:
        """The denoiser's data, whose validation split the reference row is drawn from."""
        try:
            return build_dataset(self.denoiser_ckpt.config.data).blocks
        except DataError as err:
            raise DataError(f"the reference row (sample.reference) reads the validation split of the denoiser's "
                            f"data: {err}; or set sample.reference = false") from None

    def _reference_tokens(self, n: int) -> torch.Tensor:
        """The first n held-out sequences of the denoiser's validation split."""
        batch = self.cfg.sample.batch_size
        parts, i = [], 0
        while sum(len(p) for p in parts) < n:
            parts.append(self.reference.batch("val", i, batch))
            i += 1
        return torch.cat(parts)[:n]


def mean_ess_of(stats: list[SamplingStats]) -> tuple[float | None, str | None]:
    """The mean ESS of the importance weights over every choice of every rank (None without
    importance sampling), and why it is not reported when a weight was NaN (None otherwise)."""
    count = sum(st.ess_count for st in stats)
    if not count:
        return None, None
    mean = sum(st.ess_sum for st in stats) / count
    return (mean, None) if math.isfinite(mean) else (None, "not finite: a candidate's energy was NaN or -inf")


def _gen_ppl_line(label: str, figures: dict[str, Any]) -> str:
    """`<label>: <Gen PPL>`, or the reason it is not reported."""
    if NOT_REPORTED in figures:
        return f"{label}: not reported ({figures[NOT_REPORTED]})"
    return f"{label}: {figures['gen_ppl']:.2f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The figures of a sampling run, as printed on the console."""
    lines = [
        f"{summary['num_samples']} samples, {summary['steps']} steps, k = {summary['num_candidates']}, "
        f"window {summary['window']}, {summary['mode']} mode on {summary['world_size']} rank(s)",
        f"wall time: {summary['wall_time_per_sample_s']:.3f} s/sample, {summary['wall_time_per_step_s'] * 1000:.2f} ms/step",
        f"unigram entropy: {summary['entropy_bits']:.3f} bits ({summary['entropy_nats']:.3f} nats)",
    ]
    if summary.get("mean_ess") is not None:
        lines.append(f"mean ESS of the importance weights: {summary['mean_ess']:.2f} of {summary['num_candidates']}")
    if "mean_ess" in summary.get(NOT_REPORTED, {}):
        lines.append(f"mean ESS of the importance weights: not reported ({summary[NOT_REPORTED]['mean_ess']})")
    if "gen_ppl" in summary:
        lines.append(_gen_ppl_line("Gen PPL", summary["gen_ppl"]))
        if "reference" in summary:
            lines.append(_gen_ppl_line("reference Gen PPL (held-out data)", summary["reference"]["gen_ppl"]))
    return "\n".join(lines)
