"""Peak host memory per rank of a multi-rank Hugging Face import (tools/import_hf.py's path under
torchrun: FSDP2 shards the model over the ranks and each reads only its rows of every tensor),
against the full model's bytes. See docs/performance.md.

A synthetic Llama-layout checkpoint of about --params parameters (random float32 weights, in
--shards files with a model.safetensors.index.json, as save_pretrained shards) is written to a
temporary folder and imported by --world-size ranks under torchrun. Each rank runs with glibc's
mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_), so freed tensor buffers go back to the
system and the resident set follows the live tensors; right before the import its peak-RSS mark is
reset (/proc/self/clear_refs "5"), and its peak is the mark after the import less the RSS before
it (the libraries, loaded before by building a tiny model on the meta device, are not counted).
The full model's bytes are its parameters in float32, the checkpoint's dtype here.

usage: python tools/bench_import.py [--params 1e9] [--world-size 2] [--shards 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

HEAD_DIM = 64


def shapes(params: float) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """A Llama config.json of about `params` parameters (hidden 2048 and 16 layers for 1e9; smaller
    targets shrink the width and depth together) and every tensor's name and shape."""
    scale = (params / 0.953e9) ** (1 / 3)
    hidden = max(HEAD_DIM * 2, int(2048 * scale) // HEAD_DIM * HEAD_DIM)
    layers = max(2, round(16 * scale))
    width = hidden * 11 // 4 // 64 * 64
    vocab = max(1024, int(32000 * scale) // 64 * 64)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
              "hidden_size": hidden, "intermediate_size": width, "num_hidden_layers": layers,
              "num_attention_heads": hidden // HEAD_DIM, "num_key_value_heads": hidden // HEAD_DIM,
              "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
              "max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2}
    tensors = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
               "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                    **{f"{p}self_attn.{x}_proj.weight": (hidden, hidden) for x in "qkvo"},
                    p + "mlp.gate_proj.weight": (width, hidden), p + "mlp.up_proj.weight": (width, hidden),
                    p + "mlp.down_proj.weight": (hidden, width)}
    return config, tensors


def write_checkpoint(folder: Path, params: float, shards: int) -> int:
    """Write the synthetic checkpoint (one shard in memory at a time); returns its parameter count."""
    config, tensors = shapes(params)
    names = list(tensors)
    per_shard = -(-len(names) // shards)
    weight_map, generator = {}, torch.Generator().manual_seed(0)
    files = [names[i : i + per_shard] for i in range(0, len(names), per_shard)]
    for index, group in enumerate(files):
        file = f"model-{index + 1:05d}-of-{len(files):05d}.safetensors"
        save_file({n: torch.randn(tensors[n], generator=generator) * 0.02 for n in group}, folder / file,
                  metadata={"format": "pt"})
        weight_map |= {n: file for n in group}
    numel = sum(torch.Size(shape).numel() for shape in tensors.values())
    index = {"metadata": {"total_size": 4 * numel}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return numel


def rss() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def peak_rss() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def worker(src: str, out: str, results: str) -> None:
    """One torchrun rank: import `src` into `out` with the others, measuring its own peak."""
    from edlm_dist.config import ModelConfig
    from edlm_dist.distributed import barrier, init_distributed, shutdown
    from edlm_dist.interop.hf_runs import import_hf, read_source
    from edlm_dist.models import meta_model

    env = init_distributed("cpu", "gloo")
    torch.set_num_threads(1)
    warm = ModelConfig(family="llama", n_layers=1, hidden_size=16, n_heads=2, vocab_size=8)
    meta_model("ar", warm, 8)  # loads what the meta device needs (~30 MB of libraries, not of this model)
    barrier()
    before = rss()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    start = time.perf_counter()
    import_hf(read_source(src), out)
    seconds = time.perf_counter() - start
    peak = peak_rss() - before
    Path(results, f"rank{env.rank}.json").write_text(json.dumps({"rank": env.rank, "peak_bytes": peak,
                                                                 "seconds": seconds}))
    shutdown()


def measure(params: float, world_size: int, shards: int, folder: Path) -> list[dict[str, Any]]:
    """Write the checkpoint under `folder`, import it on `world_size` ranks; every rank's record."""
    (folder / "src").mkdir()
    numel = write_checkpoint(folder / "src", params, shards)
    (folder / "results").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
           __file__, "--worker", str(folder / "src"), str(folder / "run"), str(folder / "results")]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"the import failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    records = [json.loads((folder / "results" / f"rank{r}.json").read_text()) for r in range(world_size)]
    return [{**r, "params": numel, "model_bytes": 4 * numel, "ratio": r["peak_bytes"] / (4 * numel),
             "world_size": world_size, "shards": shards} for r in records]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="bench_import.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=1e9, help="about this many parameters (default 1e9)")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--shards", type=int, default=4, help="safetensors files of the checkpoint")
    parser.add_argument("--json", metavar="FILE", help="also write the records here, one JSON line per rank")
    parser.add_argument("--worker", nargs=3, metavar=("SRC", "OUT", "RESULTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        records = measure(args.params, args.world_size, args.shards, Path(tmp))
    for r in records:
        print(f"rank {r['rank']}: peak {r['peak_bytes'] / 2**20:.0f} MiB = {r['ratio']:.3f} x the model's "
              f"{r['model_bytes'] / 2**20:.0f} MiB ({r['params'] / 1e6:.0f}M parameters, float32), import "
              f"{r['seconds']:.1f} s")
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


if __name__ == "__main__":
    main()
