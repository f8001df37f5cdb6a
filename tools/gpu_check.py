"""One-call GPU check: all the GPU measurements in one command of under 8 minutes, for a GPU lent briefly.

On one CUDA device, in bf16, it measures (one JSON line per measurement in FOLDER/results.jsonl,
a markdown table in FOLDER/table.md, also printed):

- training of the `small` DiT (12 layers, hidden 768, 12 heads, cond 128) at 1024 tokens with
  GPT-2's vocabulary (50257): tokens/s, MFU, step time and peak memory, eager and compiled,
  (a) directly (forward + MDLM loss + backward + AdamW on random tokens: bench_train.bench_direct)
  and (b) through the Trainer on a token corpus prepared here from $EDLM_DATA_DIR/owt_sample by
  tools/prepare_data.py (bench_train.bench_trainer), whose data wait is reported;
- the cluster path on one GPU: an NCCL process group of world size 1 made in this process, FSDP2
  on a 1-rank mesh (handed to the Trainer, which builds none at world size 1), compiled blocks,
  an async DCP save while training goes on, and a second Trainer that resumes the save and must
  repeat the uninterrupted run's losses;
- sampling of one 1024-token sequence with random networks (bench_sampler.measure): MDLM at 1024
  and 128 steps, EDLM with k = 2 candidates in the window w = 0.2 against the cost model, and
  the memory of candidates mode's k = 16 on one rank (the 2-rank ratio needs 2 GPUs);
- evaluation sequences/s of the MDLM NELBO and of the EDLM-AR estimators, those of the valid
  bound and the paper's (bench_eval.eval_rows);
- a ~1B Llama-family denoiser (LLaDA's architecture: 16 layers, hidden 2048, 16 heads, 8 key/value
  heads, SwiGLU 5632, vocabulary 32000, random init) at 2048 tokens on the cluster path (FSDP2 on a
  1-rank mesh, bf16 compute, compiled blocks): one training step (forward + MDLM loss + backward +
  clipping + AdamW on random tokens), then one sampling step (MDLM, batch of 8 sequences); tokens/s,
  MFU and peak memory. Training MFU = flops_per_token x tokens/s / peak, flops_per_token = 6 N +
  12 n_layers n_heads head_dim L (N: the parameters without the input embedding; bidirectional
  attention, no causal halving); a sampling step is a forward: a third of that per token.

Targets: MFU >= 45% for the compiled direct step; MDLM sampling <= 2 s per 1024-token sequence
at 1024 steps. Each measurement is guarded: one that fails records its error (in its JSON line
and table row) and the next one runs. A measurement not started within --budget-s (400) seconds
is recorded as failed instead, so that the call ends within 8 minutes. Exit status 1 when any failed.

--cpu-dry-run runs the same code paths on the CPU at tiny sizes (the tiny preset, 32 tokens, a
few steps, bf16, gloo instead of NCCL, one thread) in about 30 s, torch.compile going through the
aot_eager backend: dynamo and AOTAutograd trace as they do for inductor, without inductor's
code generation (about 30 s per graph on 2 cold cores).

Packages: nothing here needs zstandard (token shards only), torchdata (data.num_workers = 0
uses a plain DataLoader) or flash-attn (PyTorch's SDPA serves); `--block-modules
zstandard,torchdata` makes their imports fail to show it. Should torchdata be needed on the GPU
machine (dataloader workers, raw shards), carry its pure-Python wheel: `pip download --no-deps
torchdata==0.11.0 -d wheels` here; there, `pip install --no-index --no-deps --target /tmp/site
wheels/*.whl` and PYTHONPATH=/tmp/site.

usage: EDLM_DATA_DIR=DIR python tools/gpu_check.py [--out FOLDER] [--overwrite] [--cpu-dry-run] [--only SECTIONS]
    [--batch B] [--budget-s S] [--compile-backend NAME] [--block-modules NAMES]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn
from unittest import mock

import torch

from edlm_dist.fileio import StorageError, refuse_existing

if TYPE_CHECKING:
    from edlm_dist.config import TrainProgram
    from edlm_dist.models.base import LanguageModel

ROOT = Path(__file__).resolve().parents[1]
MFU_TARGET = 0.45
SAMPLE_TARGET_S = 2.0  # MDLM, one 1024-token sequence at 1024 steps
RESUME_STEPS = 2  # steps after the async save: taken by the saving Trainer and by the one resuming it
# resumed vs uninterrupted losses, relative (CUDA backward kernels may accumulate with atomics)
RESUME_RTOL = {"cuda": 1e-3, "cpu": 1e-6}
SECTIONS = ("training", "cluster", "sampling", "evaluation", "llama")  # --only picks among these


@dataclass(frozen=True)
class LlamaSizes:
    """The Llama-family denoiser of the `llama` section and what it runs at."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    intermediate: int
    vocab: int
    seq_len: int
    batch: int  # sequences per training step and per sampling step
    warmup: int  # untimed steps (compilation, optimizer state)
    steps: int  # timed training steps
    sample_steps: int  # steps of the timed sampling run (each one unmasks seq_len / sample_steps tokens)

    def overrides(self) -> list[str]:
        """The training config of this model: LLaDA's layout (rope_theta 500000, no biases, untied
        output layer), no dropout, MDLM on a data vocabulary of `vocab` ids, compiled blocks."""
        return [
            "--model.family=llama", f"--model.n_layers={self.n_layers}", f"--model.hidden_size={self.hidden}",
            f"--model.n_heads={self.n_heads}", f"--model.n_kv_heads={self.n_kv_heads}",
            f"--model.intermediate_size={self.intermediate}", f"--model.vocab_size={self.vocab}",
            "--model.rope_theta=500000", "--model.dropout=0.0", f"--data.seq_len={self.seq_len}",
            f"--training.global_batch_size={self.batch}", "--parallel.compile=true", "--runtime.mixed_precision=bf16",
        ]


