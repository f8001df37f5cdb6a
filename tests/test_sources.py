"""edlm_dist.data.sources: listing files, each format's documents, `start`, fsspec URLs, and every
kind of bad input under on_error = "raise" (a DataError naming file and place) and "skip" (counted)."""

from __future__ import annotations

import json
import random
import re
import string
import uuid
from pathlib import Path
from typing import Callable

import fsspec
import pytest
import zstandard

from edlm_dist.data import zstd_frames
from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.sources import iter_documents, list_files

# Distinct documents: unicode, inner newlines (JSON only), quotes, an empty one (JSON only).
DOCS = [f"doc {i}: " + "αβγ"[i % 3] * (i + 1) + f" \"q{i}\" end" for i in range(40)]
JSON_DOCS = DOCS + ["two\nlines\n\ninside", "", "tab\tand \\ backslash"]


def jsonl_bytes(docs: list[str]) -> bytes:
    return b"".join(json.dumps({"text": d, "id": i}).encode() + b"\n" for i, d in enumerate(docs))


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


def write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def read_all(path: str, **kwargs) -> list[str]:
    return list(iter_documents(path, **kwargs))


# ---- formats ---------------------------------------------------------------------------------
def test_jsonl_and_zst_round_trip(tmp_path: Path) -> None:
    assert read_all(write(tmp_path / "a.jsonl", jsonl_bytes(JSON_DOCS))) == JSON_DOCS
    assert read_all(write(tmp_path / "a.jsonl.zst", zst(jsonl_bytes(JSON_DOCS)))) == JSON_DOCS
    # several frames, no final newline, blank lines between records, another key
    data = zst(jsonl_bytes(DOCS[:10])) + zst(b"\n  \n" + jsonl_bytes(DOCS[10:]).replace(b'"text"', b'"body"')[:-1])
    path = write(tmp_path / "frames.jsonl.zst", data)
    assert read_all(path, text_key="body", on_error="skip", skipped=SkipCounter()) == DOCS[10:]
    assert read_all(path, text_key="text", on_error="skip", skipped=SkipCounter()) == DOCS[:10]


def test_txt_modes(tmp_path: Path) -> None:
    whole = "line one\n\nline three\r\n"
    assert read_all(write(tmp_path / "one.txt", whole.encode())) == [whole]
    text = "\n\n".join(DOCS) + "\n\n"
    assert read_all(write(tmp_path / "p.txt", text.encode()), txt_mode="blank_line") == DOCS
    # multi-line paragraphs, CRLF, whitespace-only separator lines, no final newline
    messy = "a1\r\na2\r\n \t \r\n\n\nb1\nb2"
    assert read_all(write(tmp_path / "m.txt", messy.encode()), txt_mode="blank_line") == ["a1\r\na2", "b1\nb2"]


def test_parquet(tmp_path: Path) -> None:
    path = str(tmp_path / "a.parquet")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        Path(path).write_bytes(b"PAR1")
        with pytest.raises(DataError, match=r"a\.parquet.*needs pyarrow \(pip install 'edlm-dist\[parquet\]'\)"):
            read_all(path)
        return
    pq.write_table(pa.table({"text": JSON_DOCS + [None]}), path, row_group_size=7)
    skipped = SkipCounter()
    assert read_all(path, on_error="skip", skipped=skipped) == JSON_DOCS
    assert skipped.count == 1 and f"row {len(JSON_DOCS) + 1}" in skipped.reasons[0]
    assert read_all(path, start=5, on_error="skip", skipped=SkipCounter()) == JSON_DOCS[5:]


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.zst", "a.txt"])
def test_start_skips_documents(tmp_path: Path, name: str) -> None:
    data = jsonl_bytes(DOCS) if name.startswith("a.jsonl") else ("\n\n".join(DOCS) + "\n").encode()
    path = write(tmp_path / name, zst(data) if name.endswith(".zst") else data)
    assert read_all(path, txt_mode="blank_line", start=17) == DOCS[17:]
    assert read_all(path, txt_mode="blank_line", start=len(DOCS)) == []
    assert read_all(path, txt_mode="blank_line", start=len(DOCS) + 5) == []


