"""Export a llama- or gpt2-family run in a Hugging Face layout (LLaDA, Dream, Llama, Qwen2 or
GPT-2): config.json and safetensors weights. An imported run is written as its source was (its
config.json, shard files and dtype), so the round trip is bit for bit. See docs/hf_models.md.

usage: python tools/export_hf.py RUN_DIR --out FOLDER [--step N] [--weights ema|model]
                                 [--layout NAME] [--dtype float32|bfloat16|float16] [--max-shard-gb X]
"""

from __future__ import annotations

import argparse
from typing import Sequence

from edlm_dist.config import exit_on_user_error
from edlm_dist.interop.hf_layout import LAYOUTS
from edlm_dist.interop.hf_runs import SHARD_BYTES, export_hf
from edlm_dist.runs.weights import find_checkpoint


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="export_hf.py", description="Export a run in a Hugging Face layout.")
    parser.add_argument("run", metavar="RUN_DIR", help="a run folder, or one of its step_<8-digit step> folders")
    parser.add_argument("--out", metavar="FOLDER", required=True, help="the folder to create (must not exist)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest committed)")
    parser.add_argument("--weights", choices=("ema", "model"), help="default: ema when the checkpoint has it")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), help="default: the imported run's, else from the model")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="default: the imported source's, else float32")
    parser.add_argument("--max-shard-gb", type=float, default=SHARD_BYTES / 2**30,
                        help="shard size when the layout of the files is not the source's (default 5)")
    args = parser.parse_args(argv)
    ckpt = find_checkpoint(args.run, args.step)
    out, weights, layout = export_hf(ckpt, args.out, weights=args.weights, layout=args.layout, dtype=args.dtype,
                                     max_shard_bytes=int(args.max_shard_gb * 2**30))
    print(f"wrote {out}: the {weights} weights of {ckpt.path} in the {layout} layout")


if __name__ == "__main__":
    main()