LLAMA_GPU = LlamaSizes(16, 2048, 16, 8, 5632, 32000, 2048, 8, 2, 5, 8)
LLAMA_DRY = LlamaSizes(2, 64, 4, 2, 176, 256, 32, 2, 1, 2, 4)


@dataclass(frozen=True)
class Sizes:
    """What the measurements run at: the GPU check's sizes or the dry run's tiny ones."""

    preset: str
    seq_len: int
    batch: int  # training global batch (sequences)
    warmup: int  # untimed training steps (compilation, optimizer state)
    steps: int  # timed training steps
    sample_steps: tuple[int, int]  # MDLM at both; EDLM at the first
    sample_repeats: int
    candidates_steps: int  # memory of candidates mode: it does not grow with the steps
    eval_batch: int
    eval_proposals: int  # EDLM bound: n clamped + n free proposals per sequence
    eval_repeats: int
    llama: LlamaSizes


GPU_SIZES = Sizes("small", 1024, 32, 3, 20, (1024, 128), 2, 16, 4, 8, 3, LLAMA_GPU)
DRY_SIZES = Sizes("tiny", 32, 4, 1, 2, (8, 4), 1, 2, 2, 2, 1, LLAMA_DRY)


@dataclass
class Context:
    """What the measurements share: sizes, device, a scratch folder, and results later ones read."""

    sizes: Sizes
    device: torch.device
    data_dir: Path
    work: Path
    corpus: Path | None = None
    mdlm_s_per_sample: dict[int, float] = field(default_factory=dict)

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


@dataclass(frozen=True)
class Check:
    """One guarded measurement: `run` returns its table entries (one or more)."""

    section: str
    name: str
    run: Callable[[Context], list[dict[str, Any]]]


