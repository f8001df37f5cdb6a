"""Speed and memory of sampling: MDLM against EDLM importance sampling, and EDLM's candidates mode.

Randomly initialised networks of one size preset (the weights do not change the cost): a DiT
denoiser and, as the energy, an AR transformer of the same size through `AREnergy` (EDLM-AR).
For B = --batch sequences of --seq-len tokens and --steps steps it measures:

1. the time per step and per sample of `sample(...)`: MDLM (k = 1, no energy), and EDLM at
   every k in --ks and window w in --windows;
2. c_k = (one energy call over the k*B candidates / k) / (one denoiser forward over B), from
   isolated calls at a half-masked state (the average state of a run), and the cost model's
   time per sample MDLM * ((1 - w') + w' (1 + k c_k)). w' is the fraction of steps that fell
   in the window (the sampler's rule is i / steps <= w: 4 of 16 steps for w = 0.2). `vs model`
   = measured / predicted; the target is within 10%. The model leaves out the drawing of the k
   candidates (float64 Gumbel-max over k x masked positions x vocabulary); column d is that
   draw's isolated time in the units of c (per candidate, over the denoiser forward);
3. the peak memory per rank of each k;
4. candidates mode (`RankPool`: the k = 16 candidates of a step split over the ranks) at 1 and
   2 ranks, window 1.0: time per step and peak memory per rank (target: 2 ranks <= 0.6 x 1).

Every step calls the networks: the denoiser is time-conditioned (`reads_time` True), so the
sampler never reuses an output across steps (it would skip the forwards of steps where no token
unmasks). `AREnergy(max_batch=k*B)` scores all the candidates of a step in one forward per rank,
as the cost model assumes; a smaller max_batch would chunk the forward, cap its activations and
hide the memory that candidates mode saves.

Each k, and each world size of candidates mode, runs in a fresh process
(`torch.multiprocessing.spawn`; gloo on CPU, NCCL with one GPU per rank), so no memory figure
carries over. Peak memory: on GPU the CUDA allocator's peak over the timed runs (weights
included); on CPU the growth of the process's max RSS from after the models are built to the
end of sampling, warm-up included (the RSS peak cannot be reset; the absolute peak, in the JSON,
is mostly the Python/torch runtime). Times are medians of --repeats runs after a 2-step
warm-up, synchronised on CUDA. --gpu: CUDA with bf16 autocast for the networks. On CPU,
--threads is the total thread count (each of 2 ranks gets half); on a machine shared with other
jobs use fewer threads than cores: oversubscribed intra-op threads made steps 70x slower here.

usage: python tools/bench_sampler.py [--preset tiny|small] [--seq-len L] [--steps S] [--batch B] [--ks 2,4,16]
       [--windows 0.2,1.0] [--vocab V] [--repeats N] [--threads N] [--gpu] [--compile] [--skip-ranks] [--draw gumbel|inverse_cdf] [--json PATH]
       [--overwrite]

--json PATH writes all results there (atomically); an existing PATH is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

from edlm_dist.config import exit_on_user_error
from edlm_dist.config.schema import MODEL_PRESETS, ModelConfig
from edlm_dist.diffusion import SamplingStats, draw_candidates, sample
from edlm_dist.diffusion.sampling import CANDIDATE_DRAWS
from edlm_dist.distributed import RankPool, autocast, compute_dtype, init_distributed, shutdown
from edlm_dist.energy import AREnergy
from edlm_dist.fileio import atomic_write_text, refuse_existing
from edlm_dist.models import build_model
from edlm_dist.runs.device_stats import median_seconds, peak_memory_gib, reset_peak_memory, synchronize

CANDIDATES_K = 16
GPT2_VOCAB = 50257
CPU_VOCAB = 1024  # the default vocabulary on CPU: GPT-2's makes the k = 16 candidate draws take minutes
WARMUP_STEPS = 2
MODEL_TOLERANCE = 0.10
MEMORY_TARGET = 0.6


def _forward_costs(
    denoiser: torch.nn.Module, energy: AREnergy, k: int, spec: dict[str, Any], device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Isolated denoiser forward over B, energy call and candidate draw over k*B, at half masking."""
    batch, seq_len, vocab = spec["batch"], spec["seq_len"], spec["vocab"]
    gen = torch.Generator(device).manual_seed(2)
    xt = torch.randint(0, vocab, (batch, seq_len), device=device, generator=gen)
    masked = torch.rand((batch, seq_len), device=device, generator=gen) < 0.5
    xt[masked] = vocab
    t = torch.full((batch,), 0.5, device=device)
    reps = 20 if device.type == "cuda" else 5
    with torch.no_grad(), autocast(device, dtype):
        denoiser_s = median_seconds(lambda: denoiser(xt, t), device, reps)
        logits = denoiser(xt, t)
        draw = lambda: draw_candidates(logits, xt, masked, k, vocab, gen, method=spec["draw"])  # noqa: E731
        draw_s = median_seconds(draw, device, reps)
        candidates, logp = draw()
        args = (candidates.reshape(k * batch, seq_len), xt.repeat_interleave(k, 0), t.repeat_interleave(k),
                logp.reshape(-1))
        energy_s = median_seconds(lambda: energy(*args), device, reps)
    return {"denoiser_forward_s": denoiser_s, "energy_call_s": energy_s, "draw_s": draw_s,
            "c": energy_s / k / denoiser_s, "d": draw_s / k / denoiser_s}


