"""Export a run's weights in MDLM's Hugging Face layout (config.json and model.safetensors with
MDLM's parameter names under backbone.), which MDLM's own DiT (or AR) loads with a strict
state-dict load. See docs/mdlm.md.

usage: python tools/export_mdlm.py RUN_DIR --out FOLDER [--step N] [--weights ema|model]
"""

from __future__ import annotations

import argparse
from typing import Sequence

from edlm_dist.config import exit_on_user_error
from edlm_dist.interop.mdlm_runs import export_mdlm
from edlm_dist.runs.weights import find_checkpoint


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="export_mdlm.py", description="Export a run in MDLM's Hugging Face layout.")
    parser.add_argument("run", metavar="RUN_DIR", help="an mdlm or ar run folder, or one of its step_<8-digit step> folders")
    parser.add_argument("--out", metavar="FOLDER", required=True, help="the folder to create (must not exist)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest committed)")
    parser.add_argument("--weights", choices=("ema", "model"), help="default: ema when the checkpoint has it")
    args = parser.parse_args(argv)
    ckpt = find_checkpoint(args.run, args.step)
    out, weights = export_mdlm(ckpt, args.weights, args.out)
    print(f"wrote {out}: the {weights} weights of {ckpt.path} in MDLM's layout")


if __name__ == "__main__":
    main()