@functools.cache
def tool(name: str) -> ModuleType:
    """tools/<name>.py as a module (tools/ is no package), imported once."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def entry(name: str, summary: str, peak_memory_gib: float | None, measurement: dict[str, Any], *,
          target: str | None = None, target_met: bool | None = None, error: str | None = None) -> dict[str, Any]:
    """One table row and JSON line: the figures in words, and the measurement in full."""
    return {"name": name, "summary": summary, "peak_memory_gib": peak_memory_gib, "target": target,
            "target_met": target_met, "error": error, "measurement": measurement}


def verdict(ctx: Context, met: bool) -> bool | None:
    """A target is judged on the GPU only (the dry run's sizes say nothing about it)."""
    return met if ctx.gpu else None


# ---- the measurements --------------------------------------------------------------------------

def describe_device(ctx: Context) -> list[dict[str, Any]]:
    """The device, versions and settings of this call."""
    from edlm_dist.models.attention import flash_attn_func

    name = tool("bench_train").device_name(ctx.device)
    cuda = f", CUDA {torch.version.cuda}" if ctx.gpu else ""
    details = {"device": name, "torch": torch.__version__, "python": platform.python_version(),
               "cuda": torch.version.cuda, "flash_attn": flash_attn_func is not None,
               "sizes": dataclasses.asdict(ctx.sizes)}
    return [entry(name, f"torch {torch.__version__}{cuda}, Python {platform.python_version()}, flash-attn "
                  f"{'present' if details['flash_attn'] else 'absent (SDPA)'}", None, details)]


def prepare_corpus(ctx: Context) -> list[dict[str, Any]]:
    """GPT-2 token shards of the OpenWebText sample, by tools/prepare_data.py (no zstandard needed)."""
    prepare_data = tool("prepare_data")
    folder = ctx.work / "corpus"
    args = prepare_data.parse_args([
        "--source", str(ctx.data_dir / "owt_sample" / "openwebtext_first100docs.txt"), "--out", str(folder),
        "--tokenizer-path", str(ctx.data_dir / "gpt2_tokenizer"), "--format", "tokens", "--txt-mode", "blank_line",
        "--val-docs", "200", "--workers", "1",
    ])
    manifest = prepare_data.prepare(args)
    ctx.corpus = folder
    train = manifest.splits["train"]
    summary = f"{train['documents']} train documents, {train['tokens']} tokens (GPT-2 BPE, token shards)"
    return [entry("token corpus from owt_sample", summary, None, {"splits": {
        split: {"documents": info["documents"], "tokens": info["tokens"]} for split, info in manifest.splits.items()}})]


def training_entry(ctx: Context, record: dict[str, Any], target: bool) -> dict[str, Any]:
    """The row of a bench_train record; `target`: judged against the MFU target."""
    mfu = record["mfu"]
    mfu_text = "-" if mfu is None else f"{mfu:.1%}"
    summary = (f"{record['dtype']}: {record['tokens_per_s']:,.0f} tokens/s, MFU {mfu_text}, "
               f"step {1e3 * record['step_time_median_s']:.1f} ms (median), warm-up {record['warmup_s']:.1f} s")
    if "data_wait_mean_s" in record:
        summary += f", data wait {1e3 * record['data_wait_mean_s']:.2f} ms/step"
    if not target:
        return entry(record["name"], summary, record["peak_memory_gib"], record)
    return entry(record["name"], summary, record["peak_memory_gib"], record, target=f"MFU >= {MFU_TARGET:.0%}",
                 target_met=verdict(ctx, mfu is not None and mfu >= MFU_TARGET))


def train_direct(ctx: Context, compiled: bool) -> list[dict[str, Any]]:
    """Forward + MDLM loss + backward + clipping + AdamW on random tokens, GPT-2 vocabulary."""
    s = ctx.sizes
    bench = tool("bench_train")
    record = bench.bench_direct(f"direct, {'compiled' if compiled else 'eager'}", s.preset, bench.GPT2_VOCAB,
                                s.seq_len, s.batch, compiled, s.warmup, s.steps, ctx.device, mixed_precision="bf16")
    return [training_entry(ctx, record, target=compiled)]


def trainer_overrides(ctx: Context, compiled: bool) -> list[str]:
    """The Trainer on the prepared corpus at the check's sizes, bf16, without dataloader workers."""
    if ctx.corpus is None:
        raise RuntimeError("no token corpus: its preparation failed (see its row)")
    s = ctx.sizes
    return [
        f"--runtime.device={ctx.device.type}", f"--model.preset={s.preset}", "--model.dropout=0.1",
        "--data.dataset=files", f"--data.path={ctx.corpus}", "--data.tokenizer=gpt2",
        f"--data.tokenizer_path={ctx.data_dir / 'gpt2_tokenizer'}", "--data.num_workers=0",
        f"--data.seq_len={s.seq_len}", f"--training.global_batch_size={s.batch}", "--runtime.mixed_precision=bf16",
        f"--parallel.compile={str(compiled).lower()}",
    ]


def train_trainer(ctx: Context, compiled: bool) -> list[dict[str, Any]]:
    """`Trainer.train_step` on the token corpus: data, masking, loss, backward, AdamW, EMA."""
    bench = tool("bench_train")
    name = f"Trainer on the corpus, {'compiled' if compiled else 'eager'}"
    record = bench.bench_trainer(name, bench.TINY, trainer_overrides(ctx, compiled), ctx.sizes.warmup, ctx.sizes.steps)
    return [training_entry(ctx, record, target=False)]


@contextlib.contextmanager
def one_rank_cluster(device: torch.device) -> Iterator[None]:
    """This process as rank 0 of 1 in a process group (NCCL on CUDA, gloo on the CPU), as
    torchrun --nproc-per-node=1 makes it: the Trainer then shards with FSDP2 on a 1-rank mesh."""
    import torch.distributed as dist

    from edlm_dist.distributed import shutdown

    cuda = device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1,
                            device_id=device if cuda else None)
    try:
        yield
    finally:
        shutdown()


