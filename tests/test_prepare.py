"""The prepared-corpus format (edlm_dist.data.corpus_format, _reader, _writer) and tools/prepare_data.py: shards read back
exactly, corruption and missing files are named, fingerprints follow the data, and preparation
matches a direct GPT-2 encoding and resumes to the same bytes after an interruption."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import uuid
import zlib
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zstandard

from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.corpus_format import Manifest, manifest_fingerprint
from edlm_dist.data.corpus_reader import TokenCorpus, read_manifest
from edlm_dist.data import corpus_writer
from edlm_dist.data.corpus_writer import CorpusWriter, write_corpus
from edlm_dist.data.sources import iter_documents
from edlm_dist.data.tokenizers import Tokenizer, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
# Distinct token patterns per document, so any misplaced slice shows.
CHAR_DOCS = [("abc"[i % 3] + "xyz"[i % 2]) * (i % 7 + 1) + str(i) for i in range(60)]


def load_tool():
    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "tools/prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_data = load_tool()


def stream_of(tokenizer: Tokenizer, docs: list[str]) -> np.ndarray:
    return np.array([t for d in docs for t in tokenizer.encode(d) + [tokenizer.eos_id]], dtype=np.int64)


def char_corpus(folder: str, docs: list[str] = CHAR_DOCS, shard_tokens: int = 40) -> Tokenizer:
    tokenizer = build_tokenizer("char", corpus="".join(CHAR_DOCS))
    write_corpus(folder, tokenizer, {"train": docs[:50], "val": docs[50:]}, shard_tokens=shard_tokens, write_raw=True)
    return tokenizer


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ---- shards ----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["local", "memory"])
def test_char_corpus_reads_back(tmp_path: Path, where: str) -> None:
    folder = str(tmp_path / "corpus") if where == "local" else f"memory://corpus-{uuid.uuid4().hex}"
    tokenizer = char_corpus(folder)
    corpus = TokenCorpus(folder, "train")
    stream = stream_of(tokenizer, CHAR_DOCS[:50])
    shards = corpus.manifest.splits["train"]["token_shards"]
    assert len(shards) > 4 and corpus.manifest.dtype == "uint16"
    assert (corpus.length, corpus.documents, corpus.vocab_size, corpus.eos_id) == (
        len(stream), 50, tokenizer.vocab_size, tokenizer.eos_id)
    assert np.array_equal(corpus.read(0, corpus.length), stream)
    bounds = np.cumsum([s["tokens"] for s in shards])
    for a in [0, 1, *(int(b) - 2 for b in bounds[:-1])]:
        for b in [a, a + 1, a + 3, a + 45, a + 130]:
            b = min(b, corpus.length)
            assert np.array_equal(corpus.read(a, b), stream[a:b]), (a, b)
    for i, doc in enumerate(CHAR_DOCS[:50]):
        assert corpus.document(i).tolist() == tokenizer.encode(doc)
    val = TokenCorpus(folder, "val")
    assert val.document(9).tolist() == tokenizer.encode(CHAR_DOCS[59])
    assert corpus.read(5, 90).dtype == np.int64
    assert corpus.read(corpus.length, corpus.length).shape == (0,)
    with pytest.raises(IndexError):
        corpus.read(0, corpus.length + 1)
    with pytest.raises(IndexError):
        corpus.document(50)
    clone = pickle.loads(pickle.dumps(corpus))
    assert np.array_equal(clone.read(3, 200), stream[3:200])
    raw = [d for s in corpus.manifest.splits["train"]["raw_shards"] for d in iter_documents(f"{folder}/{s['path']}")]
    assert raw == CHAR_DOCS[:50]


def test_gpt2_corpus_reads_back(tmp_path: Path, data_dir: Path) -> None:
    tokenizer = build_tokenizer("gpt2", str(data_dir / "gpt2_tokenizer"))
    docs = list(iter_documents(str(data_dir / "owt_sample/openwebtext_first100docs.txt"), txt_mode="blank_line"))[:60]
    write_corpus(str(tmp_path), tokenizer, {"train": docs[:50], "val": docs[50:]}, shard_tokens=500)
    corpus = TokenCorpus(str(tmp_path), "train")
    stream = stream_of(tokenizer, docs[:50])
    assert len(corpus.manifest.splits["train"]["token_shards"]) > 2
    assert np.array_equal(corpus.read(0, corpus.length), stream)
    assert np.array_equal(corpus.read(490, 1700), stream[490:1700])
    assert all(corpus.document(i).tolist() == tokenizer.encode(docs[i]) for i in range(50))


# ---- corruption is caught before anything reads it (data.verify_shards off) -----------------
def damage(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def to_format_v1(folder: Path) -> None:
    """Make a v2 corpus what tools/prepare_data.py wrote before check files (old corpora must still be read)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format"] = "edlm_dist-corpus-v1"
    del manifest["check_tokens"]
    for info in manifest["splits"].values():
        for shard in info["token_shards"]:
            (folder / shard.pop("checks")).unlink()
            del shard["checks_sha256"], shard["index_sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


LONG_DOCS = CHAR_DOCS * 40


def long_corpus(folder: Path) -> tuple[Tokenizer, np.ndarray]:
    """A char corpus whose train shards hold several 1024-token chunks, and its train stream."""
    tokenizer = build_tokenizer("char", corpus="".join(CHAR_DOCS))
    write_corpus(str(folder), tokenizer, {"train": LONG_DOCS, "val": CHAR_DOCS[:10]}, shard_tokens=5000)
    return tokenizer, stream_of(tokenizer, LONG_DOCS)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_damaged_token_chunk_is_never_read(tmp_path: Path, where: str) -> None:
    local = tmp_path / "corpus"
    tokenizer, stream = long_corpus(local)
    first = json.loads((local / "manifest.json").read_text())["splits"]["train"]["token_shards"][0]["tokens"]
    damage(local / "train-00001.tokens", 2 * (2048 + 5), np.array([tokenizer.eos_id], "<u2").tobytes())
    folder = str(local)
    if where == "memory":
        folder = f"memory://corrupt-{uuid.uuid4().hex}"
        fsspec.filesystem("memory").put(str(local), folder, recursive=True)
    corpus = TokenCorpus(folder, "train")
    assert np.array_equal(corpus.read(first + 1024, first + 2048), stream[first + 1024 : first + 2048])
    with pytest.raises(DataError) as info:
        corpus.read(first + 1500, first + 2100)  # the damaged token is in the read's second chunk
    assert str(info.value) == (f"{folder}/train-00001.tokens: token offsets 2048-3072 (bytes 4096-6144) do not match "
                               f"their CRC-32 in {folder}/train-00001.check")
    skipped = SkipCounter()
    tokens = TokenCorpus(folder, "train", on_error="skip", skipped=skipped).read(first + 1500, first + 3100)
    expected = stream[first + 1500 : first + 3100].copy()
    expected[2048 - 1500 : 3072 - 1500] = tokenizer.eos_id
    assert np.array_equal(tokens, expected) and skipped.count == 1
    assert skipped.reasons[0] == str(info.value) + "; replaced by EOS"


def test_damaged_index_and_check_files_are_named(tmp_path: Path) -> None:
    long_corpus(tmp_path)
    damage(tmp_path / "train-00000.index", 8 * 3, np.array([2], "<i8").tobytes())
    damage(tmp_path / "train-00001.check", 4, b"\x00")
    corpus = TokenCorpus(str(tmp_path), "train")
    with pytest.raises(DataError, match=rf"^{tmp_path}/train-00000\.index: its sha256 is [0-9a-f]{{16}}\.\.\., the "
                                        rf"corpus manifest says [0-9a-f]{{16}}\.\.\. \(corrupt or replaced"):
        corpus.document(0)
    first = corpus.manifest.splits["train"]["token_shards"][0]["tokens"]
    with pytest.raises(DataError, match=rf"^{tmp_path}/train-00001\.check: its sha256 is "):
        corpus.read(first, first + 10)
    to_format_v1(tmp_path)  # the index's own framing is all a v1 corpus can check
    with pytest.raises(DataError, match=rf"^{tmp_path}/train-00000\.index: entry 3 \(byte 24\) = 2 is not above"):
        TokenCorpus(str(tmp_path), "train").document(0)


def test_a_format_v1_corpus_is_still_read_and_its_shards_checked_whole(tmp_path: Path, caplog) -> None:
    tokenizer = char_corpus(str(tmp_path))
    to_format_v1(tmp_path)
    stream = stream_of(tokenizer, CHAR_DOCS[:50])
    corpus = TokenCorpus(str(tmp_path), "train")
    assert corpus.check_tokens is None and np.array_equal(corpus.read(0, corpus.length), stream)
    assert f"{tmp_path} was prepared before per-chunk checks (format v1)" in caplog.text
    first = corpus.manifest.splits["train"]["token_shards"][0]["tokens"]
    damage(tmp_path / "train-00001.tokens", 3 * 2, np.array([tokenizer.eos_id], "<u2").tobytes())
    with pytest.raises(DataError, match=rf"^{tmp_path}/train-00001\.tokens: token offsets 0-\d+ \(bytes 0-\d+\) are in "
                                        rf"a shard whose sha256 is [0-9a-f]{{16}}\.\.\., the corpus manifest says"):
        TokenCorpus(str(tmp_path), "train").read(first + 5, first + 10)
    skipped = SkipCounter()
    tokens = TokenCorpus(str(tmp_path), "train", on_error="skip", skipped=skipped).read(first - 2, first + 10)
    assert tokens.tolist() == stream[first - 2 : first].tolist() + [tokenizer.eos_id] * 10 and skipped.count == 1
    # hashed already (data.verify_shards): only out-of-vocabulary ids are caught
    damage(tmp_path / "train-00001.tokens", 3 * 2, np.array([60000], "<u2").tobytes())
    with pytest.raises(DataError, match=r"train-00001\.tokens: token id 60000 at token offset 3 is >= the vocab"):
        TokenCorpus(str(tmp_path), "train", shards_verified=True).read(0, first + 10)
    skipped = SkipCounter()
    corpus = TokenCorpus(str(tmp_path), "train", on_error="skip", skipped=skipped, shards_verified=True)
    tokens = corpus.read(first, first + 10)
    expected = stream[first : first + 10]
    expected[3] = tokenizer.eos_id
    assert np.array_equal(tokens, expected) and skipped.count == 1 and "train-00001.tokens" in skipped.reasons[0]


def test_missing_or_broken_files(tmp_path: Path) -> None:
    char_corpus(str(tmp_path))
    (tmp_path / "val-00000.index").unlink()
    with pytest.raises(DataError, match=r"val-00000\.index: listed in .*manifest\.json but missing"):
        read_manifest(str(tmp_path))
    with pytest.raises(DataError, match=r"val-00000\.index: listed"):
        TokenCorpus(str(tmp_path), "train")
    (tmp_path / "val-00000.index").write_bytes(b"")
    with open(tmp_path / "train-00002.tokens", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match=r"train-00002\.tokens: 10 bytes, .*manifest\.json says \d+ \(truncated"):
        read_manifest(str(tmp_path))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["splits"]["train"]["token_shards"][1]["sha256"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest\.json: splits\.train\.token_shards\[1\]: missing key 'sha256'"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json not found: .* is not a corpus prepared by tools/prepare_data"):
        read_manifest(str(tmp_path))


def test_fingerprint_follows_the_data(tmp_path: Path) -> None:
    fingerprints = {}
    for name, docs in [("a", CHAR_DOCS), ("b", CHAR_DOCS), ("c", CHAR_DOCS[:7] + ["xx"] + CHAR_DOCS[8:])]:
        char_corpus(str(tmp_path / name), docs)
        fingerprints[name] = TokenCorpus(str(tmp_path / name), "train").fingerprint
    assert fingerprints["a"] == fingerprints["b"] != fingerprints["c"]
    manifest = read_manifest(str(tmp_path / "a"))
    assert manifest_fingerprint(manifest) == fingerprints["a"] and len(fingerprints["a"]) == 16
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_writer_rolls_shards_and_returns_entries(tmp_path: Path) -> None:
    tokenizer = build_tokenizer("char", corpus="ab")
    records = []
    writer = CorpusWriter(str(tmp_path), tokenizer, shard_tokens=5, split="train", on_shard=records.append)
    for text in ["ab", "aab", "b", "abab", "a"]:
        writer.add(text)
    shards = writer.close()
    assert writer.close() == shards
    assert [(s["path"], s["documents"], s["tokens"]) for s in shards] == [
        ("train-00000.tokens", 2, 7), ("train-00001.tokens", 2, 7), ("train-00002.tokens", 1, 2)]
    assert [r["shard"] for r in records] == [0, 1, 2] and writer.raw_shards == []
    assert np.fromfile(tmp_path / "train-00001.index", "<i8").tolist() == [0, 2, 7]
    assert sorted(os.listdir(tmp_path)) == [
        f"train-0000{i}.{ext}" for i in range(3) for ext in ("check", "index", "tokens")]
    tokens = np.fromfile(tmp_path / "train-00001.tokens", "<u2")
    assert np.fromfile(tmp_path / "train-00001.check", "<u4").tolist() == [zlib.crc32(tokens)]  # one chunk


def test_raw_shards_are_frames_of_whole_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_writer, "RAW_FRAME_BYTES", 100)
    tokenizer = build_tokenizer("char", corpus="".join(CHAR_DOCS))
    write_corpus(str(tmp_path), tokenizer, {"train": CHAR_DOCS[:50], "val": CHAR_DOCS[50:]}, shard_tokens=300,
                 write_tokens=False, write_raw=True)
    data, frames = (tmp_path / "train-00000.jsonl.zst").read_bytes(), []
    while data:
        frame = zstandard.ZstdDecompressor().decompressobj()
        frames.append(frame.decompress(data))
        assert zstandard.get_frame_parameters(data).has_checksum and frame.eof
        data = frame.unused_data
    assert len(frames) > 3 and all(f.endswith(b"\n") and len(f) >= 100 for f in frames[:-1])
    assert [d for f in frames for d in f.decode().splitlines()] == [
        json.dumps({"text": d}) for d in CHAR_DOCS[: len(b"".join(frames).splitlines())]]


