"""Data pipeline throughput per dataloader worker: pre-tokenised shards vs raw `.jsonl.zst` with
on-the-fly GPT-2 tokenisation, on a corpus prepared from the shared OpenWebText sample.

usage: EDLM_DATA_DIR=../shared/data python tools/bench_data.py [--seconds 5] [--copies 20] [--out FILE]

Prints one JSON line per pipeline: tokens/s of one worker (the loop runs in this process, as a
worker would), block length, batch, and the corpus size. Targets per worker: pre-tokenised
>= 2e7 tokens/s, raw >= 1e6 tokens/s. The pre-tokenised stream is measured twice: over many
epochs (the steady state: a chunk's check is hashed once per process) and over first epochs only
(a fresh reader each epoch, so every chunk's check is hashed when first read, as in a run's first
epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from edlm_dist.data.raw_stream import RawTextBlocks
from edlm_dist.data.batches import BatchPlan
from edlm_dist.data.corpus_reader import TokenCorpus, read_manifest
from edlm_dist.data.packed import PackedBlocks
from edlm_dist.data.tokenizers import build_tokenizer

REPO = Path(__file__).resolve().parents[1]


def prepare(work: Path, copies: int) -> Path:
    """The OWT sample, repeated `copies` times, prepared as both token and raw shards."""
    sample = Path(os.environ.get("EDLM_DATA_DIR", REPO.parent / "shared" / "data")) / "owt_sample"
    source = work / "source"
    source.mkdir()
    text = (sample / "openwebtext_first100docs.txt").read_text()
    for i in range(copies):
        (source / f"part{i:03d}.txt").write_text(text)
    out = work / "corpus"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "prepare_data.py"), "--source", str(source), "--out", str(out),
         "--tokenizer", "gpt2", "--format", "both", "--txt-mode", "blank_line", "--val-docs", "10",
         "--shard-tokens", "2000000"],
        check=True, capture_output=True,
    )
    return out


def measure(batches: Iterator[torch.Tensor], seconds: float) -> tuple[float, int]:
    """Tokens per second drawn from `batches` over about `seconds` (after one warm-up batch)."""
    next(batches)
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tokens += next(batches).numel()
    return tokens / (time.perf_counter() - start), tokens


def first_epochs(folder: Path, seq_len: int, batch: int) -> Iterator[torch.Tensor]:
    """The batches of one epoch after another, each epoch read by a fresh `TokenCorpus`."""
    manifest = read_manifest(str(folder))
    while True:
        packed = PackedBlocks(TokenCorpus(str(folder), "train", manifest=manifest), seq_len=seq_len,
                              plan=BatchPlan(batch))
        for step in range(packed.steps_per_epoch):
            yield packed.batch(step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--copies", type=int, default=20, help="repetitions of the 100-document sample")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = prepare(Path(tmp), args.copies)
        manifest = read_manifest(str(folder))
        corpus = TokenCorpus(str(folder), "train")
        packed = PackedBlocks(corpus, seq_len=args.seq_len, plan=BatchPlan(args.batch))
        raw_files = [str(folder / s["path"]) for s in manifest.splits["train"]["raw_shards"]]
        raw = RawTextBlocks(raw_files, build_tokenizer("gpt2"), seq_len=args.seq_len, shuffle_buffer=1000)

        def raw_batches() -> Iterator[torch.Tensor]:
            blocks = iter(raw)
            while True:
                yield torch.stack([next(blocks) for _ in range(args.batch)])

        results = []
        pipelines = (
            ("pre-tokenised", iter(packed)),
            ("pre-tokenised, first epochs", first_epochs(folder, args.seq_len, args.batch)),
            ("raw jsonl.zst + GPT-2", raw_batches()),
        )
        for name, batches in pipelines:
            rate, tokens = measure(batches, args.seconds)
            results.append({"pipeline": name, "tokens_per_s_per_worker": round(rate), "tokens_measured": tokens,
                            "seq_len": args.seq_len, "batch": args.batch, "corpus_tokens": corpus.length,
                            "threads": 1})
    lines = [json.dumps(r) for r in results]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