def train_and_save(ctx: Context, cfg: TrainProgram) -> tuple[dict[str, Any], list[float]]:
    """The first Trainer: warm-up and timed steps, an async save, then RESUME_STEPS more steps while
    the save is written; its bench_train record and those steps' losses."""
    from torch.distributed.fsdp import FSDPModule

    from edlm_dist.training import Trainer
    from edlm_dist.runs.device_stats import param_and_optimizer_bytes

    bench, s = tool("bench_train"), ctx.sizes
    trainer = Trainer(cfg)
    if not isinstance(trainer.model, FSDPModule):
        raise RuntimeError(f"the Trainer's model is a {type(trainer.model).__name__}, not sharded by FSDP2")
    warmup_s, times = bench.time_steps(trainer.train_step, trainer.env.device, s.warmup, s.steps)
    dtype = "bf16" if trainer.compute_dtype == torch.bfloat16 else "fp32"
    record = bench.step_record(
        "cluster: world size 1, FSDP2, compiled", trainer.env.device, 1, s.preset, trainer.data.tokenizer.vocab_size,
        s.seq_len, s.batch, True, dtype, s.warmup, warmup_s, times, trainer.flops_per_token,
        param_and_optimizer_bytes(trainer.model, trainer.optimizer), path="fsdp2",
        backend=torch.distributed.get_backend(),
    )
    start = time.perf_counter()
    trainer.save_checkpoint()
    record["async_save_returned_s"] = time.perf_counter() - start
    losses = [trainer.train_step()["train/loss"] for _ in range(RESUME_STEPS)]
    start = time.perf_counter()
    trainer.checkpoints.close()
    record["async_save_commit_wait_s"] = time.perf_counter() - start
    return record, losses


def resumed_losses(cfg: TrainProgram, saved_at: int) -> list[float]:
    """A second Trainer resumes the save of step `saved_at`; the losses of its next RESUME_STEPS steps."""
    from edlm_dist.training import Trainer

    trainer = Trainer(cfg)
    if not trainer.resume() or trainer.step != saved_at:
        raise RuntimeError(f"the resume found step {trainer.step}, expected the async save of step {saved_at}")
    losses = [trainer.train_step()["train/loss"] for _ in range(RESUME_STEPS)]
    trainer.checkpoints.close()
    return losses


def losses_text(losses: list[float]) -> str:
    """Losses as printed in the table."""
    return ", ".join(f"{loss:.6f}" for loss in losses)


def cluster(ctx: Context) -> list[dict[str, Any]]:
    """The cluster path in one process: FSDP2 on a 1-rank mesh, compiled blocks, bf16; timed steps,
    an async DCP save that training overlaps, and a resume that must repeat the next losses."""
    from edlm_dist.config import TrainProgram, load_config

    saved_at = ctx.sizes.warmup + ctx.sizes.steps
    cfg = load_config(TrainProgram, tool("bench_train").TINY, [
        *trainer_overrides(ctx, compiled=True), f"--job.dump_folder={ctx.work}", "--job.name=cluster",
        f"--training.steps={saved_at + RESUME_STEPS}", "--checkpoint.async_save=true", "--metrics.progress=false",
        "--metrics.tensorboard=false",
    ])
    with one_rank_cluster(ctx.device):
        record, straight = train_and_save(ctx, cfg)
        resumed = resumed_losses(cfg, saved_at)
    record.update(losses_uninterrupted=straight, losses_resumed=resumed)
    training = training_entry(ctx, record, target=False)
    training["summary"] += (f"; async save returned in {record['async_save_returned_s']:.2f} s, committed "
                            f"{record['async_save_commit_wait_s']:.2f} s after {RESUME_STEPS} more steps")
    difference = max(abs(a - b) / abs(a) for a, b in zip(straight, resumed))
    tolerance = RESUME_RTOL[ctx.device.type]
    summary = (f"steps {saved_at + 1}-{saved_at + RESUME_STEPS}: losses {losses_text(resumed)} resumed, "
               f"{losses_text(straight)} uninterrupted; max relative difference {difference:.1e} "
               f"(tolerance {tolerance:.0e})")
    error = None if difference <= tolerance else f"the resumed losses differ by {difference:.1e} > {tolerance:.0e}"
    resume = entry("resume of the async save", summary, None, {"difference": difference, "tolerance": tolerance,
                   "resumed": resumed, "uninterrupted": straight}, error=error)
    return [training, resume]


