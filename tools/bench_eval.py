"""Speed of likelihood evaluation: sequences per second of the MDLM NELBO and of the EDLM
estimators that apply to the energy (`edlm_nelbo`: estimators of the valid bound and the paper's
estimate) at n proposals per sequence.

Randomly initialised networks of one size preset (the weights do not change the cost): a DiT
denoiser and, as the energy, an AR transformer of the same size through `AREnergy` (EDLM-AR),
scoring all proposals of a batch in one forward. Each figure is the median of --repeats timed
calls after one warm-up call, synchronised on CUDA.

    python tools/bench_eval.py                    # CPU, tiny preset, ~1 min
    python tools/bench_eval.py --gpu --preset small --seq-len 1024 --batch 8

--json FILE writes the results there (atomically); an existing FILE is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

import torch

from edlm_dist.config import exit_on_user_error
from edlm_dist.config.schema import MODEL_PRESETS, ModelConfig
from edlm_dist.diffusion import edlm_nelbo, nelbo
from edlm_dist.diffusion.likelihood import estimators_for
from edlm_dist.distributed import autocast, compute_dtype
from edlm_dist.energy import AREnergy
from edlm_dist.fileio import atomic_write_text, refuse_existing
from edlm_dist.models import build_model
from edlm_dist.runs.device_stats import median_seconds, peak_memory_gib, reset_peak_memory


def eval_rows(
    preset: str, seq_len: int, batch: int, vocab: int, proposals: list[int], repeats: int, device: torch.device,
    mixed_precision: str = "auto",
) -> list[dict[str, Any]]:
    """Median seconds per call, sequences/s, cost against the MDLM NELBO and peak memory of the MDLM
    NELBO and, at each n, of every EDLM estimator that applies to the AR energy; the networks
    autocast as `runtime.mixed_precision` says (auto: bf16 on CUDA). Peak memory: the CUDA
    allocator's peak during the timed calls; on the CPU the process's max RSS (it cannot be reset)."""
    config = ModelConfig(preset=preset, **MODEL_PRESETS[preset], dropout=0.0)
    denoiser = build_model("dit", config, vocab, device, seed=0).eval()
    ar = build_model("ar", config, vocab, device, seed=1)
    x0 = torch.randint(0, vocab, (batch, seq_len), device=device, generator=torch.Generator(device).manual_seed(0))

    def timed(estimator: str, n: int | None, call: Callable[[], object]) -> dict[str, Any]:
        reset_peak_memory(device)
        seconds = median_seconds(call, device, repeats)
        return {"estimator": estimator, "n": n, "seconds": seconds, "sequences_per_s": batch / seconds,
                "peak_memory_gib": peak_memory_gib(device)}

    with torch.no_grad(), autocast(device, compute_dtype(mixed_precision, device)):
        rows = [timed("mdlm nelbo", None, lambda: nelbo(denoiser, x0, mask_id=vocab,
                                                           generator=torch.Generator(device).manual_seed(1)))]
        for n in proposals:
            energy = AREnergy(ar, max_batch=2 * n * batch)
            for estimator in estimators_for(energy):
                rows.append(timed(f"edlm {estimator}", n, lambda: edlm_nelbo(
                    denoiser, energy, x0, mask_id=vocab, num_proposals=n, estimator=estimator,
                    generator=torch.Generator(device).manual_seed(1))))
    for row in rows:
        row["cost_vs_mdlm"] = row["seconds"] / rows[0]["seconds"]
    return rows


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(MODEL_PRESETS), default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="sequences per call")
    parser.add_argument("--vocab", type=int, default=0, help="data tokens (default 1024 on CPU, 50257 on GPU)")
    parser.add_argument("--proposals", default="2,8,32", help="n, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="CUDA with bf16 autocast for the networks")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    refuse_existing([args.json] if args.json else [], args.overwrite, "another --json")
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("error: --gpu: no CUDA device available")
    device = torch.device("cuda" if args.gpu else "cpu")
    vocab = args.vocab or (50257 if args.gpu else 1024)
    proposals = [int(n) for n in args.proposals.split(",")]
    print(f"[bench] {device.type}, torch {torch.__version__}, preset {args.preset}, vocab {vocab}, "
          f"{args.seq_len} tokens, B = {args.batch}, median of {args.repeats}")
    rows = eval_rows(args.preset, args.seq_len, args.batch, vocab, proposals, args.repeats, device)
    print(f"{'estimator':<18}{'n':>4}{'seq/s':>10}{'vs MDLM':>9}")
    for row in rows:
        print(f"{row['estimator']:<18}{row['n'] or '-':>4}{row['sequences_per_s']:>10.2f}{row['cost_vs_mdlm']:>9.1f}")
    if args.json:
        settings = {"device": device.type, "torch": torch.__version__, "preset": args.preset, "vocab": vocab,
                    "seq_len": args.seq_len, "batch": args.batch}
        atomic_write_text(args.json, json.dumps({"settings": settings, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
