"""Documents from text files, local or at any fsspec URL (`memory://`, `file://`, `s3://`, ...).

Formats, by suffix: `.txt` (the whole file is one document, or documents separated by blank
lines), `.jsonl` and `.jsonl.zst` (one JSON object per line, the document under `text_key`) and
`.parquet` (the `text_key` column; needs pyarrow). Files are streamed, never loaded whole
(except a `.txt` file that is itself one document).

Bad input is a `DataError` naming the file and the line (or row, or the compressed byte where
a zstd frame starts and the block or checksum that fails in it). No document of a zstd frame is
given out before the whole frame has decompressed and matched its checksum (`zstd_frames`), so
corrupt compressed data never reaches a reader. With `on_error="skip"` a bad record is dropped,
a corrupt or truncated compressed stream ends its file (documents of the frames before it stay
read) and an empty file yields nothing; each is counted once in the `SkipCounter` (or logged as
a warning when none is given), never dropped silently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import BinaryIO, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem

from edlm_dist.data.errors import DataError, SkipCounter
from edlm_dist.data.zstd_frames import FrameError, verified_content

SUFFIXES = (".txt", ".jsonl", ".jsonl.zst", ".parquet")
PARQUET_BATCH_ROWS = 1024
GLOB_CHARS = "*?["

log = logging.getLogger(__name__)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str, bool]:
    """The filesystem of `url`, the path within it, and whether it is the local disk."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # unknown protocol, or its package is missing
        raise DataError(f"cannot access {url!r}: {e} (for cloud storage: pip install 'edlm-dist[cloud]')") from e
    return fs, path, isinstance(fs, LocalFileSystem)


def open_binary(url: str) -> BinaryIO:
    """`url` opened for reading bytes (the builtin buffered file for local paths)."""
    fs, path, local = filesystem(url)
    try:
        return open(path, "rb") if local else fs.open(path, "rb")
    except OSError as e:
        raise DataError(f"{url}: cannot open: {e}") from e


def list_files(source: str, suffixes: tuple[str, ...] = SUFFIXES) -> list[str]:
    """The files of `source` (a file, a folder searched recursively, or a glob) whose names end
    with one of `suffixes`, sorted. Hidden files (names starting with ".", e.g. temporary files
    of an interrupted write) are left out. URLs come back as URLs, local paths as paths."""
    fs, path, local = filesystem(source)
    try:
        if any(c in path for c in GLOB_CHARS):
            matches = fs.glob(path, detail=True)
        elif fs.exists(path):
            matches = {path: fs.info(path)}
        else:
            matches = {}
        files: list[str] = []
        for name, info in matches.items():
            if info.get("type") == "directory":
                files += fs.find(name)
            else:
                files.append(name)
    except OSError as e:
        raise DataError(f"cannot list {source}: {e}") from e
    found = sorted({
        f for f in files if f.endswith(suffixes) and not f.rstrip("/").rsplit("/", 1)[-1].startswith(".")
    })
    if not found:
        raise DataError(f"no {'/'.join(suffixes)} files found at {source}")
    return found if local else [fs.unstrip_protocol(f) for f in found]


def file_kind(path: str) -> Literal["txt", "jsonl", "jsonl.zst", "parquet"]:
    """The format of `path`, from its suffix."""
    for suffix in (".jsonl.zst", ".jsonl", ".txt", ".parquet"):
        if path.endswith(suffix):
            return suffix[1:]  # type: ignore[return-value]
    raise DataError(f"{path}: unsupported file type (expected one of {', '.join(SUFFIXES)})")


class _Policy:
    """Applies `on_error` for one file, knowing how many documents it has produced so far:
    problems met before `start` documents are not counted again (the run that read them
    counted them), so a resumed read reports each bad record once."""

    def __init__(self, path: str, on_error: str, skipped: SkipCounter | None, start: int) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.path, self.on_error, self.skipped, self.start = path, on_error, skipped, start
        self.documents = 0

    def bad(self, what: str, where: str = "") -> None:
        """A bad record or stream at `where`: raise, or count it (the caller then drops it)."""
        message = f"{self.path}: {where}: {what}" if where else f"{self.path}: {what}"
        if self.on_error == "raise":
            raise DataError(message)
        if self.documents < self.start:
            return
        if self.skipped is None:
            log.warning("skipped: %s", message)
        else:
            self.skipped.skip(message)