def sampler_spec(ctx: Context, k: int, steps: int, windows: list[float], forwards: bool) -> dict[str, Any]:
    """bench_sampler.measure's settings: one sequence, GPT-2 vocabulary, compiled networks, bf16,
    Gumbel draws."""
    s = ctx.sizes
    return {"preset": s.preset, "seq_len": s.seq_len, "steps": steps, "batch": 1,
            "vocab": tool("bench_sampler").GPT2_VOCAB, "repeats": s.sample_repeats, "gpu": ctx.gpu, "compile": True,
            "draw": "gumbel", "k": k, "world_size": 1, "windows": windows, "forwards": forwards,
            "mixed_precision": "bf16"}


def sample_mdlm(ctx: Context, steps: int) -> list[dict[str, Any]]:
    """MDLM sampling latency of one sequence; the target applies at the first (1024) steps."""
    result = tool("bench_sampler").measure(0, sampler_spec(ctx, 1, steps, [1.0], False))
    run = result["runs"][0]
    ctx.mdlm_s_per_sample[steps] = run["s_per_sample"]
    summary = f"{run['s_per_sample']:.3f} s per sequence, {run['ms_per_step']:.2f} ms/step"
    if steps != ctx.sizes.sample_steps[0]:
        return [entry(f"MDLM, {steps} steps", summary, result["peak_memory_gib"], result)]
    return [entry(f"MDLM, {steps} steps", summary, result["peak_memory_gib"], result,
                  target=f"<= {SAMPLE_TARGET_S:g} s per sequence at 1024 steps",
                  target_met=verdict(ctx, run["s_per_sample"] <= SAMPLE_TARGET_S))]


def sample_edlm(ctx: Context) -> list[dict[str, Any]]:
    """EDLM-AR, k = 2, w = 0.2, against the cost model MDLM x ((1 - w') + w' (1 + k c))."""
    bench, steps = tool("bench_sampler"), ctx.sizes.sample_steps[0]
    if steps not in ctx.mdlm_s_per_sample:
        raise RuntimeError(f"the cost model needs MDLM's time at {steps} steps, which failed (see its row)")
    result = bench.measure(0, sampler_spec(ctx, 2, steps, [0.2], True))
    row = bench.edlm_rows(ctx.mdlm_s_per_sample[steps], [result])[0]
    summary = (f"{row['s_per_sample']:.3f} s per sequence, {row['ms_per_step']:.2f} ms/step; cost model "
               f"{row['predicted_s_per_sample']:.3f} s (c = {row['c']:.3f}, w' = {row['window_fraction']:.3f}), "
               f"measured/model {row['vs_model']:.2f}; candidate draw d = {row['d']:.3f}")
    return [entry(f"EDLM-AR k = 2, w = 0.2, {steps} steps", summary, result["peak_memory_gib"],
                  {**result, "vs_model": row},
                  target=f"within {bench.MODEL_TOLERANCE:.0%} of the cost model",
                  target_met=verdict(ctx, abs(row["vs_model"] - 1) <= bench.MODEL_TOLERANCE))]


def sample_candidates(ctx: Context) -> list[dict[str, Any]]:
    """Memory of candidates mode's k = 16 candidates per step on one rank, window 1."""
    bench = tool("bench_sampler")
    k = bench.CANDIDATES_K
    result = bench.measure(0, sampler_spec(ctx, k, ctx.sizes.candidates_steps, [1.0], False))
    summary = (f"{result['memory_mib']:,.0f} MiB on 1 rank, {result['runs'][0]['ms_per_step']:.1f} ms/step "
               f"(the 2-rank ratio, target <= {bench.MEMORY_TARGET}, needs 2 GPUs)")
    return [entry(f"candidates mode, k = {k}, 1 rank", summary, result["peak_memory_gib"], result)]


def evaluation(ctx: Context) -> list[dict[str, Any]]:
    """Sequences/s of the MDLM NELBO and of the EDLM-AR estimators: of the valid bound, and the
    paper's (random networks, one batch)."""
    s = ctx.sizes
    rows = tool("bench_eval").eval_rows(s.preset, s.seq_len, s.eval_batch, tool("bench_train").GPT2_VOCAB,
                                        [s.eval_proposals], s.eval_repeats, ctx.device, mixed_precision="bf16")
    return [entry(row["estimator"].replace("mdlm", "MDLM").replace("edlm", "EDLM").replace("nelbo", "NELBO")
                  + (f", n = {row['n']}" if row["n"] else "") + f", B = {s.eval_batch}",
                  f"{row['sequences_per_s']:.2f} sequences/s ({row['cost_vs_mdlm']:.1f}x the MDLM NELBO's time)",
                  row["peak_memory_gib"], row) for row in rows]


