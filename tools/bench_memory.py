"""Peak memory measured on a CPU against the memory plan (edlm_dist.runs.memory_plan), one JSON line
per phase of each case; or, with --plan, the plan of any training config at any world sizes.

How the peak is measured: each case runs in a fresh process whose glibc mmap threshold is fixed at
64 KiB (MALLOC_MMAP_THRESHOLD_), so every tensor buffer above that is a mapping of its own, given
back to the system when freed, and the resident set follows the live tensors. Before each phase
the kernel's peak-RSS mark is reset (/proc/self/clear_refs "5"); the phase's peak is the mark after
it less the RSS before it, plus the bytes of the tensors held before it (parameters, AdamW state,
EMA, the sampler's models: counted from the tensors themselves). A warm-up with the debug config
first loads the libraries and starts the thread pools, which the plan does not count; the data
(built before the phases) is not counted either. The training phases are two optimizer steps
(after one that creates the AdamW state), one validation and the end-of-run samples, each compared
with the plan's resident bytes plus its largest phase of that kind.

usage:
  python tools/bench_memory.py [--out FILE] [--cases tiny,tiny-2ranks,...]   # CPU, ~5 min on 2 cores
  python tools/bench_memory.py --plan configs/owt.toml --world-sizes 1,8,64 --device cuda [--key=value ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from edlm_dist.config import SampleProgram, TrainProgram, load_config
from edlm_dist.diffusion import build_schedule, sample
from edlm_dist.distributed import shutdown
from edlm_dist.energy import AREnergy
from edlm_dist.energy.loading import resolve_model_config
from edlm_dist.models import build_model
from edlm_dist.runs.device_stats import local_bytes
from edlm_dist.runs.memory_plan import MemoryPlan, planned_vocab_size, sampling_plan, training_plan
from edlm_dist.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH_RESULT "
COMMON = ["--runtime.device=cpu", "--metrics.progress=false", "--metrics.tensorboard=false",
          "--checkpoint.enable=false", "--sample.steps=8"]
ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
# which of a plan's phases each measured phase is compared with (by the start of their names)
PHASE_GROUPS = {
    "training step": ("forward", "loss backward", "blocks backward", "optimizer step", "negatives"),
    "validation": ("validation",),
    "end-of-run samples": ("samples",),
    "sampling": ("samples",),
}


@dataclass(frozen=True)
class Case:
    """A configuration to measure: a training config with overrides on `ranks` processes (an NCE
    config against a denoiser trained for one step first), or (`sampling`) the sampler's EDLM-AR
    importance sampling with models of that config's shapes."""

    config: str
    overrides: tuple[str, ...] = ()
    ranks: int = 1
    sampling: bool = False
    needs_data: bool = False


LARGER = ("--model.hidden_size=256", "--data.seq_len=256", "--training.global_batch_size=16", "--model.dropout=0.1")
CASES = {
    "tiny": Case("configs/tiny.toml"),
    "tiny-2ranks": Case("configs/tiny.toml", ranks=2),
    "larger": Case("configs/tiny.toml", LARGER),
    "larger-checkpointed": Case("configs/tiny.toml", (*LARGER, "--parallel.activation_checkpoint=full",
                                                       "--training.micro_batch_size=8")),
    "tiny-nce": Case("configs/tiny_nce.toml"),
    # a Llama-family denoiser: grouped-query attention, SwiGLU, RoPE, on the synthetic corpus's 64 ids
    "llama-tiny": Case("configs/tiny.toml", ("--model.family=llama", "--model.vocab_size=64", "--model.n_kv_heads=2",
                                             "--model.intermediate_size=344", "--data.synthetic_states=63",
                                             "--model.dropout=0.1", "--data.seq_len=128")),
    "ptb-words-ar": Case("configs/tiny.toml", ("--data.dataset=ptb", "--data.tokenizer=word", "--training.task=ar",
                                               "--training.global_batch_size=16", "--metrics.eval_batch_size=16"),
                         needs_data=True),
    "sampling-edlm-ar": Case("configs/tiny.toml", ("--data.synthetic_states=2047", "--data.seq_len=128"),
                             sampling=True),
}


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def measure(phase: Callable[[], Any], held: Callable[[], int]) -> int:
    """Peak bytes of tensors during `phase`: the peak RSS growth over the start, plus `held()`
    bytes of tensors alive at the start."""
    gc.collect()
    before, already = rss(), held()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    phase()
    return peak_rss() - before + already


def record(name: str, phase: str, measured: int, plan: MemoryPlan, **extra: Any) -> dict[str, Any]:
    """One result line: the measured peak against the plan's resident bytes plus its largest phase
    of the kind measured."""
    planned = plan.resident + max(size for planned_phase, size in plan.phase_bytes().items()
                                  if planned_phase.startswith(PHASE_GROUPS[phase]))
    return {"case": name, "phase": phase, "measured_mib": round(measured / 2**20, 1),
            "plan_mib": round(planned / 2**20, 1), "plan_over_measured": round(planned / measured, 3),
            "setting": plan.setting, **extra}


