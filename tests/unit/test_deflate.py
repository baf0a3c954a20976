"""The compressed exposition store: segments that concatenate into one gzip member."""

from __future__ import annotations

import gzip
import os
import zlib

from hypothesis import given
from hypothesis import strategies as st

from klag_pipeline.sinks.prometheus.deflate import (
    PIECE_BYTES,
    crc32_combine,
    deflate,
    gzip_parts,
    inflate,
    join,
    text,
)


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_crc32_combine_equals_the_crc_of_the_concatenation(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_crc32_combine_over_a_multi_megabyte_second_part() -> None:
    # A length of 23 bits walks most of the exponent table (family chunks are MBs long).
    a, b = b"head\n", b"0123456789abcdef" * (5 * 1024 * 1024 // 16)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


texts = st.lists(st.binary(max_size=2000), max_size=8)


@given(texts, st.binary(max_size=500))
def test_segments_join_into_one_gzip_member_of_their_text(parts: list[bytes], tail: bytes) -> None:
    body = join(deflate(part) for part in parts)
    member = b"".join(gzip_parts(body, tail))
    expected = b"".join(parts) + tail
    assert gzip.decompress(member) == expected
    # One member: a decoder that reads a single member (aiohttp, browsers) gets everything.
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert decoder.decompress(member) == expected
    assert decoder.eof
    assert decoder.unused_data == b""
    assert body.size == len(b"".join(parts))


@given(texts, texts)
def test_join_after_continues_a_joined_body(first: list[bytes], second: list[bytes]) -> None:
    joined = join((deflate(p) for p in second), after=join(deflate(p) for p in first))
    assert text(joined.segments) == b"".join(first + second)
    assert joined.crc == zlib.crc32(b"".join(first + second))


def test_inflate_yields_bounded_pieces_of_the_exact_text() -> None:
    # Highly compressible text several pieces long (a piece ends with input already consumed),
    # then incompressible bytes, then an empty segment.
    repetitive = b'kafka_consumergroup_group_lag{group="g",partition="1"} 1\n' * 40_000
    noise = os.urandom(PIECE_BYTES + 1234)
    segments = [deflate(repetitive), deflate(noise), deflate(b"")]
    pieces = list(inflate(segments))
    assert all(0 < len(piece) <= PIECE_BYTES for piece in pieces)
    assert b"".join(pieces) == repetitive + noise
    assert len(repetitive) > 4 * PIECE_BYTES
