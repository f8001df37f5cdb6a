"""Import a Hugging Face model (LLaDA, Dream, Llama, Qwen2 or GPT-2: config.json and safetensors
weights, one file or sharded with model.safetensors.index.json; its tokenizer files, when it has
them, are copied into the run) as a run folder of this project, which every entry point then
reads. See docs/hf_models.md.

usage: python tools/import_hf.py FOLDER --out RUN_DIR [--seq-len N] [--start-token ID]
       torchrun --nproc-per-node=N tools/import_hf.py ...  (each rank reads only its shards' rows)
"""

from __future__ import annotations

import argparse
from typing import Sequence

from edlm_dist.config import exit_on_user_error
from edlm_dist.distributed import init_distributed, shutdown
from edlm_dist.interop.hf_runs import TOKENIZER_DIR, import_hf, read_source


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="import_hf.py", description="Import a Hugging Face model as a run folder.")
    parser.add_argument("src", metavar="FOLDER", help="a Hugging Face model folder (config.json and safetensors)")
    parser.add_argument("--out", metavar="RUN_DIR", required=True, help="the run folder to create (must not exist)")
    parser.add_argument("--seq-len", type=int, metavar="N",
                        help="the run's data.seq_len (default: the config's context length, at most 4096)")
    parser.add_argument("--start-token", type=int, metavar="ID",
                        help="a causal LM's start token (default: its config's bos_token_id)")
    args = parser.parse_args(argv)
    env = init_distributed("cpu", "gloo")
    try:
        source = read_source(args.src, args.start_token)
        out = import_hf(source, args.out, args.seq_len)
    finally:
        shutdown()
    if env.is_main:
        tokenizer = (f"its tokenizer files copied into {out / TOKENIZER_DIR}" if source.tokenizer is not None else
                     "no tokenizer files: samples cannot be decoded until data.tokenizer_path names them")
        print(f"wrote {out}: a {source.arch.task} run of the {source.arch.layout} model in {args.src} "
              f"({source.model.vocab_size} token ids from its {source.vocab_from}; {tokenizer})")


if __name__ == "__main__":
    main()