def measure(rank: int, spec: dict[str, Any]) -> dict[str, Any]:
    """One rank's share of a configuration: timed `sample` runs per window, peak memory and, if
    spec["forwards"], the isolated forward costs."""
    k, world, batch, steps = spec["k"], spec["world_size"], spec["batch"], spec["steps"]
    gpu = spec["gpu"]
    env = init_distributed("cuda" if gpu else "cpu", "nccl" if gpu else "gloo", 300)
    device = env.device

    def say(message: str) -> None:
        if rank == 0:
            print(f"[bench]   {message}")

    config = ModelConfig(preset=spec["preset"], **MODEL_PRESETS[spec["preset"]], dropout=0.0, time_conditioning=True)
    denoiser = build_model("dit", config, spec["vocab"], device, seed=0).eval()
    energy = AREnergy(build_model("ar", config, spec["vocab"], device, seed=1), max_batch=k * batch) if k > 1 else None
    if spec["compile"]:
        denoiser.compile()
        if energy is not None:
            energy.ar_model.compile()
    pool = RankPool() if world > 1 else None
    dtype = compute_dtype(spec["mixed_precision"], device)

    def run(window: float, n_steps: int, stats: SamplingStats) -> None:
        with autocast(device, dtype):
            sample(denoiser, batch_size=batch, seq_len=spec["seq_len"], mask_id=spec["vocab"], steps=n_steps,
                   energy=energy, num_candidates=k, window=window,
                   generator=torch.Generator(device).manual_seed(0),
                   candidate_generator=torch.Generator(device).manual_seed(1 + rank),
                   pool=pool, stats=stats, candidate_draw=spec["draw"], device=device)

    before = peak_memory_gib(device)
    start = time.perf_counter()
    run(1.0, min(WARMUP_STEPS, steps), SamplingStats())
    synchronize(device)
    say(f"warm-up ({min(WARMUP_STEPS, steps)} steps) {time.perf_counter() - start:.1f} s")
    reset_peak_memory(device)
    runs = []
    for window in spec["windows"]:
        stats, times = SamplingStats(), []
        for _ in range(spec["repeats"]):
            synchronize(device)
            start = time.perf_counter()
            run(window, steps, stats)
            synchronize(device)
            times.append(time.perf_counter() - start)
        taken, median = stats.steps / len(times), statistics.median(times)
        runs.append({"window": window, "steps_taken": taken, "window_fraction": stats.energy_calls / len(times) / taken,
                     "times_s": times, "ms_per_step": 1e3 * median / taken, "s_per_sample": median / batch})
        say(f"window {window}: {median:.2f} s per run, {1e3 * median / taken:.1f} ms/step")
    peak = peak_memory_gib(device)
    result: dict[str, Any] = {
        "k": k, "world_size": world, "rank": rank, "k_local": pool.local_count(k) if pool else k, "runs": runs,
        "peak_memory_gib": peak, "memory_growth_gib": None if gpu else peak - before,
        "memory_mib": 1024 * (peak if gpu else peak - before),
    }
    if spec["forwards"] and energy is not None:
        result.update(_forward_costs(denoiser, energy, k, spec, device, dtype))
        say(f"isolated: denoiser over B {1e3 * result['denoiser_forward_s']:.1f} ms, energy over k*B "
            f"{1e3 * result['energy_call_s']:.1f} ms, draw of k {1e3 * result['draw_s']:.1f} ms -> "
            f"c = {result['c']:.3f}, d = {result['d']:.3f}")
    return result


