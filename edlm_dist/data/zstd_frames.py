"""zstd streams read frame by frame, each frame verified whole before any of its content is given out.

A zstd decoder checks a frame's content checksum only at the frame's end, and a damaged block
can decode to plausible text before the decoder notices (or never, but for the checksum): a
reader that passes on what it has decompressed so far passes on corrupt data. `verified_content`
holds a frame's content until the frame has decompressed to its end and matched its checksum.
A frame too large to hold (`HOLD_BYTES` of content: a file compressed as one frame, as the `zstd`
tool and corpora prepared before multi-frame shards do) is decompressed twice: once to verify
it, then again to give it out; decompressing costs far less than what is done with the text.

A problem is a `FrameError` naming the frame's first compressed byte and where in it decoding
failed: its header, one of its blocks (found by decoding it again block by block), its content
checksum, or the end of the file inside it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import ModuleType
from typing import BinaryIO

from edlm_dist.data.errors import DataError

READ_BYTES = 1 << 20  # compressed bytes per read
HOLD_BYTES = 1 << 24  # decompressed bytes of a frame held in memory while it is verified
MAX_HEADER_BYTES = 18  # a zstd frame header is at most this long
BLOCK_HEADER_BYTES = 3
CHECKSUM_BYTES = 4
RESERVED_BLOCK = 3  # the block type no encoder writes

log = logging.getLogger(__name__)


def zstandard_module() -> ModuleType:
    """The zstandard package, imported only where compressed data is read or written: it is
    compiled, and a machine that never touches .zst files may lack it."""
    try:
        import zstandard
    except ImportError as e:
        raise DataError("reading or writing .jsonl.zst needs the zstandard package (pip install zstandard)") from e
    return zstandard


class FrameError(Exception):
    """A corrupt or cut-short zstd frame: `start` is its first compressed byte, `what` says where
    in it decoding failed and why."""

    def __init__(self, start: int, what: str) -> None:
        super().__init__(f"zstd frame at compressed byte {start}: {what}")
        self.start, self.what = start, what


class _Compressed:
    """The compressed bytes of a file from `pos` on; bytes read past a frame's end are handed
    back and served first to the next frame."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.pos, self.ahead = f, 0, b""

    def read(self, limit: int = READ_BYTES) -> bytes:
        data = self.ahead[:limit] if self.ahead else self.f.read(limit)
        self.ahead = self.ahead[len(data):]
        self.pos += len(data)
        return data

    def give_back(self, data: bytes) -> None:
        self.ahead = data + self.ahead
        self.pos -= len(data)

    def seek(self, pos: int) -> None:
        self.f.seek(pos)
        self.pos, self.ahead = pos, b""


def verified_content(f: BinaryIO, name: str) -> Iterator[bytes]:
    """The decompressed content of the zstd stream `f` (named `name` in warnings), frame after
    frame, each frame's only once it has decoded whole and matched its content checksum; raises
    `FrameError` for a frame that does not. A frame without a checksum is verified only as far
    as its decoding goes (warned once per stream)."""
    zstandard = zstandard_module()
    stream = _Compressed(f)
    warned = False
    while head := stream.read(MAX_HEADER_BYTES):
        stream.give_back(head)
        start = stream.pos
        if not warned and not _has_checksum(zstandard, head):
            log.warning("%s: zstd frame at compressed byte %d has no content checksum: damage that still decodes "
                        "goes unnoticed (compress with checksums, e.g. the zstd tool's default)", name, start)
            warned = True
        held = _verify(zstandard, stream, start)
        if held is not None:
            yield b"".join(held)
            continue
        end = stream.pos
        stream.seek(start)
        yield from _decode(zstandard, stream, start, end)


def _has_checksum(zstandard: ModuleType, head: bytes) -> bool:
    """Whether the frame starting with `head` carries a content checksum (an unreadable header
    counts as having one: decoding it will say what is wrong)."""
    try:
        return bool(zstandard.get_frame_parameters(head).has_checksum)
    except zstandard.ZstdError:
        return True


def _verify(zstandard: ModuleType, stream: _Compressed, start: int) -> list[bytes] | None:
    """Decode the frame at `start` to its end, leaving `stream` just after it; its content when
    at most HOLD_BYTES, else None (it was verified, then dropped)."""
    frame = zstandard.ZstdDecompressor().decompressobj()
    held: list[bytes] | None = []
    size = 0
    while True:
        data = stream.read()
        if not data:
            raise FrameError(start, f"truncated zstd stream: the file ends at compressed byte {stream.pos}, "
                                    f"inside the frame")
        try:
            out = frame.decompress(data)
        except zstandard.ZstdError as e:
            raise FrameError(start, f"corrupt zstd data: {_failure(zstandard, stream.f, start, e)}") from None
        if held is not None:
            held.append(out)
            size += len(out)
            if size > HOLD_BYTES:
                held = None
        if frame.eof:
            stream.give_back(frame.unused_data)
            return held


def _decode(zstandard: ModuleType, stream: _Compressed, start: int, end: int) -> Iterator[bytes]:
    """The content of the frame at compressed bytes [start, end), verified before, decoded again."""
    frame = zstandard.ZstdDecompressor().decompressobj()
    try:
        while not frame.eof:
            data = stream.read(min(READ_BYTES, end - stream.pos))
            if not data:
                raise FrameError(start, f"the file changed while it was read: it ends at compressed byte "
                                        f"{stream.pos}, before the frame's end at {end}")
            yield frame.decompress(data)
    except zstandard.ZstdError as e:
        raise FrameError(start, f"the file changed while it was read: corrupt zstd data on the second pass ({e})")


def _failure(zstandard: ModuleType, f: BinaryIO, start: int, error: Exception) -> str:
    """Where decoding the frame at `start` fails (`error`), found by decoding it again block by
    block: its header, a block (its compressed bytes) or the content checksum."""
    try:
        f.seek(start)
        head = f.read(MAX_HEADER_BYTES)
        header = zstandard.frame_header_size(head)
        frame = zstandard.ZstdDecompressor().decompressobj()
        frame.decompress(head[:header])
    except (OSError, zstandard.ZstdError) as e:
        return f"its header is not a zstd frame header ({e})"
    pos = start + header
    while True:
        f.seek(pos)
        block = f.read(BLOCK_HEADER_BYTES)
        value = int.from_bytes(block, "little")
        last, kind, length = value & 1, (value >> 1) & 3, value >> 3
        if len(block) < BLOCK_HEADER_BYTES or kind == RESERVED_BLOCK:
            return f"the block header at compressed byte {pos} is invalid ({error})"
        block += f.read(1 if kind == 1 else length)  # an RLE block holds one byte
        try:
            frame.decompress(block)
        except zstandard.ZstdError as e:
            return f"the block at compressed bytes {pos}-{pos + len(block)} does not decode ({e})"
        pos += len(block)
        if last:
            return (f"its blocks decode but not to the content its checksum records: the damage is somewhere in "
                    f"compressed bytes {start}-{pos + CHECKSUM_BYTES} ({error})")