def trainer_held(trainer: Trainer) -> int:
    """Bytes of the trainer's parameters, AdamW state, EMA and (NCE) frozen denoiser."""
    states = [v for state in trainer.optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    ema = trainer.ema.shadow if trainer.ema is not None else []
    denoiser = getattr(trainer.task, "denoiser", None)
    frozen = list(denoiser.parameters()) if denoiser is not None else []
    return local_bytes([*trainer.model.parameters(), *states, *ema, *frozen])


def warm_up(dump: str) -> None:
    """One debug run's step, validation and samples: libraries loaded, thread pools started."""
    trainer = Trainer(load_config(TrainProgram, ROOT / "configs" / "debug.toml",
                                  [*COMMON, f"--job.dump_folder={dump}", "--model.dropout=0.1"]))
    trainer.train_step()
    trainer.evaluate()
    trainer.generate(2)
    del trainer
    gc.collect()


def bench_training(name: str, case: Case, dump: str) -> list[dict[str, Any]]:
    """The trainer's phases (steps, validation, samples) against its plan at this world size."""
    cfg = load_config(TrainProgram, ROOT / case.config, [*COMMON, f"--job.dump_folder={dump}", *case.overrides])
    if cfg.training.task == "nce":  # its frozen denoiser: the tiny MDLM after one step
        Trainer(load_config(TrainProgram, ROOT / "configs" / "tiny.toml", [
            *COMMON, f"--job.dump_folder={dump}", "--job.name=denoiser", "--training.steps=1",
            "--checkpoint.enable=true", "--sample.num_samples=1"])).run()
        cfg = resolve_model_config(replace(cfg, nce=replace(cfg.nce, denoiser=str(Path(dump) / "denoiser"))))
    trainer = Trainer(cfg)
    trainer.train_step()  # creates the AdamW state
    plan = training_plan(cfg, trainer.env.world_size, trainer.data.tokenizer.vocab_size, "cpu")
    phases = {"training step": lambda: [trainer.train_step() for _ in range(2)], "validation": trainer.evaluate,
              "end-of-run samples": lambda: trainer.generate(cfg.sample.num_samples)}
    return [record(name, phase, measure(run, partial(trainer_held, trainer)), plan, ranks=trainer.env.world_size)
            for phase, run in phases.items()]


def bench_sampling(name: str, case: Case) -> list[dict[str, Any]]:
    """EDLM-AR importance sampling of one batch (random weights: memory does not depend on them)."""
    train_cfg = load_config(TrainProgram, ROOT / case.config, list(case.overrides))
    cfg = load_config(SampleProgram, None, ["--runtime.device=cpu", "--energy.kind=ar", "--sample.num_candidates=4",
                                            "--sample.batch_size=4", "--sample.steps=8", "--energy.max_batch=8"])
    vocab = planned_vocab_size(train_cfg.data)
    denoiser = build_model("dit", train_cfg.model, vocab).eval()
    ar_model = build_model("ar", train_cfg.model, vocab)
    energy = AREnergy(ar_model, max_batch=cfg.energy.max_batch)
    s = cfg.sample
    ar_cfg = load_config(TrainProgram, ROOT / case.config, [*case.overrides, "--training.task=ar"])
    plan = sampling_plan(cfg, train_cfg, vocab, ar_cfg, 1, "cpu")
    generator = torch.Generator().manual_seed(0)

    def run() -> None:
        with torch.no_grad():
            sample(denoiser, batch_size=s.batch_size, seq_len=train_cfg.data.seq_len, mask_id=vocab, steps=s.steps,
                   schedule=build_schedule("loglinear", 1e-3), energy=energy, num_candidates=s.num_candidates,
                   window=s.window, generator=generator, candidate_draw=s.candidate_draw)

    weights = [*denoiser.parameters(), *ar_model.parameters()]
    return [record(name, "sampling", measure(run, partial(local_bytes, weights)), plan, ranks=1)]


def worker(spec: str) -> None:
    """One case in this (fresh) process; under torchrun every rank measures, rank 0 reports."""
    args = json.loads(spec)
    case = Case(**{**args["case"], "overrides": tuple(args["case"]["overrides"])})
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as dump:
        warm_up(dump)
        records = bench_sampling(args["name"], case) if case.sampling else bench_training(args["name"], case, dump)
    if int(os.environ.get("RANK", "0")) == 0:
        for line in records:
            print(RESULT_TAG + json.dumps(line), flush=True)
    shutdown()


def launch(name: str, case: Case) -> list[dict[str, Any]]:
    """Run one case in a fresh process (under torchrun for several ranks, one thread each)."""
    spec = json.dumps({"name": name, "case": case.__dict__})
    script = [str(Path(__file__).resolve()), "--worker", spec]
    env = {**os.environ, **ENV}
    if case.ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={case.ranks}", *script]
        env["OMP_NUM_THREADS"] = "1"
    else:
        cmd = [sys.executable, *script]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    lines = [json.loads(line[len(RESULT_TAG):]) for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if not lines:
        print(f"[bench] {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
    return [{**line, "wall_s": round(time.perf_counter() - start, 1)} for line in lines]


def print_plans(config: str, world_sizes: list[int], device: str, overrides: list[str]) -> None:
    """The plan of a training config at each world size (FSDP2 on every one, as torchrun runs it)."""
    cfg = load_config(TrainProgram, config, overrides)
    for world in world_sizes:
        print(training_plan(cfg, world, planned_vocab_size(cfg.data), device, sharded=True).table(), end="\n\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--plan", metavar="CONFIG", help="print the plans of this training config instead")
    parser.add_argument("--world-sizes", default="1,8,64", help="--plan: comma-separated world sizes")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="--plan: the device type")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    if args.worker:
        worker(args.worker)
        return
    if args.plan:
        print_plans(args.plan, [int(w) for w in args.world_sizes.split(",")], args.device, overrides)
        return
    for name in args.cases.split(","):
        case = CASES[name]
        if case.needs_data and not os.environ.get("EDLM_DATA_DIR"):
            print(f"[bench] {name} skipped: EDLM_DATA_DIR is not set", file=sys.stderr)
            continue
        for line in launch(name, case):
            text = json.dumps(line)
            print(text, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(text + "\n")


if __name__ == "__main__":
    main()