def llama_model(ctx: Context, training: bool) -> tuple[TrainProgram, LanguageModel]:
    """The ~1B Llama-family denoiser of `ctx.sizes.llama` as the Trainer builds it on the cluster
    path (in a process group of one rank): blocks compiled, FSDP2 on a 1-rank mesh with bf16
    compute and float32 masters, random init; in training mode or not."""
    from edlm_dist.config import TrainProgram, load_config
    from edlm_dist.distributed.parallelize import build_mesh, parallelize_model
    from edlm_dist.models import build_model

    cfg = load_config(TrainProgram, None, [f"--runtime.device={ctx.device.type}", *ctx.sizes.llama.overrides()])
    mesh = build_mesh(cfg.parallel, 1, ctx.device.type)
    prepare = functools.partial(parallelize_model, cfg=cfg.parallel, mesh=mesh, param_dtype=torch.bfloat16)
    model = build_model("dit", cfg.model, cfg.model.vocab_size, ctx.device, prepare=prepare)
    return cfg, model.train(training)


def llama_name(ctx: Context) -> str:
    """The Llama model's row name: its size in words."""
    s = ctx.sizes.llama
    return (f"Llama {s.n_layers} x {s.hidden} ({s.n_heads} heads, {s.n_kv_heads} kv), {s.seq_len} tokens, "
            "FSDP2 1 rank, compiled")


