"""Raw text streamed and tokenised on the fly: sharding, exact and cross-layout resume, errors.

Each test document is one distinct character repeated, so with a char tokenizer every token
names its document and counting tokens checks coverage exactly.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import zstandard

from edlm_dist.data.errors import DataError
from edlm_dist.data.loaders import next_from_workers
from edlm_dist.data.raw_stream import (
    RawTextBlocks,
    build_raw_loader,
    dataset_states_from_loader_state,
    merge_states,
)
from edlm_dist.data.tokenizers import CharTokenizer, build_tokenizer

SEQ_LEN = 12
BATCH = 3


def write_zst(path: Path, lines: list[str]) -> str:
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(line + "\n" for line in lines).encode()))
    return str(path)


def jsonl(docs: list[str]) -> list[str]:
    return [json.dumps({"text": d}) for d in docs]


class Corpus:
    """Files of single-character documents; `length[token]` = the document's token count."""

    def __init__(self, folder: Path, n_files: int, seed: int = 0) -> None:
        rng = random.Random(seed)
        per_file = (8, 16) if n_files >= 4 else (30, 40)  # about 30 documents per slot at 2 x 2
        self.files, self.length = [], {}
        chars: list[str] = []
        for f in range(n_files):
            docs = [chr(0x4E00 + len(chars) + i) * rng.randint(2, 25) for i in range(rng.randint(*per_file))]
            chars += [d[0] for d in docs]
            self.files.append(write_zst(folder / f"shard_{f:02d}.jsonl.zst", jsonl(docs)))
            self.length.update({d[0]: len(d) for d in docs})
        self.tokenizer = CharTokenizer.from_corpus("".join(chars))
        self.length = {self.tokenizer.encode(c)[0]: n for c, n in self.length.items()}

    def dataset(self, **kwargs) -> RawTextBlocks:
        return RawTextBlocks(self.files, self.tokenizer, seq_len=SEQ_LEN, seed=3, shuffle_buffer=8, **kwargs)

    def counts(self, blocks: list[torch.Tensor]) -> Counter:
        """Tokens per document in `blocks` (checking the EOS frame)."""
        eos = self.tokenizer.eos_id
        counter: Counter = Counter()
        for b in blocks:
            assert b.shape[-1] == SEQ_LEN and (b[..., 0] == eos).all() and (b[..., -1] == eos).all()
            counter.update(t for t in b.flatten().tolist() if t != eos)
        return counter


# 6 files >= 4 slots: each slot reads whole files; 3 files < 4 slots: slots split by documents.
MODES = pytest.mark.parametrize("n_files", [6, 3], ids=["file_split", "document_split"])


def take(it, n: int) -> list[torch.Tensor]:
    return [next(it) for _ in range(n)]