def iter_documents(
    path: str,
    *,
    text_key: str = "text",
    txt_mode: Literal["file", "blank_line"] = "file",
    on_error: Literal["raise", "skip"] = "raise",
    skipped: SkipCounter | None = None,
    start: int = 0,
) -> Iterator[str]:
    """The documents of one file, streamed, after the first `start` (to resume mid-file).

    `start` counts the documents this function yields with the same settings, so skipped bad
    records are not documents. Skipped documents are parsed but not returned (no tokenising).
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if txt_mode not in ("file", "blank_line"):
        raise ValueError(f"txt_mode must be 'file' or 'blank_line', got {txt_mode!r}")
    kind = file_kind(path)
    policy = _Policy(path, on_error, skipped, start)
    if kind == "txt":
        documents = _txt_file(path, policy) if txt_mode == "file" else _txt_paragraphs(path, policy)
    elif kind == "parquet":
        documents = _parquet(path, text_key, policy)
    else:
        documents = _jsonl(path, text_key, policy, compressed=kind == "jsonl.zst")
    for document in documents:
        policy.documents += 1
        if policy.documents > start:
            yield document


def _txt_file(path: str, policy: _Policy) -> Iterator[str]:
    """The whole file as one document."""
    with open_binary(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        policy.bad("not valid UTF-8", f"byte {e.start}")
        return
    if not text.strip():
        policy.bad("empty file (no documents)")
        return
    yield text


def _txt_paragraphs(path: str, policy: _Policy) -> Iterator[str]:
    """Runs of non-blank lines, each without its final line break; a document with a line
    that is not UTF-8 is a bad record (named by that line)."""
    lines: list[str] = []
    bad_line = 0
    seen = False
    with open_binary(path) as f:
        for number, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    lines.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    bad_line = bad_line or number
                continue
            if lines or bad_line:
                seen = True
                yield from _paragraph(lines, bad_line, policy)
                lines, bad_line = [], 0
    if lines or bad_line:
        seen = True
        yield from _paragraph(lines, bad_line, policy)
    if not seen:
        policy.bad("empty file (no documents)")


def _paragraph(lines: list[str], bad_line: int, policy: _Policy) -> Iterator[str]:
    if bad_line:
        policy.bad("not valid UTF-8", f"line {bad_line}")
        return
    text = "".join(lines)
    yield text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _jsonl(path: str, text_key: str, policy: _Policy, *, compressed: bool) -> Iterator[str]:
    """`obj[text_key]` of each JSON line; whitespace-only lines are not records."""
    seen = False
    with open_binary(path) as f:
        zstd_lines = _ZstdLines(f, policy) if compressed else None
        for number, raw in enumerate(zstd_lines or f, 1):
            if not raw.strip():
                continue
            seen = True
            try:
                obj = json.loads(raw)
            except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for non-UTF-8 bytes
                detail = f"column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
                policy.bad(f"malformed JSON ({detail})", f"line {number}")
                continue
            if not isinstance(obj, dict) or text_key not in obj:
                policy.bad(f"no {text_key!r} key in the JSON {type(obj).__name__}", f"line {number}")
                continue
            text = obj[text_key]
            if not isinstance(text, str):
                policy.bad(f"{text_key!r} is of type {type(text).__name__}, not a string", f"line {number}")
                continue
            yield text
    if not seen and not (zstd_lines and zstd_lines.failed):
        policy.bad("empty file (no documents)")


class _ZstdLines:
    """The lines (without "\\n") of a zstd stream of one or more frames, each frame's only once
    the whole frame is verified (`verified_content`); a line may span frames.

    A corrupt or truncated frame is reported through `policy`, naming the compressed byte where
    it starts and where in it decoding fails; none of its lines come out. Under "skip" the
    stream then ends (`failed` is set so the file is not also called empty).
    """

    def __init__(self, f: BinaryIO, policy: _Policy) -> None:
        self.f, self.policy = f, policy
        self.failed = False

    def __iter__(self) -> Iterator[bytes]:
        pending, lines = b"", 0
        try:
            for data in verified_content(self.f, self.policy.path):
                parts = (pending + data).split(b"\n")
                pending = parts.pop()
                lines += len(parts)
                yield from parts
        except FrameError as e:
            self.failed = True
            self.policy.bad(f"{e.what}; none of this frame's lines were read ({lines} lines before it were)",
                            f"zstd frame at compressed byte {e.start}")
            return
        if pending:
            yield pending


def _parquet(path: str, text_key: str, policy: _Policy) -> Iterator[str]:
    """The `text_key` column of a parquet file, read in row batches; null rows are bad records."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"{path}: reading .parquet files needs pyarrow (pip install 'edlm-dist[parquet]')") from e
    with open_binary(path) as f:
        try:
            table = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises its own ArrowInvalid/ArrowException kinds
            raise DataError(f"{path}: not a readable parquet file ({e})") from e
        if text_key not in table.schema_arrow.names:
            raise DataError(f"{path}: no column {text_key!r} (columns: {', '.join(table.schema_arrow.names)})")
        if table.metadata.num_rows == 0:
            policy.bad("empty file (no documents)")
            return
        row = 0
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_key]):
            for text in batch.column(0).to_pylist():
                row += 1
                if isinstance(text, str):
                    yield text
                else:
                    policy.bad(f"{text_key!r} is of type {type(text).__name__}, not a string", f"row {row}")