def llama_train(ctx: Context) -> list[dict[str, Any]]:
    """Training steps of the Llama denoiser (forward + MDLM loss + backward + clipping + AdamW on
    random tokens, no EMA or data) on the cluster path; tokens/s, MFU = (6 N + attention) x
    tokens/s / the device's peak, peak memory."""
    from edlm_dist.data import Batch
    from edlm_dist.diffusion import TokenSpace
    from edlm_dist.runs.device_stats import param_and_optimizer_bytes
    from edlm_dist.training import build_optimizer, build_task

    bench, s = tool("bench_train"), ctx.sizes.llama
    with one_rank_cluster(ctx.device):
        cfg, model = llama_model(ctx, training=True)
        optimizer = build_optimizer(model, cfg.optim)
        task = build_task(cfg, TokenSpace.mdlm(s.vocab))
        generator = torch.Generator(device=ctx.device).manual_seed(0)
        x0s = [torch.randint(0, s.vocab, (s.batch, s.seq_len), device=ctx.device, generator=generator)
               for _ in range(2)]
        noises = [task.draw_noise(Batch(x0, range(s.batch), i, s.batch)) for i, x0 in enumerate(x0s)]
        noises = [dataclasses.replace(n, t=n.t.to(ctx.device), uniforms=n.uniforms.to(ctx.device)) for n in noises]
        count = iter(range(10**9))

        def step() -> None:
            i = next(count) % len(x0s)
            (task.sequence_nll(model, x0s[i], noises[i]).sum() / (s.batch * s.seq_len)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        warmup_s, times = bench.time_steps(step, ctx.device, s.warmup, s.steps)
        record = bench.step_record(
            llama_name(ctx), ctx.device, 1, "llama", s.vocab, s.seq_len, s.batch, True, "bf16", s.warmup, warmup_s,
            times, model.flops_per_token(s.seq_len), param_and_optimizer_bytes(model, optimizer), path="fsdp2",
            backend=torch.distributed.get_backend(), parameters=model.num_params(exclude_input_embedding=False),
            llama=dataclasses.asdict(s),
        )
    return [training_entry(ctx, record, target=False)]


def llama_sample(ctx: Context) -> list[dict[str, Any]]:
    """MDLM sampling of `batch` sequences by the Llama denoiser on the cluster path (eval mode, no
    gradients): the time per step (one forward over batch x seq_len tokens, the draw of the
    tokens it unmasks), its forward tokens/s and MFU (flops_per_token / 3 per token), peak memory."""
    from edlm_dist.diffusion import sample
    from edlm_dist.runs.device_stats import device_peak_flops, peak_memory_gib, reset_peak_memory, synchronize

    s = ctx.sizes.llama
    with one_rank_cluster(ctx.device):
        _, model = llama_model(ctx, training=False)

        def run() -> None:
            sample(model, batch_size=s.batch, seq_len=s.seq_len, steps=s.sample_steps, mask_id=s.vocab,
                   generator=torch.Generator(ctx.device).manual_seed(0), device=ctx.device)

        start = time.perf_counter()
        run()  # compiles the blocks' eval graph
        synchronize(ctx.device)
        warmup_s = time.perf_counter() - start
        reset_peak_memory(ctx.device)
        start = time.perf_counter()
        run()
        synchronize(ctx.device)
        step_s = (time.perf_counter() - start) / s.sample_steps
        flops, peak = model.flops_per_token(s.seq_len) / 3, device_peak_flops(ctx.device)
        memory = peak_memory_gib(ctx.device)
    tokens_per_s = s.batch * s.seq_len / step_s
    mfu = flops * tokens_per_s / peak if peak else None
    record = {"name": llama_name(ctx), "batch": s.batch, "seq_len": s.seq_len, "steps": s.sample_steps,
              "step_s": step_s, "forward_tokens_per_s": tokens_per_s, "forward_flops_per_token": flops,
              "mfu": mfu, "warmup_s": warmup_s, "peak_memory_gib": memory}
    mfu_text = "-" if mfu is None else f"{mfu:.1%}"
    summary = (f"{1e3 * step_s:.1f} ms/step over {s.batch} x {s.seq_len} tokens ({s.sample_steps} steps), "
               f"{tokens_per_s:,.0f} tokens/s, forward MFU {mfu_text}, warm-up {warmup_s:.1f} s")
    return [entry(f"sampling step, {llama_name(ctx)}", summary, memory, record)]


def checks(sizes: Sizes) -> list[Check]:
    """Every measurement, in order: the cheap and the target-bearing ones first."""
    long, short = sizes.sample_steps
    return [
        Check("device", "device", describe_device),
        Check("data", "corpus", prepare_corpus),
        Check("training", "direct, eager", functools.partial(train_direct, compiled=False)),
        Check("training", "direct, compiled", functools.partial(train_direct, compiled=True)),
        Check("training", "Trainer, eager", functools.partial(train_trainer, compiled=False)),
        Check("training", "Trainer, compiled", functools.partial(train_trainer, compiled=True)),
        Check("cluster", "FSDP2, async save, resume", cluster),
        Check("sampling", f"MDLM, {long} steps", functools.partial(sample_mdlm, steps=long)),
        Check("sampling", f"MDLM, {short} steps", functools.partial(sample_mdlm, steps=short)),
        Check("evaluation", "MDLM NELBO and EDLM estimators", evaluation),
        Check("sampling", "EDLM k = 2, w = 0.2", sample_edlm),
        Check("sampling", "candidates mode memory", sample_candidates),
        Check("llama", "~1B Llama training step", llama_train),
        Check("llama", "~1B Llama sampling step", llama_sample),
    ]


# ---- running and reporting ---------------------------------------------------------------------

def run_check(check: Check, ctx: Context, deadline: float) -> list[dict[str, Any]]:
    """The check's rows, or one row with its error; its memory freed after. Compiled graphs are
    kept: a later check of the same graph reuses them (the device time is short)."""
    start = time.perf_counter()
    if start > deadline:
        rows = [entry(check.name, "not run", None, {}, error="not started: the time budget (--budget-s) was spent")]
    else:
        try:
            rows = check.run(ctx)
        except Exception as err:  # noqa: BLE001 - record it and go on: the device time is short
            traceback.print_exc()
            message = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            rows = [entry(check.name, "failed", None, {"traceback": traceback.format_exc()}, error=message)]
        finally:
            gc.collect()
            if ctx.gpu:
                torch.cuda.empty_cache()
    wall = time.perf_counter() - start
    return [{"section": check.section, **row, "ok": row["error"] is None, "wall_s": round(wall, 2)} for row in rows]


def cell(text: str) -> str:
    """`text` inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(rows: list[dict[str, Any]], header: str) -> str:
    """The markdown table of all rows so far."""
    verdicts = {True: "met", False: "MISSED", None: "not judged (CPU)"}
    lines = [header, "", "| section | measurement | result | peak memory (GiB) | target | status |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        target = f"{row['target']}: {verdicts[row['target_met']]}" if row["target"] else ""
        memory = "" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.2f}"
        status = "ok" if row["ok"] else f"FAILED: {row['error']}"
        lines.append(f"| {row['section']} | {cell(row['name'])} | {cell(row['summary'])} | {memory} | {cell(target)} "
                     f"| {cell(status)} |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def compile_backend(backend: str) -> Iterator[None]:
    """Every `Module.compile()` of the measured code (the Trainer's blocks, the sampler's networks)
    compiles with `backend`."""
    compile_module = torch.nn.Module.compile

    def compile_with_backend(module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        compile_module(module, *args, **{"backend": backend, **kwargs})

    with mock.patch.object(torch.nn.Module, "compile", compile_with_backend):
        yield


def usage_error(message: str) -> NoReturn:
    """Stop before any measurement: `error: <message>` on stderr, exit status 2 (the project's entry points' way)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def block_modules(names: list[str]) -> None:
    """Make `import NAME` fail as on a machine without NAME (sys.modules[NAME] = None)."""
    for name in names:
        if sys.modules.get(name) is not None:
            usage_error(f"--block-modules: {name} is imported already, too late to block it")
        sys.modules[name] = None


def data_folder() -> Path:
    """$EDLM_DATA_DIR, checked for the files the check reads before any device time is spent."""
    setting = os.environ.get("EDLM_DATA_DIR", "")
    for needed in ("owt_sample/openwebtext_first100docs.txt", "gpt2_tokenizer/encoder.json"):
        if not setting or not (Path(setting) / needed).is_file():
            usage_error(f"EDLM_DATA_DIR={setting!r} has no {needed} (the shared data folder)")
    return Path(setting)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="folder of results.jsonl and table.md (default gpu_check)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results.jsonl and table.md of --out")
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same code paths on the CPU at tiny sizes")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    parser.add_argument("--batch", type=int, default=0,
                        help="training global batch (default 32 GPU, 4 dry run; at most 101: the corpus's blocks)")
    parser.add_argument("--budget-s", type=float, default=400,
                        help="start no measurement after this many seconds (default 400: the call ends within 8 min)")
    parser.add_argument("--compile-backend", default="",
                        help="torch.compile backend (default inductor; aot_eager in the dry run)")
    parser.add_argument("--block-modules", default="", help="comma-separated modules whose import must fail")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section {sorted(unknown)[0]!r} (sections: {', '.join(SECTIONS)})")
    if args.batch < 0:
        parser.error(f"--batch must be >= 1 (0: the default), got {args.batch}")
    return args