def worker(rank: int, spec: dict[str, Any], out_dir: str) -> None:
    """Entry point of each spawned rank: measure, write rank<r>.json."""
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they come
    world = spec["world_size"]
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec["port"]))
    torch.set_num_threads(max(1, spec["threads"] // world))
    try:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(measure(rank, spec)))
    finally:
        shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(base: dict[str, Any], **spec: Any) -> list[dict[str, Any]]:
    """Run `worker` on spec["world_size"] fresh processes; every rank's result, in rank order."""
    spec = {**base, **spec, "port": _free_port()}
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(spec, out), nprocs=spec["world_size"], join=True)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(spec["world_size"])]


def device_name(gpu: bool) -> str:
    if gpu:
        return torch.cuda.get_device_name(0)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU ({line.split(':', 1)[1].strip()}, {os.cpu_count()} cores)"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [header, *rows])


def edlm_rows(mdlm_s: float, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cost model's prediction against the measurement, per (k, window)."""
    rows = []
    for res in results:
        k, c = res["k"], res["c"]
        for run in res["runs"]:
            w = run["window_fraction"]
            predicted = mdlm_s * ((1 - w) + w * (1 + k * c))
            rows.append({"k": k, "window": run["window"], "window_fraction": w, "c": c, "d": res["d"],
                         "ms_per_step": run["ms_per_step"], "s_per_sample": run["s_per_sample"],
                         "predicted_s_per_sample": predicted, "vs_model": run["s_per_sample"] / predicted,
                         "memory_mib": res["memory_mib"]})
    return rows


def _parse_list(kind: type) -> Callable[[str], list]:
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(MODEL_PRESETS), default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4, help="sequences per sample call (B)")
    parser.add_argument("--ks", type=_parse_list(int), default=[2, 4, 16], help="EDLM candidates, comma-separated")
    parser.add_argument("--windows", type=_parse_list(float), default=[0.2, 1.0], help="EDLM windows, comma-separated")
    parser.add_argument("--vocab", type=int, default=0, help=f"data tokens (default {CPU_VOCAB} CPU, {GPT2_VOCAB} GPU)")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per configuration (default 1 CPU, 3 GPU)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads in all (split between the ranks); fewer than the cores on a busy machine")
    parser.add_argument("--gpu", action="store_true", help="CUDA, bf16 autocast for the networks")
    parser.add_argument("--compile", action="store_true", help="torch.compile the denoiser and the AR model")
    parser.add_argument("--skip-ranks", action="store_true", help="skip candidates mode at 1 and 2 ranks")
    parser.add_argument("--draw", choices=CANDIDATE_DRAWS, default="gumbel",
                        help="how the k candidates are drawn (sample.candidate_draw)")
    parser.add_argument("--json", help="write all results to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    refuse_existing([args.json] if args.json else [], args.overwrite, "another --json")
    sys.stdout.reconfigure(line_buffering=True)  # progress lines interleave with the workers' in order
    if args.gpu and not torch.cuda.is_available():
        sys.exit("[bench] --gpu: no CUDA device available")
    if any(k < 2 for k in args.ks) or any(not 0 <= w <= 1 for w in args.windows):
        sys.exit("[bench] --ks must be >= 2 and --windows in [0, 1]")
    vocab = args.vocab or (GPT2_VOCAB if args.gpu else CPU_VOCAB)
    repeats = args.repeats or (3 if args.gpu else 1)
    threads = args.threads  # split between the ranks of candidates mode
    base = {"preset": args.preset, "seq_len": args.seq_len, "steps": args.steps, "batch": args.batch, "vocab": vocab,
            "repeats": repeats, "gpu": args.gpu, "compile": args.compile, "threads": threads, "draw": args.draw,
            "mixed_precision": "auto"}
    mem = "CUDA allocator peak" if args.gpu else "growth of the max RSS during sampling"
    print(f"[bench] {device_name(args.gpu)}, torch {torch.__version__}, {'bf16 autocast' if args.gpu else 'fp32'}"
          f"{', compiled' if args.compile else ''}; preset {args.preset}, vocab {vocab}, seq_len {args.seq_len}, "
          f"{args.steps} steps, B = {args.batch}, {repeats} timed run(s) per config, {args.draw} candidate draws"
          + ("" if args.gpu else f", threads: {threads}"))
    print("[bench] time-conditioned DiT (reads_time): every step runs the denoiser, and every step in the window "
          "the energy; AREnergy(max_batch = k*B): one AR forward over the candidates of a step")

    print("[bench] MDLM (k = 1), fresh process")
    mdlm = launch(base, k=1, world_size=1, windows=[1.0], forwards=False)[0]
    edlm = []
    for k in args.ks:
        print(f"[bench] EDLM k = {k}, fresh process")
        edlm.append(launch(base, k=k, world_size=1, windows=args.windows, forwards=True)[0])
    mdlm_run = mdlm["runs"][0]
    rows = edlm_rows(mdlm_run["s_per_sample"], edlm)
    print(f"\nMDLM vs EDLM. c = energy call over k*B / k / denoiser forward over B; d = the same for the draw "
          f"of the k candidates (outside the model); w' = fraction of steps in the window; predicted = MDLM x "
          f"((1 - w') + w' (1 + k c)); vs model = measured / predicted (target within "
          f"{MODEL_TOLERANCE:.0%}); memory = {mem}, per rank, MiB")
    header = ["config", "ms/step", "s/sample", "w'", "c", "d", "predicted", "vs model", "memory"]
    lines = [["MDLM k=1", f"{mdlm_run['ms_per_step']:.1f}", f"{mdlm_run['s_per_sample']:.4f}", "-", "-", "-", "-", "-",
              f"{mdlm['memory_mib']:.1f}"]]
    for r in rows:
        flag = "ok" if abs(r["vs_model"] - 1) <= MODEL_TOLERANCE else "off"
        lines.append([f"EDLM k={r['k']} w={r['window']:g}", f"{r['ms_per_step']:.1f}", f"{r['s_per_sample']:.4f}",
                      f"{r['window_fraction']:.3f}", f"{r['c']:.3f}", f"{r['d']:.3f}",
                      f"{r['predicted_s_per_sample']:.4f}", f"{r['vs_model']:.2f} {flag}", f"{r['memory_mib']:.1f}"])
    print(table(header, lines))

    results: dict[str, Any] = {"device": device_name(args.gpu), "torch": torch.__version__, "settings": base,
                               "mdlm": mdlm, "edlm": edlm, "edlm_vs_model": rows}
    ranks_note = None
    if args.skip_ranks:
        ranks_note = "skipped (--skip-ranks)"
    elif args.gpu and torch.cuda.device_count() < 2:
        ranks_note = f"skipped: {torch.cuda.device_count()} GPU, candidates mode on 2 ranks needs 2"
    if ranks_note:
        print(f"\n[bench] candidates mode {ranks_note}")
        results["candidates"] = ranks_note
    else:
        cand = []
        for world in (1, 2):
            print(f"[bench] candidates mode k = {CANDIDATES_K} on {world} rank(s), fresh process(es)")
            cand.append(launch(base, k=CANDIDATES_K, world_size=world, windows=[1.0], forwards=False))
        one = max(r["memory_mib"] for r in cand[0])
        print(f"\nCandidates mode, k = {CANDIDATES_K}, window 1.0, "
              f"AREnergy(max_batch = k*B = {CANDIDATES_K * args.batch}): each rank scores its k/ranks*B candidates in "
              f"one AR forward (with chunking the activations would not shrink with the ranks); memory = {mem}, "
              f"max over ranks, MiB"
              + ("" if args.gpu else f"; threads per rank = max(1, {threads} // ranks)"))
        lines = []
        for ranks in cand:
            mib = max(r["memory_mib"] for r in ranks)
            ratio = mib / one
            flag = "" if len(ranks) == 1 else (" ok" if ratio <= MEMORY_TARGET else " over")
            lines.append([str(len(ranks)), str(ranks[0]["k_local"]), f"{ranks[0]['runs'][0]['ms_per_step']:.1f}",
                          f"{ranks[0]['runs'][0]['s_per_sample']:.4f}", f"{mib:.1f}", f"{ratio:.2f}{flag}"])
        print(table(["ranks", "k/rank", "ms/step", "s/sample", "memory/rank",
                     f"vs 1 rank (target <= {MEMORY_TARGET})"], lines))
        results["candidates"] = cand
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
        print(f"[bench] results written to {args.json}")


if __name__ == "__main__":
    main()