# ---- tools/prepare_data.py -------------------------------------------------------------------
def owt_args(data_dir: Path, out: Path) -> list[str]:
    return [
        "--source", str(data_dir / "owt_sample/openwebtext_first100docs.txt"), "--out", str(out),
        "--tokenizer-path", str(data_dir / "gpt2_tokenizer"), "--txt-mode", "blank_line",
        "--format", "both", "--shard-tokens", "20000", "--val-docs", "10", "--workers", "2",
    ]


@pytest.fixture(scope="module")
def owt_reference(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """An uninterrupted preparation of the OpenWebText sample."""
    out = tmp_path_factory.mktemp("owt") / "corpus"
    prepare_data.main(owt_args(data_dir, out))
    return out


def test_prepare_owt_matches_direct_encoding(owt_reference: Path, data_dir: Path) -> None:
    docs = list(iter_documents(str(data_dir / "owt_sample/openwebtext_first100docs.txt"), txt_mode="blank_line"))
    tokenizer = build_tokenizer("gpt2", str(data_dir / "gpt2_tokenizer"))
    manifest = read_manifest(str(owt_reference))
    train, val = manifest.splits["train"], manifest.splits["val"]
    assert len(train["token_shards"]) >= 4 and len(train["raw_shards"]) == len(train["token_shards"])
    assert (train["documents"], val["documents"], manifest.val_documents) == (len(docs) - 10, 10, 10)
    tokens = train["tokens"] + val["tokens"] - len(docs)
    assert tokens == sum(len(tokenizer.encode(d)) for d in docs)
    raw = [d for split in (train, val) for s in split["raw_shards"]
           for d in iter_documents(str(owt_reference / s["path"]))]
    assert raw == docs
    corpus = TokenCorpus(str(owt_reference), "val")
    assert [corpus.document(i).tolist() for i in range(10)] == [tokenizer.encode(d) for d in docs[-10:]]
    assert manifest.tokenizer["fingerprint"] == tokenizer.fingerprint() and manifest.dtype == "uint16"


class Interrupted(RuntimeError):
    pass


def test_interrupted_run_resumes_to_the_same_bytes(
    owt_reference: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    finished: list[int] = []

    class FailingWriter(prepare_data.CorpusWriter):
        def _finish_shard(self) -> None:
            if len(finished) == 2:
                raise Interrupted("killed")
            super()._finish_shard()
            finished.append(1)

    out = tmp_path / "corpus"
    with monkeypatch.context() as patch:
        patch.setattr(prepare_data, "CorpusWriter", FailingWriter)
        with pytest.raises(Interrupted):
            prepare_data.main(owt_args(data_dir, out))
    progress = json.loads((out / "progress.json").read_text())
    assert [r["shard"] for r in progress["shards"]] == [0, 1] and not (out / "manifest.json").exists()
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary files left
    prepare_data.main(owt_args(data_dir, out))
    assert "(2 kept from an earlier run)" in capsys.readouterr().out
    assert file_hashes(out) == file_hashes(owt_reference)


def test_a_full_disk_leaves_no_file_of_the_shard_it_interrupted(
    owt_reference: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def full_disk(path, mode="r", *args, **kwargs):  # the last file of shard 1 finds the disk full
        if "w" in mode and os.path.basename(path).startswith(".train-00001.jsonl.zst."):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return open(path, mode, *args, **kwargs)

    out = tmp_path / "corpus"
    with monkeypatch.context() as patch:
        patch.setattr(corpus_writer, "open", full_disk, raising=False)
        with pytest.raises(SystemExit) as info:
            prepare_data.main(owt_args(data_dir, out))
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: cannot write {out}/train-00001.jsonl.zst: [Errno 28] No space left on device")
    shard_0 = [f"train-00000.{ext}" for ext in ("check", "index", "jsonl.zst", "tokens")]
    assert sorted(os.listdir(out)) == ["progress.json", *shard_0]  # nothing of shard 1, no temporary file
    prepare_data.main(owt_args(data_dir, out))  # space freed: the same command finishes the corpus
    assert "(1 kept from an earlier run)" in capsys.readouterr().out
    assert file_hashes(out) == file_hashes(owt_reference)


def test_tampered_shard_is_rewritten(owt_reference: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    shutil.copytree(owt_reference, out)
    kept, tampered = out / "train-00000.tokens", out / "train-00001.tokens"
    inode = kept.stat().st_ino
    data = bytearray(tampered.read_bytes())
    data[100] ^= 1
    tampered.write_bytes(bytes(data))
    prepare_data.main(owt_args(data_dir, out))
    assert file_hashes(out) == file_hashes(owt_reference)
    assert kept.stat().st_ino == inode  # verified and kept, not rewritten


def test_prepare_urls_char_and_skip(capsys: pytest.CaptureFixture) -> None:
    root = f"memory://prepare-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    lines = [json.dumps({"text": d}).encode() for d in CHAR_DOCS]
    fs.pipe_file(f"{root}/src/a.jsonl.zst", zstandard.ZstdCompressor().compress(b"\n".join(lines[:30] + [b"{bad"])))
    fs.pipe_file(f"{root}/src/b.jsonl", b"\n".join(lines[30:]))
    args = ["--source", f"{root}/src", "--out", f"{root}/out", "--tokenizer", "char", "--format", "both",
            "--shard-tokens", "50", "--val-docs", "5", "--on-error", "skip"]
    prepare_data.main(args)
    summary = capsys.readouterr().out
    shards = re.search(r"(\d+) shards \(0 kept", summary).group(1)
    assert "1 bad records skipped" in summary and int(shards) > 4
    tokenizer = build_tokenizer("char", corpus="".join(CHAR_DOCS))
    train = TokenCorpus(f"{root}/out", "train")
    assert np.array_equal(train.read(0, train.length), stream_of(tokenizer, CHAR_DOCS[:55]))
    assert TokenCorpus(f"{root}/out", "val").document(4).tolist() == tokenizer.encode(CHAR_DOCS[59])
    prepare_data.main(args)  # a finished run: verified, nothing rewritten
    assert f"{shards} shards ({shards} kept from an earlier run), 0 bad records" in capsys.readouterr().out


def test_prepare_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "a.txt"
    source.write_text("one document")
    cases = [
        (["--source", str(tmp_path / "none"), "--out", str(tmp_path / "o")], f"no .* files found at {tmp_path}/none"),
        (["--source", str(source), "--out", str(tmp_path / "o"), "--tokenizer", "char"],
         ".*a\\.txt has 1 documents: --val-docs 100000 leaves none for training"),
    ]
    if importlib.util.find_spec("datasets") is None:
        cases.append((["--hf-dataset", "Skylion007/openwebtext", "--out", str(tmp_path / "o")],
                      r"--hf-dataset needs the Hugging Face datasets package \(pip install 'edlm-dist\[hub\]'\)"))
    for args, message in cases:
        with pytest.raises(SystemExit) as info:
            prepare_data.main(args)
        assert info.value.code == 2
        last = capsys.readouterr().err.splitlines()[-1]
        assert re.fullmatch("error: " + message, last), last
    base = ["--source", str(source), "--out", str(tmp_path / "o"), "--tokenizer", "char", "--val-docs", "0"]
    prepare_data.main(base + ["--shard-tokens", "4"])
    with pytest.raises(SystemExit):
        prepare_data.main(base + ["--shard-tokens", "5"])
    assert "holds a run with other settings (shard_tokens: 4, now 5)" in capsys.readouterr().err


def test_owt_shards_stream_back_through_the_training_pipeline(owt_reference: Path, data_dir: Path) -> None:
    """Both shard formats, read the way training reads them, give the direct encoding's tokens."""
    import torch

    from edlm_dist.data.raw_stream import RawTextBlocks
    from edlm_dist.data.batches import BatchPlan
    from edlm_dist.data.packed import PackedBlocks

    docs = list(iter_documents(str(data_dir / "owt_sample/openwebtext_first100docs.txt"), txt_mode="blank_line"))[:-10]
    tokenizer = build_tokenizer("gpt2", str(data_dir / "gpt2_tokenizer"))
    stream = [t for d in docs for t in tokenizer.encode(d) + [tokenizer.eos_id]]
    manifest = read_manifest(str(owt_reference))
    raw_files = [str(owt_reference / s["path"]) for s in manifest.splits["train"]["raw_shards"]]
    raw = torch.stack(list(RawTextBlocks(raw_files, tokenizer, seq_len=256, shuffle_buffer=8, max_epochs=1)))
    assert int((raw[:, 1:-1] != tokenizer.eos_id).sum()) == sum(len(tokenizer.encode(d)) for d in docs)
    packed = PackedBlocks(TokenCorpus(str(owt_reference), "train"), seq_len=256, plan=BatchPlan(4))
    order = packed.epoch_order(0)
    for step in range(3):
        for row, block_id in zip(packed.batch(step), order[step * 4 : step * 4 + 4].tolist()):
            assert row[1:-1].tolist() == stream[block_id * 254 : (block_id + 1) * 254]
