"""Training throughput, MFU and memory per configuration, printed as one JSON line each.

Default (CPU): the tiny config, eager vs compiled in this process (1 rank), and eager on 2 ranks
(this script relaunched under torchrun with OMP_NUM_THREADS=1, rank 0 reporting). `--gpu`: the
`small` DiT at 1024 tokens in bf16 through the trainer (synthetic data, vocabulary of
`--gpu-states` + 1 tokens), eager vs compiled, then a direct forward+backward+AdamW step on
random tokens at the exact GPT-2 vocabulary (50257), which is what the MFU target refers to.

MFU = flops_per_token (6 N + 12 L H Q T) x tokens/s per device / the device's dense bf16 peak.
Trainer rows also time the finiteness check of parameters, optimizer state and EMA that follows
every update (`state_check_mean_s`, and its fraction of the step time).

usage: python tools/bench_train.py [--gpu] [--out FILE] [--warmup N] [--steps N] [--gpu-states S] [--gpu-batch B]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from edlm_dist.config import TrainProgram, load_config
from edlm_dist.data import Batch
from edlm_dist.diffusion import TokenSpace
from edlm_dist.distributed import autocast, compute_dtype, first_nonfinite, shutdown
from edlm_dist.distributed.parallelize import apply_compile
from edlm_dist.models import build_model
from edlm_dist.training import Trainer, build_optimizer, build_task
from edlm_dist.runs.device_stats import (
    device_peak_flops,
    param_and_optimizer_bytes,
    peak_memory_gib,
    reset_peak_memory,
    synchronize,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")
GPT2_VOCAB = 50257
RESULT_TAG = "BENCH_RESULT "  # prefix of the worker's line on rank 0
COMMON = ["--metrics.progress=false", "--metrics.tensorboard=false", "--checkpoint.enable=false"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU ({line.split(':', 1)[1].strip()}, {os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def time_steps(step: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> tuple[float, list[float]]:
    """Run `warmup` steps (compilation, lazy optimizer state), then time `steps` steps;
    returns the warm-up's total time and the step times."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    reset_peak_memory(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return warmup_s, times


def step_record(
    name: str, device: torch.device, world_size: int, preset: str, vocab: int, seq_len: int, batch: int,
    compiled: bool, dtype: str, warmup: int, warmup_s: float, times: list[float], flops_per_token: float,
    param_bytes: int, **extra: Any,
) -> dict[str, Any]:
    """One result line; tokens/s from the summed (synchronised) step times."""
    tokens_per_s = batch * seq_len * len(times) / sum(times)
    peak = device_peak_flops(device)
    return {
        "name": name,
        "device": device_name(device),
        "world_size": world_size,
        "preset": preset,
        "vocab_size": vocab,
        "seq_len": seq_len,
        "global_batch": batch,
        "compiled": compiled,
        "dtype": dtype,
        "warmup_steps": warmup,
        "warmup_s": round(warmup_s, 2),
        "steps": len(times),
        "tokens_per_s": round(tokens_per_s, 1),
        "tokens_per_s_per_device": round(tokens_per_s / world_size, 1),
        "step_time_mean_s": round(statistics.mean(times), 5),
        "step_time_median_s": round(statistics.median(times), 5),
        "flops_per_token": flops_per_token,
        "mfu": round(flops_per_token * tokens_per_s / world_size / peak, 4) if peak else None,
        "peak_memory_gib": round(peak_memory_gib(device), 3),
        "param_optim_bytes_per_rank": param_bytes,
        "param_optim_ratio_vs_1rank": None,  # filled in by main() where a 1-rank figure exists
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        **extra,
    }