def table_header(args: argparse.Namespace, sizes: Sizes, backend: str) -> str:
    """What the table's figures were measured with."""
    memory = "the process's max RSS (it cannot be reset)" if args.cpu_dry_run else "the CUDA allocator's peak"
    return (f"# GPU check{' (CPU dry run)' if args.cpu_dry_run else ''}, {time.strftime('%Y-%m-%d %H:%M')}\n\n"
            f"sizes: {dataclasses.asdict(sizes)}; torch.compile backend: {backend}; "
            f"blocked modules: {args.block_modules or 'none'}; peak memory: {memory}")


def append_row(out: Path, row: dict[str, Any]) -> None:
    """Add one row to results.jsonl at once (a call cut short keeps what it measured) and show it."""
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
    print(f"[gpu_check]           {row['name']}: {row['summary']}" + ("" if row["ok"] else f"  FAILED: {row['error']}"),
          flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the checks, writing results.jsonl and table.md as they come; 1 when any check failed."""
    args = parse_args(argv)
    block_modules([name for name in args.block_modules.split(",") if name])
    data_dir = data_folder()
    if not args.cpu_dry_run and not torch.cuda.is_available():
        usage_error("no CUDA device here; --cpu-dry-run runs the same code paths on the CPU")
    sizes = DRY_SIZES if args.cpu_dry_run else GPU_SIZES
    sizes = dataclasses.replace(sizes, batch=args.batch or sizes.batch)
    backend = args.compile_backend or ("aot_eager" if args.cpu_dry_run else "inductor")
    if args.cpu_dry_run:
        torch.set_num_threads(1)  # 2 threads on 2 shared cores oversubscribe: steps ran 20x slower
    out, header = Path(args.out), table_header(args, sizes, backend)
    try:
        refuse_existing([out / "results.jsonl", out / "table.md"], args.overwrite)
    except StorageError as err:
        usage_error(str(err))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("")
    only = set(args.only.split(",")) | {"device", "data"}
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work, compile_backend(backend):
        device = torch.device("cpu") if args.cpu_dry_run else torch.device("cuda", 0)
        ctx = Context(sizes, device, data_dir, Path(work))
        for check in (c for c in checks(sizes) if c.section in only):
            print(f"[gpu_check] {time.perf_counter() - started:6.1f} s  {check.section}: {check.name}", flush=True)
            for row in run_check(check, ctx, started + args.budget_s):
                rows.append(row)
                append_row(out, row)
            (out / "table.md").write_text(render_table(rows, header))
    print(f"\n{render_table(rows, header)}\n[gpu_check] {time.perf_counter() - started:.1f} s in all; "
          f"results in {out}/")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
