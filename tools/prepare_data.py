"""Prepare a text corpus for training: documents -> token and/or raw-text shards + manifest.json.

The source is files (a file, folder or glob, local or an fsspec URL; .txt, .jsonl, .jsonl.zst,
.parquet) or a Hugging Face dataset (`--hf-dataset`, needs `datasets` and the network). The LAST
`--val-docs` documents form the validation split (MDLM's OpenWebText convention), so a first
pass counts documents (no tokenising), then the second tokenises and writes shards.

Resumable: `progress.json` in the output folder lists each finished shard (file hashes and the
source documents covered so far). A re-run with the same settings verifies those hashes, keeps
the shards before the first that fails, and continues after the documents they cover. The
manifest is written last, so a folder without one is never taken as a complete corpus.

usage: python tools/prepare_data.py --source PATH_OR_GLOB_OR_URL --out FOLDER [--tokenizer gpt2|hf|char]
    [--tokenizer-path DIR] [--format tokens|raw|both] [--shard-tokens N] [--val-docs N]
    [--txt-mode file|blank_line] [--text-key KEY] [--on-error raise|skip] [--hf-dataset NAME] [--workers N]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

from edlm_dist.config import exit_on_user_error
from edlm_dist.data.corpus_format import FORMAT, MANIFEST_NAME, Manifest, file_sha256, join
from edlm_dist.data.corpus_writer import CorpusWriter, write_manifest
from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.sources import filesystem, iter_documents, list_files
from edlm_dist.data.tokenizers import Tokenizer, build_tokenizer
from edlm_dist.fileio import atomic_write_text

PROGRESS_NAME = "progress.json"
ENCODE_BATCH = 64  # documents per tokenising task


class FileSource:
    """Documents of files, in `list_files` order."""

    def __init__(self, source: str, *, text_key: str, txt_mode: str, on_error: str) -> None:
        self.description = source
        self.files = list_files(source)
        self.options: dict[str, Any] = {"text_key": text_key, "txt_mode": txt_mode, "on_error": on_error}
        self.counts: list[int] = []

    def scan(self, want_chars: bool) -> set[str]:
        """Count each file's documents (kept in `counts`); the characters used, when asked."""
        chars: set[str] = set()
        for path in tqdm(self.files, desc="counting documents", unit="file"):
            n = 0
            for doc in iter_documents(path, **self.options, skipped=SkipCounter()):
                n += 1
                if want_chars:
                    chars.update(doc)
            self.counts.append(n)
        return chars

    def documents(self, start: int, skipped: SkipCounter) -> Iterator[str]:
        """Documents from global position `start` on."""
        for path, count in zip(self.files, self.counts):
            if start < count:
                yield from iter_documents(path, **self.options, skipped=skipped, start=start)
            start = max(0, start - count)


class HFSource:
    """The train split of a Hugging Face dataset, read in row batches."""

    def __init__(self, name: str, *, text_key: str) -> None:
        try:
            import datasets
        except ImportError as e:
            raise DataError("--hf-dataset needs the Hugging Face datasets package (pip install 'edlm-dist[hub]')") from e
        try:
            self.dataset = datasets.load_dataset(name, split="train")
        except Exception as e:  # network, hub and format errors come in many types
            raise DataError(f"cannot load Hugging Face dataset {name!r}: {type(e).__name__}: {e}") from e
        if text_key not in self.dataset.column_names:
            raise DataError(f"Hugging Face dataset {name!r} has no column {text_key!r} ({self.dataset.column_names})")
        self.description, self.text_key = f"huggingface:{name}", text_key
        self.files: list[str] = []
        self.counts = [len(self.dataset)]

    def scan(self, want_chars: bool) -> set[str]:
        chars: set[str] = set()
        if want_chars:
            for doc in tqdm(self.documents(0, SkipCounter()), total=self.counts[0], desc="collecting characters"):
                chars.update(doc)
        return chars

    def documents(self, start: int, skipped: SkipCounter) -> Iterator[str]:
        for first in range(start, self.counts[0], 1000):
            for row, text in enumerate(self.dataset[first : first + 1000][self.text_key], first):
                if not isinstance(text, str):
                    raise DataError(
                        f"{self.description}: row {row}: {self.text_key!r} is of type {type(text).__name__}, "
                        f"not a string"
                    )
                yield text