def bench_trainer(name: str, config: str, overrides: list[str], warmup: int, steps: int) -> dict[str, Any]:
    """Time `Trainer.train_step` for one config (in this process; under torchrun, on every rank)."""
    with tempfile.TemporaryDirectory() as dump:
        cfg = load_config(TrainProgram, config, [*COMMON, f"--job.dump_folder={dump}", f"--training.steps={warmup + steps}",
                                   *overrides])
        trainer = Trainer(cfg)
        device, world = trainer.env.device, trainer.env.world_size
        waits: list[float] = []  # the trainer's own data-wait figure per step
        warmup_s, times = time_steps(
            lambda: waits.append(trainer.train_step()["train/data_wait_s"]), device, warmup, steps
        )
        bf16 = trainer.compute_dtype == torch.bfloat16
        record = step_record(
            name, device, world, cfg.model.preset, trainer.data.tokenizer.vocab_size, cfg.data.seq_len,
            cfg.training.global_batch_size, cfg.parallel.compile, "bf16" if bf16 else "fp32", warmup, warmup_s,
            times, trainer.flops_per_token, param_and_optimizer_bytes(trainer.model, trainer.optimizer),
            path="trainer", dropout=cfg.model.dropout,
            data_wait_mean_s=round(statistics.mean(waits[warmup:]), 5),
        )
        # the check of parameters, optimizer state and EMA that follows every update (inside the
        # step times above too), timed alone
        _, checks = time_steps(lambda: first_nonfinite(trainer.named_state()), device, 1, steps)
        record.update(state_check_mean_s=round(statistics.mean(checks), 6),
                      state_check_fraction_of_step=round(statistics.mean(checks) / statistics.mean(times), 4))
        return record