def test_start_counts_documents_not_bad_lines(tmp_path: Path) -> None:
    """Under "skip", `start` counts yielded documents; bad records before it are not counted again."""
    lines = jsonl_bytes(DOCS[:5]).splitlines(keepends=True)
    path = write(tmp_path / "a.jsonl", b"".join(lines[:2] + [b"{broken\n"] + lines[2:] + [b'{"x": 1}\n']))
    first = SkipCounter()
    assert read_all(path, on_error="skip", skipped=first) == DOCS[:5] and first.count == 2
    resumed = SkipCounter()
    assert read_all(path, on_error="skip", skipped=resumed, start=3) == DOCS[3:5]
    assert resumed.count == 1 and "line 7" in resumed.reasons[0]


# ---- listing and URLs ------------------------------------------------------------------------
def test_list_files(tmp_path: Path) -> None:
    for name in ["b/2.jsonl.zst", "b/c/3.txt", "a.txt", "b/.tmp.txt", "notes.md", "x.parquet"]:
        write(tmp_path / name, b"x")
    expected = [str(tmp_path / n) for n in ["a.txt", "b/2.jsonl.zst", "b/c/3.txt", "x.parquet"]]
    assert list_files(str(tmp_path)) == expected
    assert list_files(str(tmp_path / "a.txt")) == expected[:1]
    assert list_files(f"file://{tmp_path}/b/**/*.txt") == [str(tmp_path / "b/c/3.txt")]
    assert list_files(str(tmp_path / "*"), suffixes=(".md",)) == [str(tmp_path / "notes.md")]
    for missing in [str(tmp_path / "nothing"), str(tmp_path / "*.jsonl"), str(tmp_path / "notes.md")]:
        with pytest.raises(DataError, match="no .*files found at " + missing.replace("*", r"\*")):
            list_files(missing)


def test_memory_url() -> None:
    root = f"memory://sources-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"{root}/docs/b.jsonl.zst", zst(jsonl_bytes(DOCS[20:])))
    fs.pipe_file(f"{root}/docs/a.jsonl", jsonl_bytes(DOCS[:20]))
    fs.pipe_file(f"{root}/docs/sub/c.txt", b"x\n\ny\n")
    files = list_files(f"{root}/docs")
    assert [f.rsplit("/", 1)[-1] for f in files] == ["a.jsonl", "b.jsonl.zst", "c.txt"]
    assert all(f.startswith("memory://") for f in files)
    assert [d for f in files[:2] for d in iter_documents(f)] == DOCS
    assert read_all(files[1], start=5) == DOCS[25:]
    assert read_all(files[2], txt_mode="blank_line") == ["x", "y"]
    assert list_files(f"{root}/docs/*.jsonl*") == files[:2]


# ---- bad input -------------------------------------------------------------------------------
def truncated_zst(tmp_path: Path) -> str:
    data = zst(jsonl_bytes(DOCS))
    return write(tmp_path / "cut.jsonl.zst", data[: len(data) - 10])


def garbage_between_frames(tmp_path: Path) -> str:
    first = zst(jsonl_bytes(DOCS[:10]))
    return write(tmp_path / "bad.jsonl.zst", first + b"\x00garbage\x00" + zst(jsonl_bytes(DOCS[10:])))


def checksum_mismatch(tmp_path: Path) -> str:
    data = bytearray(zst(jsonl_bytes(DOCS)))
    data[-2] ^= 0x55  # inside the frame's content checksum
    return write(tmp_path / "sum.jsonl.zst", bytes(data))


def line_file(bad_line: bytes, suffix: str = ".jsonl") -> Callable[[Path], str]:
    """DOCS as JSON lines with `bad_line` as line 4."""

    def make(tmp_path: Path) -> str:
        lines = jsonl_bytes(DOCS).splitlines(keepends=True)
        data = b"".join(lines[:3] + [bad_line + b"\n"] + lines[3:])
        return write(tmp_path / f"lines{suffix}", zst(data) if suffix.endswith(".zst") else data)

    return make


def bad_utf8_paragraph(tmp_path: Path) -> str:
    text = "\n\n".join(DOCS[:3]).encode() + b"\n\nok line\nbad \xff\xfe line\n\n" + "\n\n".join(DOCS[3:]).encode()
    return write(tmp_path / "utf.txt", text)