def encode_in_order(docs: Iterator[str], tokenizer: Tokenizer, workers: int) -> Iterator[tuple[str, list[int]]]:
    """(text, ids) in document order, tokenised by `workers` threads (tiktoken releases the GIL)."""
    if workers <= 1:
        for text in docs:
            yield text, tokenizer.encode(text)
        return

    def encode(batch: list[str]) -> list[tuple[str, list[int]]]:
        return [(text, tokenizer.encode(text)) for text in batch]

    pending: collections.deque[Future[list[tuple[str, list[int]]]]] = collections.deque()
    with ThreadPoolExecutor(workers) as pool:
        batch: list[str] = []
        for text in docs:
            batch.append(text)
            if len(batch) == ENCODE_BATCH:
                pending.append(pool.submit(encode, batch))
                batch = []
                if len(pending) >= 4 * workers:
                    yield from pending.popleft().result()
        if batch:
            pending.append(pool.submit(encode, batch))
        while pending:
            yield from pending.popleft().result()


class Progress:
    """`progress.json`: the settings of the run and its finished shards, rewritten after each."""

    def __init__(self, out: str, settings: dict[str, Any]) -> None:
        self.out, self.settings = out, settings
        self.records: list[dict[str, Any]] = []

    def resume(self) -> list[dict[str, Any]]:
        """The finished shards of an earlier run with the same settings whose files still match
        their hashes, up to the first that does not."""
        fs, root, _ = filesystem(self.out)
        where = join(self.out, PROGRESS_NAME)
        try:
            old = json.loads(fs.cat_file(join(root, PROGRESS_NAME)))
            previous, records = old["settings"], old["shards"]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{where}: cannot read ({type(e).__name__}: {e}); delete it to start over") from e
        changed = [k for k in self.settings if previous.get(k) != self.settings[k]]
        if changed:
            key = changed[0]
            raise DataError(
                f"{self.out} holds a run with other settings ({key}: {previous.get(key)!r}, now "
                f"{self.settings[key]!r}); use another --out or delete that folder"
            )
        for record in tqdm(records, desc="verifying finished shards", unit="shard"):
            try:
                files = shard_files(record)
            except (KeyError, TypeError) as e:
                raise DataError(f"{where}: malformed shard record {record!r}; delete it to start over") from e
            if not all(file_sha256(join(self.out, name)) == digest for name, digest in files):
                break
            self.records.append(record)
        return list(self.records)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.save()

    def save(self) -> None:
        text = json.dumps({"settings": self.settings, "shards": self.records}, indent=1) + "\n"
        fs, root, local = filesystem(self.out)
        if local:
            atomic_write_text(os.path.join(root, PROGRESS_NAME), text)
        else:
            fs.pipe_file(join(root, PROGRESS_NAME), text.encode())