def bench_direct(
    name: str, preset: str, vocab: int, seq_len: int, batch: int, compiled: bool, warmup: int, steps: int,
    device: torch.device, dropout: float = 0.1, mixed_precision: str = "auto",
) -> dict[str, Any]:
    """Time forward + MDLM loss + backward + clip + AdamW on random tokens (no data, EMA or trainer).

    Autocast as `runtime.mixed_precision` says (auto: bf16 on CUDA, fp32 elsewhere); `compiled`
    compiles each block, as the trainer does.
    """
    cfg = load_config(TrainProgram, None, [f"--model.preset={preset}", f"--model.dropout={dropout}", f"--data.seq_len={seq_len}"])
    prepare = (lambda m: apply_compile(m.blocks)) if compiled else None
    model = build_model("dit", cfg.model, vocab, device, prepare=prepare)
    optimizer = build_optimizer(model, cfg.optim)
    task = build_task(cfg, TokenSpace.mdlm(vocab))
    generator = torch.Generator(device=device).manual_seed(0)
    x0s = [torch.randint(0, vocab, (batch, seq_len), device=device, generator=generator) for _ in range(4)]
    noises = [task.draw_noise(Batch(x0, range(batch), i, batch)) for i, x0 in enumerate(x0s)]
    noises = [dataclasses.replace(n, t=n.t.to(device), uniforms=n.uniforms.to(device)) for n in noises]
    dtype = compute_dtype(mixed_precision, device)
    count = iter(range(10**9))

    def step() -> None:
        i = next(count) % len(x0s)
        with autocast(device, dtype):
            nll = task.sequence_nll(model, x0s[i], noises[i])
        (nll.sum() / (batch * seq_len)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    warmup_s, times = time_steps(step, device, warmup, steps)
    return step_record(
        name, device, 1, preset, vocab, seq_len, batch, compiled, "bf16" if dtype == torch.bfloat16 else "fp32", warmup,
        warmup_s, times, model.flops_per_token(seq_len), param_and_optimizer_bytes(model, optimizer), path="direct",
        dropout=dropout,
    )


def launch_ranks(name: str, nproc: int, config: str, overrides: list[str], warmup: int, steps: int,
                 env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Run `bench_trainer` on `nproc` ranks under torchrun; rank 0's record, or None on failure."""
    spec = json.dumps({"name": name, "config": config, "overrides": overrides, "warmup": warmup, "steps": steps})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(Path(__file__).resolve()), "--worker", spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    print(f"[bench] {name}: {nproc}-rank run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
    return None


def worker(spec: str) -> None:
    """Entry point of each torchrun rank: benchmark, rank 0 prints its record."""
    args = json.loads(spec)
    record = bench_trainer(args["name"], args["config"], args["overrides"], args["warmup"], args["steps"])
    if int(os.environ.get("RANK", "0")) == 0:
        print(RESULT_TAG + json.dumps(record), flush=True)
    shutdown()


def _guarded(name: str, run: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
    """A config that fails (e.g. out of memory) is reported on stderr and skipped."""
    try:
        return run()
    except Exception as err:  # noqa: BLE001 - keep benchmarking the other configs
        print(f"[bench] {name} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return None
    finally:
        torch.compiler.reset()  # drop compiled graphs (and the modules they hold) between configs
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def cpu_suite(args: argparse.Namespace) -> Iterator[dict[str, Any] | None]:
    """Tiny config: eager vs compiled at 1 rank, then eager at 2 ranks (1 thread each)."""
    w, s = args.warmup or 3, args.steps or 30
    cpu = ["--runtime.device=cpu"]
    for compiled in (False, True):
        name = f"cpu-tiny-{'compiled' if compiled else 'eager'}-1rank"
        flags = [*cpu, f"--parallel.compile={str(compiled).lower()}"]
        yield _guarded(name, lambda: bench_trainer(name, TINY, flags, w, s))
    threads = torch.get_num_threads()
    two = launch_ranks("cpu-tiny-eager-2rank", 2, TINY, cpu, w, s, env={"OMP_NUM_THREADS": "1"})
    if two is not None:
        two["note"] = f"OMP_NUM_THREADS=1 per rank (the 1-rank runs use {threads} threads); same global batch"
    yield two


def gpu_suite(args: argparse.Namespace) -> Iterator[dict[str, Any] | None]:
    """small DiT, 1024 tokens, bf16: the trainer eager vs compiled (synthetic vocabulary of
    `--gpu-states` + 1), the direct step at the GPT-2 vocabulary, and 2 ranks if there are 2 GPUs."""
    w, s, batch = args.warmup or 5, args.steps or 20, args.gpu_batch
    base = ["--runtime.device=cuda", "--model.preset=small", "--model.dropout=0.1", "--data.seq_len=1024",
            f"--data.synthetic_states={args.gpu_states}", f"--training.global_batch_size={batch}",
            "--runtime.mixed_precision=bf16"]
    for compiled in (False, True):
        name = f"gpu-small-{'compiled' if compiled else 'eager'}-1rank-trainer"
        flags = [*base, f"--parallel.compile={str(compiled).lower()}"]
        yield _guarded(name, lambda: bench_trainer(name, TINY, flags, w, s))
    for compiled in (False, True):
        name = f"gpu-small-{'compiled' if compiled else 'eager'}-1rank-direct-gpt2vocab"
        yield _guarded(name, lambda: bench_direct(name, "small", GPT2_VOCAB, 1024, batch, compiled, w, s,
                                                  torch.device("cuda", 0)))
    if torch.cuda.device_count() >= 2:
        yield launch_ranks("gpu-small-compiled-2rank-trainer", 2, TINY, [*base, "--parallel.compile=true"], w, s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="the GPU measurements (skipped without CUDA)")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps first (default 3 CPU, 5 GPU)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (default 30 CPU, 20 GPU)")
    parser.add_argument("--gpu-states", type=int, default=2046,
                        help="synthetic Markov states on GPU (vocab = states + 1; 50256 is infeasible to build)")
    parser.add_argument("--gpu-batch", type=int, default=64, help="global batch (sequences) on GPU")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    if args.gpu and not torch.cuda.is_available():
        print("[bench] --gpu: no CUDA device available, GPU benchmark skipped", file=sys.stderr)
        return
    single: dict[tuple[str, int], int] = {}  # 1-rank param+optimizer bytes per (preset, vocabulary)
    for record in gpu_suite(args) if args.gpu else cpu_suite(args):
        if record is None:
            continue
        key, own = (record["preset"], record["vocab_size"]), record["param_optim_bytes_per_rank"]
        if record["world_size"] == 1:
            single.setdefault(key, own)
        if key in single:
            record["param_optim_ratio_vs_1rank"] = round(own / single[key], 4)
        line = json.dumps(record)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