# (file maker, txt_mode, message pattern, documents left under "skip" or None when a prefix of DOCS)
BAD_CASES = {
    "truncated zst": (truncated_zst, "file", r"cut\.jsonl\.zst: zstd frame at compressed byte 0: truncated zstd stream", []),
    "garbage bytes": (
        garbage_between_frames, "file",
        r"bad\.jsonl\.zst: zstd frame at compressed byte \d+: corrupt zstd data: its header is not a zstd frame header "
        r".*; none of this frame's lines were read \(10 lines before it were\)",
        DOCS[:10],
    ),
    "checksum": (checksum_mismatch, "file", r"sum\.jsonl\.zst: zstd frame at compressed byte 0: corrupt zstd data", []),
    "malformed json": (line_file(b'{"text": "oops'), "file", r"lines\.jsonl: line 4: malformed JSON", DOCS),
    "malformed json zst": (line_file(b"[1, 2", ".jsonl.zst"), "file", r"lines\.jsonl\.zst: line 4: malformed JSON", DOCS),
    "not utf-8 json": (line_file(b'{"text": "\xff"}'), "file", r"lines\.jsonl: line 4: malformed JSON", DOCS),
    "missing key": (line_file(b'{"body": "x"}'), "file", r"lines\.jsonl: line 4: no 'text' key", DOCS),
    "not an object": (line_file(b'"just a string"'), "file", r"lines\.jsonl: line 4: no 'text' key in the JSON str", DOCS),
    "not a string": (line_file(b'{"text": 42}'), "file", r"lines\.jsonl: line 4: 'text' is of type int, not a string", DOCS),
    "bad utf-8 txt": (bad_utf8_paragraph, "blank_line", r"utf\.txt: line 8: not valid UTF-8", DOCS),
    "empty jsonl": (lambda p: write(p / "e.jsonl", b"\n \n"), "file", r"e\.jsonl: empty file", []),
    "empty zst": (lambda p: write(p / "e.jsonl.zst", zst(b"")), "file", r"e\.jsonl\.zst: empty file", []),
    "zero-byte zst": (lambda p: write(p / "z.jsonl.zst", b""), "file", r"z\.jsonl\.zst: empty file", []),
    "empty txt": (lambda p: write(p / "e.txt", b""), "file", r"e\.txt: empty file", []),
    "blank txt": (lambda p: write(p / "b.txt", b"\n \n\n"), "blank_line", r"b\.txt: empty file", []),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input(tmp_path: Path, case: str) -> None:
    make, txt_mode, pattern, expected = BAD_CASES[case]
    path = make(tmp_path)
    with pytest.raises(DataError, match=str(tmp_path) + "/" + pattern) as info:
        read_all(path, txt_mode=txt_mode)
    assert "\n" not in str(info.value)
    skipped = SkipCounter()
    docs = read_all(path, txt_mode=txt_mode, on_error="skip", skipped=skipped)
    assert skipped.count == 1 and re.search(pattern, skipped.reasons[0])
    if expected is None:  # a broken stream ends the file: what came before it stays
        assert docs == DOCS[: len(docs)]
    else:
        assert docs == expected


# ---- corrupt zstd: nothing of a damaged frame is read, the true offset is named ----------------
def word_docs(n: int, letters_only: bool = False) -> list[str]:
    """Documents of words drawn from a Zipf law over a vocabulary of made-up words, so that zstd
    encodes them with matches (damage there breaks decoding); with `letters_only`, of random
    letters (mostly literals, where damage still decodes and only the checksum tells)."""
    rng = random.Random(0)
    if letters_only:
        return ["".join(rng.choices(string.ascii_letters + " ", k=1200)) for _ in range(n)]
    vocabulary = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    return [" ".join(rng.choices(vocabulary, weights, k=200)) for _ in range(n)]


BIG_DOCS = word_docs(1500)  # 2 MB of JSON lines: a frame of a third of them spans several zstd blocks


def three_frames(docs: list[str] = BIG_DOCS) -> tuple[list[bytes], list[list[str]]]:
    """`docs` as three checksummed frames of whole lines, and the documents of each."""
    third = len(docs) // 3
    parts = [docs[:third], docs[third : 2 * third], docs[2 * third :]]
    return [zst(jsonl_bytes(d)) for d in parts], parts


def flipped(data: bytes, at: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 0x5A
    return bytes(damaged)


def read_until_error(path: str) -> tuple[list[str], str]:
    """The documents read before the DataError, and its message."""
    docs = []
    with pytest.raises(DataError) as info:
        for doc in iter_documents(path):
            docs.append(doc)
    assert "\n" not in str(info.value)
    return docs, str(info.value)


@pytest.mark.parametrize("text,fraction", [("words", 0.1), ("words", 0.5), ("words", 0.9), ("letters", 0.5)])
def test_a_damaged_frame_gives_none_of_its_lines_and_names_where_it_fails(
        tmp_path: Path, text: str, fraction: float) -> None:
    frames, docs = three_frames(BIG_DOCS if text == "words" else word_docs(600, letters_only=True))
    at = len(frames[0]) + int(len(frames[1]) * fraction)
    path = write(tmp_path / "d.jsonl.zst", flipped(b"".join(frames), at))
    read, message = read_until_error(path)
    assert read == docs[0]  # the first frame, whole; nothing of the damaged one
    assert message.startswith(f"{path}: zstd frame at compressed byte {len(frames[0])}: corrupt zstd data: ")
    assert message.endswith(f"; none of this frame's lines were read ({len(docs[0])} lines before it were)")
    # the block that does not decode or, for damage that still decodes, the frame holds the flipped byte
    where = {"words": "the block at compressed bytes", "letters": "its blocks decode but not to the content its "
             "checksum records: the damage is somewhere in compressed bytes"}[text]
    low, high = map(int, re.search(where + r" (\d+)-(\d+)", message).groups())
    assert low <= at < high
    if text == "letters":
        assert (low, high) == (len(frames[0]), len(frames[0]) + len(frames[1]))
    skipped = SkipCounter()
    assert read_all(path, on_error="skip", skipped=skipped) == docs[0] and skipped.reasons == [message]


def test_a_truncated_or_extended_stream_names_its_end(tmp_path: Path) -> None:
    frames, docs = three_frames()
    cut = len(frames[0]) + len(frames[1]) // 2
    path = write(tmp_path / "cut.jsonl.zst", b"".join(frames)[:cut])
    read, message = read_until_error(path)
    assert read == docs[0] and message.startswith(
        f"{path}: zstd frame at compressed byte {len(frames[0])}: truncated zstd stream: the file ends at compressed "
        f"byte {cut}, inside the frame; none of this frame's lines were read")
    whole = b"".join(frames)
    path = write(tmp_path / "tail.jsonl.zst", whole + b"appended garbage")
    read, message = read_until_error(path)
    assert read == BIG_DOCS and message.startswith(
        f"{path}: zstd frame at compressed byte {len(whole)}: corrupt zstd data: its header is not a zstd frame header")


def test_a_frame_too_large_to_hold_is_verified_then_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zstd_frames, "HOLD_BYTES", 1000)
    monkeypatch.setattr(zstd_frames, "READ_BYTES", 4096)
    frames, docs = three_frames()
    assert read_all(write(tmp_path / "ok.jsonl.zst", b"".join(frames))) == BIG_DOCS
    one = zst(jsonl_bytes(BIG_DOCS))  # one frame, as the zstd tool writes a file
    at = len(one) * 9 // 10
    read, message = read_until_error(write(tmp_path / "one.jsonl.zst", flipped(one, at)))
    assert read == [] and "zstd frame at compressed byte 0: corrupt zstd data" in message
    low, high = map(int, re.search(r"compressed bytes (\d+)-(\d+)", message).groups())
    assert low <= at < high


def test_frames_without_checksum_are_read_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "plain.jsonl.zst", zstandard.ZstdCompressor().compress(jsonl_bytes(DOCS)))
    assert read_all(path) == DOCS
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: zstd frame at compressed byte 0 has no content checksum: damage that still decodes goes unnoticed "
        f"(compress with checksums, e.g. the zstd tool's default)"]


def test_unsupported_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"notes\.md: unsupported file type"):
        read_all(write(tmp_path / "notes.md", b"x"))
    with pytest.raises(DataError, match=r"gone\.jsonl: cannot open"):
        read_all(str(tmp_path / "gone.jsonl"))
