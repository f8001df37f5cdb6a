"""Speed of likelihood evaluation: sequences per second of the MDLM NELBO and of the EDLM
estimates (`edlm_nelbo`, valid bound and paper estimate) at n proposals per sequence.

Randomly initialised networks of one size preset (the weights do not change the cost): a DiT
denoiser and, as the energy, an AR transformer of the same size through `AREnergy` (EDLM-AR),
scoring all proposals of a batch in one forward. Each figure is the median of --repeats timed
calls after one warm-up call, synchronised on CUDA.

    python tools/bench_eval.py                    # CPU, tiny preset, ~1 min
    python tools/bench_eval.py --gpu --preset small --seq-len 1024 --batch 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from edlm_dist.config.schema import MODEL_PRESETS, ModelConfig
from edlm_dist.diffusion import edlm_nelbo, nelbo
from edlm_dist.energy import AREnergy
from edlm_dist.models import build_model
from edlm_dist.training.metrics import median_seconds


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
    args = parser.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("error: --gpu: no CUDA device available")
    device = torch.device("cuda" if args.gpu else "cpu")
    vocab = args.vocab or (50257 if args.gpu else 1024)
    config = ModelConfig(preset=args.preset, **MODEL_PRESETS[args.preset], dropout=0.0)
    denoiser = build_model("dit", config, vocab, device, seed=0).eval()
    ar = build_model("ar", config, vocab, device, seed=1)
    x0 = torch.randint(0, vocab, (args.batch, args.seq_len), device=device, generator=torch.Generator(device).manual_seed(0))
    proposals = [int(n) for n in args.proposals.split(",")]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.gpu)
    print(f"[bench] {device.type}, torch {torch.__version__}, preset {args.preset}, vocab {vocab}, "
          f"{args.seq_len} tokens, B = {args.batch}, median of {args.repeats}")
    rows = []
    with torch.no_grad(), autocast:
        mdlm = median_seconds(lambda: nelbo(denoiser, x0, mask_id=vocab, generator=torch.Generator(device).manual_seed(1)),
                                device, args.repeats)
        rows.append({"estimator": "mdlm nelbo", "n": None, "seconds": mdlm})
        for n in proposals:
            energy = AREnergy(ar, max_batch=2 * n * args.batch)
            for estimator in ("bound", "paper"):
                call = lambda: edlm_nelbo(denoiser, energy, x0, mask_id=vocab, num_proposals=n,  # noqa: E731
                                          estimator=estimator, generator=torch.Generator(device).manual_seed(1))
                rows.append({"estimator": f"edlm {estimator}", "n": n, "seconds": median_seconds(call, device, args.repeats)})
    print(f"{'estimator':<14}{'n':>4}{'seq/s':>10}{'vs MDLM':>9}")
    for row in rows:
        row["sequences_per_s"] = args.batch / row["seconds"]
        row["cost_vs_mdlm"] = row["seconds"] / mdlm
        print(f"{row['estimator']:<14}{row['n'] or '-':>4}{row['sequences_per_s']:>10.2f}{row['cost_vs_mdlm']:>9.1f}")
    if args.json:
        settings = {"device": device.type, "torch": torch.__version__, "preset": args.preset, "vocab": vocab,
                    "seq_len": args.seq_len, "batch": args.batch}
        Path(args.json).write_text(json.dumps({"settings": settings, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
