"""Import MDLM weights as a run folder of this project, which every entry point then reads.

SRC is a Hugging Face folder in MDLM's layout (config.json and model.safetensors or
pytorch_model.bin, e.g. a download of kuleshov-group/mdlm-owt), a Lightning .ckpt of the MDLM
or EDLM code bases (DiT or AR, with its EMA weights), or hf:<repo id> (needs huggingface_hub and
a network). See docs/mdlm.md.

usage: python tools/import_mdlm.py SRC --out RUN_DIR [--data-path PREPARED_OWT]
"""

from __future__ import annotations

import argparse
from typing import Sequence

from edlm_dist.config import exit_on_user_error
from edlm_dist.interop.mdlm_runs import import_mdlm
from edlm_dist.interop.mdlm_sources import read_mdlm


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="import_mdlm.py", description="Import MDLM weights as a run folder.")
    parser.add_argument("src", metavar="SRC", help="a Hugging Face folder, a Lightning .ckpt, or hf:<repo id>")
    parser.add_argument("--out", metavar="RUN_DIR", required=True, help="the run folder to create (must not exist)")
    parser.add_argument("--data-path", default="", metavar="FOLDER",
                        help="OpenWebText prepared by tools/prepare_data.py, recorded as the run's data.path (read by "
                             "its `val` evaluation set and the sampler's reference row)")
    args = parser.parse_args(argv)
    weights = read_mdlm(args.src)
    out = import_mdlm(weights, args.out, args.data_path)
    kept = "model and EMA weights" if weights.ema is not None else "model weights"
    task = "mdlm" if weights.arch.kind == "dit" else "ar"
    print(f"wrote {out}: a {task} run of step {weights.step} with the {kept} of {args.src}")


if __name__ == "__main__":
    main()