def shard_files(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(file name, sha256) of every file of a finished shard."""
    files = []
    if record["token_shard"]:
        shard = record["token_shard"]
        files += [(shard["path"], shard["sha256"]), (shard["index"], shard["index_sha256"]),
                  (shard["checks"], shard["checks_sha256"])]
    if record["raw_shard"]:
        files.append((record["raw_shard"]["path"], record["raw_shard"]["sha256"]))
    return files


def prepare(args: argparse.Namespace) -> Manifest:
    """Count, then tokenise and write the shards (resuming a partial run), then the manifest."""
    if args.hf_dataset:
        source: FileSource | HFSource = HFSource(args.hf_dataset, text_key=args.text_key)
    else:
        source = FileSource(args.source, text_key=args.text_key, txt_mode=args.txt_mode, on_error=args.on_error)
    # GPT-2's or a model folder's tokenizer is loaded first so that a missing file is reported
    # before the long counting pass; the char vocabulary is collected by that pass.
    tokenizer = build_tokenizer(args.tokenizer, args.tokenizer_path) if args.tokenizer != "char" else None
    chars = source.scan(want_chars=tokenizer is None)
    tokenizer = tokenizer or build_tokenizer(args.tokenizer, corpus="".join(sorted(chars)))
    total = sum(source.counts)
    if total <= args.val_docs:
        raise DataError(
            f"{source.description} has {total} documents: --val-docs {args.val_docs} leaves none for training"
        )
    n_train = total - args.val_docs

    settings = {
        "corpus_format": FORMAT, "source": source.description, "files": source.files, "counts": source.counts,
        "tokenizer": tokenizer.fingerprint(), "format": args.format, "shard_tokens": args.shard_tokens,
        "val_docs": args.val_docs, "txt_mode": args.txt_mode, "text_key": args.text_key, "on_error": args.on_error,
    }
    progress = Progress(args.out, settings)
    kept = progress.resume()
    fs, root, _ = filesystem(args.out)
    if fs.exists(join(root, MANIFEST_NAME)):
        fs.rm_file(join(root, MANIFEST_NAME))  # the folder is incomplete until this run ends
    progress.save()

    position = kept[-1]["source_documents"] if kept else 0  # source documents consumed so far

    def record_shard(record: dict[str, Any]) -> None:
        progress.add({**record, "source_documents": position})  # the current position, read when called

    writers = {
        split: CorpusWriter(
            args.out, tokenizer, shard_tokens=args.shard_tokens, write_tokens=args.format != "raw",
            write_raw=args.format != "tokens", split=split,
            completed=[r for r in kept if r["split"] == split],
            on_shard=record_shard,
        )
        for split in ("train", "val")
    }
    skipped = SkipCounter()
    with tqdm(total=total, initial=position, desc="tokenising", unit="doc") as bar:
        for text, ids in encode_in_order(source.documents(position, skipped), tokenizer, args.workers):
            if position == n_train:
                writers["train"].close()
            position += 1
            writers["train" if position <= n_train else "val"].add(text, ids)
            bar.update()
        writers["train"].close()
        writers["val"].close()
    if position != total:
        raise DataError(
            f"{source.description} changed while it was prepared: {total} documents counted, {position} read"
        )

    manifest = Manifest.create(
        source.description, tokenizer, {split: w.split_info() for split, w in writers.items()}, args.val_docs
    )
    write_manifest(args.out, manifest)
    shards = len(progress.records)
    tokens = sum(info["tokens"] for info in manifest.splits.values())
    print(f"{args.out}: {n_train} train + {args.val_docs} val documents, {tokens} tokens (EOS included), "
          f"{shards} shards ({len(kept)} kept from an earlier run), {skipped.count} bad records skipped")
    for reason in skipped.reasons:
        print(f"  skipped: {reason}")
    return manifest


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prepare_data.py", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", help="file, folder or glob (local or fsspec URL) of .txt/.jsonl/.jsonl.zst/.parquet")
    where.add_argument("--hf-dataset", help="Hugging Face dataset name, e.g. Skylion007/openwebtext (needs datasets)")
    parser.add_argument("--out", required=True, help="output folder (local or fsspec URL)")
    parser.add_argument("--tokenizer", choices=("gpt2", "hf", "char"), default="gpt2")
    parser.add_argument("--tokenizer-path", default="",
                        help="gpt2: folder with the GPT-2 BPE files; hf: the Hugging Face model folder (required)")
    parser.add_argument("--format", choices=("tokens", "raw", "both"), default="tokens")
    parser.add_argument("--shard-tokens", type=int, default=50_000_000, help="stream tokens per shard (at least)")
    parser.add_argument("--val-docs", type=int, default=100_000, help="the last N documents are the val split")
    parser.add_argument("--txt-mode", choices=("file", "blank_line"), default="file",
                        help=".txt files: one document each, or documents separated by blank lines")
    parser.add_argument("--text-key", default="text", help="JSON key / parquet column of the text")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad records: stop naming the file, or skip and count them")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="tokenising threads")
    args = parser.parse_args(argv)
    if args.shard_tokens < 1 or args.val_docs < 0:
        parser.error("--shard-tokens must be >= 1 and --val-docs >= 0")
    return args


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    prepare(parse_args(argv))


if __name__ == "__main__":
    main()
