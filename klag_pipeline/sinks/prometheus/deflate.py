"""The exposition kept compressed: independent deflate segments joined into one gzip member.

At 20,000 group partitions the exposition is ~40 MB of text that compresses ~60×; keeping it
as text cost that much resident memory twice during each render (the old body and the new one).
So every piece of it — a family's HELP/TYPE lines, one cluster's chunk of a family — is
compressed once, when rendered, into a :class:`Segment`: a raw deflate stream ended by a sync
flush (byte-aligned, not final) from a compressor of its own, so no segment refers back into
another. Segments therefore concatenate into one valid deflate stream in any order, and a body
is served without recompressing anything that did not change:

* **gzip** (every Prometheus scrape): a 10-byte gzip header, the segments as they are, the
  scrape-time tail compressed as the final block, and the trailer — the CRC-32 of the whole
  text, combined from the segments' own CRCs (:func:`crc32_combine`, zlib's algorithm; Python's
  ``zlib`` does not expose it), and its length. One ordinary gzip member (RFC 1952), so clients
  that read only the first member (aiohttp, browsers) read all of it.
* **plain text** (curl, a browser without gzip): :func:`inflate` decompresses the segments in
  pieces of at most :data:`PIECE_BYTES` while the response is written, so a plain scrape never
  holds the whole text either. It costs the decompression (~60 ms of CPU for 31 MB,
  docs/metrics.md#cost-of-a-scrape); a scraper that can should ask for gzip.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

LEVEL: Final = 1
"""Exposition text is so repetitive that level 1 compresses as well as level 6 (measured: 29 MB
→ 0.52 MB vs 0.54 MB) in a third of the time."""
PIECE_BYTES: Final = 256 * 1024
"""The most text :func:`inflate` produces per step (a plain scrape's write size)."""

_POLY: Final = 0xEDB88320
GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""Magic, deflate, no flags, no mtime, no extra flags, OS unknown."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of text as raw deflate ending on a sync flush, with its length and CRC-32."""

    deflated: bytes
    size: int
    crc: int


def deflate(text: bytes) -> Segment:
    """``text`` as a segment that concatenates with any other (see the module docstring)."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return Segment(deflated, len(text), zlib.crc32(text))


def _multmodp(a: int, b: int) -> int:
    """a × b modulo the CRC-32 polynomial (bit-reflected), as zlib's ``multmodp``."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> tuple[int, ...]:
    p = 1 << 30  # x^1
    table = [p]
    for _ in range(31):
        p = _multmodp(p, p)
        table.append(p)
    return tuple(table)


_X2N: Final = _x2n_table()
"""x^(2^n) modulo the polynomial, n = 0…31."""


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (zlib's
    ``crc32_combine``: ``crc1`` times x^(8·len2), plus ``crc2``)."""
    p = 1 << 31  # x^0
    k = 3  # 8 bits per byte
    n = len2
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


@dataclass(frozen=True, slots=True)
class Joined:
    """Segments in order, with the length and CRC-32 of their text together."""

    segments: tuple[Segment, ...]
    size: int
    crc: int


EMPTY: Final = Joined((), 0, 0)


def join(segments: Iterable[Segment], after: Joined = EMPTY) -> Joined:
    """``segments`` in order, after ``after``'s (their CRCs combined once, here)."""
    items, size, crc = list(after.segments), after.size, after.crc
    for segment in segments:
        items.append(segment)
        crc = crc32_combine(crc, segment.crc, segment.size)  # from 0: segment.crc itself
        size += segment.size
    return Joined(tuple(items), size, crc)


def gzip_parts(body: Joined, tail: bytes) -> tuple[bytes, ...]:
    """One gzip member of ``body``'s text followed by ``tail``, as parts to write in order."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    final = compressor.compress(tail) + compressor.flush(zlib.Z_FINISH)
    crc = crc32_combine(body.crc, zlib.crc32(tail), len(tail))
    trailer = struct.pack("<II", crc, (body.size + len(tail)) & 0xFFFFFFFF)
    return (GZIP_HEADER, *(s.deflated for s in body.segments), final, trailer)


def inflate(segments: Iterable[Segment]) -> Iterator[bytes]:
    """The text of ``segments``, in pieces of at most :data:`PIECE_BYTES`."""
    for segment in segments:
        # A fresh decompressor per segment: each one is a complete, flushed stream prefix.
        decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
        pending = segment.deflated
        while True:
            piece = decompressor.decompress(pending, PIECE_BYTES)
            pending = decompressor.unconsumed_tail
            if piece:
                yield piece
            # A full piece may leave output inside the decompressor with no input left.
            if not pending and len(piece) < PIECE_BYTES:
                break


def text(segments: Iterable[Segment]) -> bytes:
    """All of ``segments``' text at once (for ``once`` and tests)."""
    return b"".join(inflate(segments))