def checkpointed(state: dict) -> dict:
    """`state` after a torch.save / torch.load(weights_only=True) round trip, as in a checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@MODES
def test_one_epoch_covers_each_document_once(tmp_path: Path, n_files: int) -> None:
    corpus = Corpus(tmp_path, n_files)
    blocks = []
    for rank in range(2):
        loader = build_raw_loader(corpus.dataset(rank=rank, world_size=2, max_epochs=1), BATCH, num_workers=2)
        blocks += list(loader)
    assert corpus.counts(blocks) == corpus.length


@MODES
def test_same_layout_resume_is_exact(tmp_path: Path, n_files: int) -> None:
    corpus = Corpus(tmp_path, n_files)
    for rank in range(2):
        loader = build_raw_loader(corpus.dataset(rank=rank, world_size=2), BATCH, num_workers=2)
        it = iter(loader)
        take(it, 3)
        state = checkpointed(loader.state_dict())
        expected = take(it, 40)
        assert expected[0].shape == (BATCH, SEQ_LEN) and expected[0].dtype == torch.int64
        # The continuation crosses into epoch 1 and beyond, where the file order is reshuffled.
        assert min(s["epoch"] for s in dataset_states_from_loader_state(loader.state_dict())) >= 1
        resumed = build_raw_loader(corpus.dataset(rank=rank, world_size=2), BATCH, num_workers=2)
        resumed.load_state_dict(state)
        got = take(iter(resumed), 40)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_same_layout_resume_without_workers(tmp_path: Path) -> None:
    corpus = Corpus(tmp_path, 2)
    loader = build_raw_loader(corpus.dataset(), BATCH)
    it = iter(loader)
    take(it, 5)
    state = checkpointed(loader.state_dict())
    expected = take(it, 30)
    resumed = build_raw_loader(corpus.dataset(), BATCH)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(take(iter(resumed), 30), expected))


@MODES
@pytest.mark.parametrize("steps", [4, 20], ids=["within_epoch", "across_epochs"])
@pytest.mark.parametrize("workers", [0, 2], ids=["1x1", "1x2"])
def test_other_layout_resume_loses_no_document(tmp_path: Path, caplog, n_files: int, steps: int, workers: int) -> None:
    """2 ranks x 2 workers, then 1 rank (1 or 2 workers) from the merged states: every document
    of the epochs run appears at least as often as in an uninterrupted run, re-reads stay within
    the logged bound, and the documents in flight at the save are read again."""
    epochs = 4  # the run is finite so that coverage can be counted
    corpus = Corpus(tmp_path, n_files)
    before, slot_states = [], []
    for rank in range(2):
        loader = build_raw_loader(corpus.dataset(rank=rank, world_size=2, max_epochs=epochs), BATCH, num_workers=2)
        before += take(iter(loader), steps)
        slot_states += dataset_states_from_loader_state(loader.state_dict())
    merged = merge_states(slot_states)
    in_flight = {
        t for s in slot_states for t in torch.cat((s["buffer"].flatten(), s["tokens"])).tolist()
        if t != corpus.tokenizer.eos_id
    }
    resumed = corpus.dataset(max_epochs=epochs)
    with caplog.at_level(logging.INFO, logger="edlm_dist.data"):
        resumed.load_state_dict(merged)
    assert "different layout" in caplog.text and str(merged["reread_documents"]) in caplog.text
    after = list(build_raw_loader(resumed, BATCH, num_workers=workers))

    total, later = corpus.counts(before + after), corpus.counts(after)
    assert all(total[t] >= epochs * n for t, n in corpus.length.items()), "a document was lost"
    # Read again at most once per epoch; once in all when no slot had left the merged epoch.
    again = epochs + 1 if steps == 4 else 2 * epochs
    assert all(total[t] <= again * n for t, n in corpus.length.items())
    reread = [t for t, n in corpus.length.items() if total[t] > epochs * n]
    read = sum(sum(s["docs_per_epoch"]) for s in slot_states)
    assert len(reread) <= merged["reread_documents"] <= read
    # The documents with tokens in a packer or shuffle buffer are all read again.
    assert in_flight <= set(later) and len(in_flight) <= merged["reread_documents"]
    if steps == 4:
        assert merged["epoch"] == 0


def test_exact_state_refused_at_another_layout(tmp_path: Path) -> None:
    corpus = Corpus(tmp_path, 6)
    loader = build_raw_loader(corpus.dataset(rank=1, world_size=2), BATCH, num_workers=2)
    take(iter(loader), 2)
    state = dataset_states_from_loader_state(loader.state_dict())[1]
    single = corpus.dataset()
    single.load_state_dict(state)
    with pytest.raises(DataError, match="merge_states"):
        next(iter(single))
    with pytest.raises(ValueError, match="all 4 slots"):
        merge_states(dataset_states_from_loader_state(loader.state_dict()))


def test_bad_records_raise_or_are_skipped(tmp_path: Path) -> None:
    good, flawed = ["a" * 9, "b" * 7, "c" * 5], ["d" * 6, "e" * 8]
    files = [
        write_zst(tmp_path / "good.jsonl.zst", jsonl(good)),
        write_zst(tmp_path / "flawed.jsonl.zst", [jsonl(flawed)[0], '{"text": "ffff', jsonl(flawed)[1]]),
    ]
    corrupt = tmp_path / "corrupt.jsonl.zst"
    corrupt.write_bytes(b"this is not a zstd frame" * 10)
    tokenizer = CharTokenizer.from_corpus("abcdef")

    def blocks(paths: list[str], on_error: str) -> tuple[RawTextBlocks, list[torch.Tensor]]:
        ds = RawTextBlocks(paths, tokenizer, seq_len=6, shuffle_buffer=4, on_error=on_error, max_epochs=1)
        return ds, list(ds)

    with pytest.raises(DataError, match=r"flawed\.jsonl\.zst: line 2"):
        blocks(files, "raise")
    with pytest.raises(DataError, match=r"corrupt\.jsonl\.zst"):
        blocks([files[0], str(corrupt)], "raise")
    ds, out = blocks(files + [str(corrupt)], "skip")
    counts = Counter(t for b in out for t in b.tolist() if t != tokenizer.eos_id)
    assert counts == Counter({tokenizer.encode(d[0])[0]: len(d) for d in good + flawed})
    assert ds.skipped.count == 2


def test_a_damaged_frame_stops_the_stream_before_any_block_holds_its_documents(tmp_path: Path) -> None:
    """A raw shard of three checksummed frames, the middle one damaged: the blocks before the error
    are those of the intact shard, none holds a token of the damaged frame's documents (intact
    ones included), and the error, also from dataloader workers, names the shard and the frame."""
    docs = [chr(0x4E00 + i) * (5 + i % 20) for i in range(300)]
    compress = zstandard.ZstdCompressor(write_checksum=True).compress
    frames = [compress("".join(line + "\n" for line in jsonl(docs[a : a + 100])).encode()) for a in (0, 100, 200)]
    intact, damaged = tmp_path / "intact.jsonl.zst", tmp_path / "damaged.jsonl.zst"
    intact.write_bytes(b"".join(frames))
    broken = bytearray(b"".join(frames))
    broken[len(frames[0]) + len(frames[1]) // 2] ^= 0x10
    damaged.write_bytes(bytes(broken))
    tokenizer = CharTokenizer.from_corpus("".join(d[0] for d in docs))

    def dataset(path: Path) -> RawTextBlocks:
        return RawTextBlocks([str(path)], tokenizer, seq_len=SEQ_LEN, shuffle_buffer=1, max_epochs=1)

    reference, read = list(dataset(intact)), []
    with pytest.raises(DataError) as info:
        for block in dataset(damaged):
            read.append(block)
    assert str(info.value).startswith(f"{damaged}: zstd frame at compressed byte {len(frames[0])}: corrupt zstd data: ")
    assert len(read) > 10 and all(torch.equal(a, b) for a, b in zip(read, reference))
    held = {t for block in read for t in block.tolist()}
    assert not held & set(tokenizer.encode("".join(d[0] for d in docs[100:200])))
    with pytest.raises(DataError) as from_worker:
        batches = iter(build_raw_loader(dataset(damaged), BATCH, num_workers=2))
        while True:
            next_from_workers(batches)
    assert str(from_worker.value) == str(info.value)


def test_slot_without_documents_is_an_error(tmp_path: Path) -> None:
    path = write_zst(tmp_path / "tiny.jsonl.zst", jsonl(["ab", "ba"]))
    ds = RawTextBlocks([path], CharTokenizer.from_corpus("ab"), seq_len=4, rank=3, world_size=4)
    with pytest.raises(DataError, match="no documents"):
        next(iter(ds))


def test_gpt2_blocks_follow_the_documents_and_throughput(tmp_path: Path, data_dir: Path) -> None:
    """With one slot and a one-block buffer the blocks are the documents' tokens in file order;
    also prints the tokens/s of one slot (tokenising included)."""
    tokenizer = build_tokenizer("gpt2", str(data_dir / "gpt2_tokenizer"))
    text = (data_dir / "owt_sample" / "openwebtext_first100docs.txt").read_text(encoding="utf-8")
    docs = [d for d in text.split("\n\n") if d.strip()]
    path = write_zst(tmp_path / "owt.jsonl.zst", jsonl(docs * 4))

    stream = [t for d in docs[:50] for t in tokenizer.encode(d) + [tokenizer.eos_id]]
    ds = RawTextBlocks([path], tokenizer, seq_len=128, shuffle_buffer=1)
    blocks = take(iter(ds), len(stream) // 126)
    assert torch.cat([b[1:-1] for b in blocks]).tolist() == stream[: 126 * len(blocks)]

    ds = RawTextBlocks([path], tokenizer, seq_len=1024, shuffle_buffer=100, max_epochs=1)
    start = time.perf_counter()
    n = sum(b.numel() - 2 for b in ds)
    print(f"\nraw stream, one slot: {n / (time.perf_counter() - start):.3g} tokens/s ({n} tokens)")
