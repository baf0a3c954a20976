"""find_timestamp against record batches built byte-exactly with aiokafka's own builders."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.util import calc_crc32c, encode_varint
from hypothesis import given
from hypothesis import strategies as st

from klag_pipeline.kafka.record_batches import (
    Found,
    NeedMoreBytes,
    NoDataRecord,
    Unreadable,
    find_timestamp,
)
from klag_pipeline.model import TimestampSample

GZIP, SNAPPY, LZ4, ZSTD = 1, 2, 3, 4
LOG_APPEND_TIME = 0x08
TRANSACTIONAL = 0x10
CONTROL = 0x20
DELETE_HORIZON = 0x40

# Header field positions of record batch v2 (see DefaultRecordBatch.java).
ATTRIBUTES_AT = 21
LAST_OFFSET_DELTA_AT = 23
BASE_TIMESTAMP_AT = 27
MAX_TIMESTAMP_AT = 35
CRC_AT = 17
HEADER_SIZE = 61

# Compressible, so the builder really keeps the compressed form.
VALUE = b"v" * 300


def batch(
    base_offset: int,
    records: Sequence[tuple[int, int]],
    *,
    codec: int = 0,
    attributes: int = 0,
    producer_id: int = -1,
    last_offset_delta: int | None = None,
    max_timestamp: int | None = None,
) -> bytes:
    """One v2 batch at ``base_offset`` holding ``records`` as (offset delta, timestamp).

    ``attributes`` adds broker-side bits (LogAppendTime, control) the producer-side builder
    cannot set; ``last_offset_delta`` beyond the last record models records removed by the
    cleaner. The CRC is recomputed after every change, as the broker does.
    """
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=int(bool(attributes & TRANSACTIONAL)),
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=0 if producer_id >= 0 else -1,
        batch_size=1 << 20,
    )
    for delta, timestamp in records:
        value = struct.pack(">hi", 0, 0) if attributes & CONTROL else VALUE
        key = struct.pack(">hh", 0, 1) if attributes & CONTROL else b"k"
        builder.append(delta, timestamp=timestamp, key=key, value=value, headers=[("h", b"x")])
    buf = bytearray(builder.build())
    struct.pack_into(">q", buf, 0, base_offset)
    if attributes:
        current = struct.unpack_from(">h", buf, ATTRIBUTES_AT)[0]
        struct.pack_into(">h", buf, ATTRIBUTES_AT, current | attributes)
    if last_offset_delta is not None:
        struct.pack_into(">i", buf, LAST_OFFSET_DELTA_AT, last_offset_delta)
    if max_timestamp is not None:
        struct.pack_into(">q", buf, MAX_TIMESTAMP_AT, max_timestamp)
    return _with_crc(buf)


def _with_crc(buf: bytearray) -> bytes:
    struct.pack_into(">I", buf, CRC_AT, calc_crc32c(bytes(buf[ATTRIBUTES_AT:])))
    return bytes(buf)


def empty_batch(base_offset: int, last_offset_delta: int) -> bytes:
    """What the cleaner leaves when it removes every record of a batch (keeps producer state)."""
    buf = bytearray(batch(base_offset, [(0, 1_000)])[:HEADER_SIZE])
    struct.pack_into(">i", buf, 8, HEADER_SIZE - 12)
    struct.pack_into(">i", buf, LAST_OFFSET_DELTA_AT, last_offset_delta)
    struct.pack_into(">i", buf, HEADER_SIZE - 4, 0)
    return _with_crc(buf)


def marker(offset: int, producer_id: int) -> bytes:
    """A transaction marker (control batch of one control record) of ``producer_id``."""
    return batch(offset, [(0, 9_999)], attributes=CONTROL | TRANSACTIONAL, producer_id=producer_id)


def raw_batch(
    base_offset: int, attributes: int, base_timestamp: int, records: Sequence[tuple[int, int]]
) -> bytes:
    """An uncompressed v2 batch encoded by hand, for a base timestamp that is no record's time.

    ``records`` are (offset delta, timestamp delta); the builder cannot produce a first record
    whose timestamp delta is not 0.
    """
    body = bytearray()
    for offset_delta, timestamp_delta in records:
        record = bytearray(b"\x00")
        encode_varint(timestamp_delta, record.append)
        encode_varint(offset_delta, record.append)
        encode_varint(-1, record.append)  # null key
        encode_varint(len(VALUE), record.append)
        record += VALUE
        encode_varint(0, record.append)  # no headers
        encode_varint(len(record), body.append)
        body += record
    last_delta = records[-1][0]
    max_timestamp = base_timestamp + max(delta for _, delta in records)
    header = struct.pack(
        ">qiibIhiqqqhii",
        base_offset,
        HEADER_SIZE - 12 + len(body),
        0,
        2,
        0,
        attributes,
        last_delta,
        base_timestamp,
        max_timestamp,
        -1,
        -1,
        -1,
        len(records),
    )
    return _with_crc(bytearray(header + body))


def found(scan: object) -> TimestampSample:
    assert isinstance(scan, Found), scan
    assert scan.next_offset == scan.sample.offset + 1
    return scan.sample


# --- CreateTime, LogAppendTime, codecs ------------------------------------------------------


def test_committed_at_the_start_of_a_batch_gives_the_first_record() -> None:
    data = batch(100, [(0, 5_000), (1, 5_001), (2, 5_002)])

    assert found(find_timestamp(data, 100)) == TimestampSample(100, 5_000, False)


@pytest.mark.parametrize(
    "codec", [0, GZIP, SNAPPY, LZ4, ZSTD], ids=["none", "gzip", "snappy", "lz4", "zstd"]
)
def test_committed_in_the_middle_of_a_batch_walks_to_that_record(codec: int) -> None:
    # Timestamps deliberately not monotonic: a producer may send them in any order.
    data = batch(100, [(0, 5_000), (1, 7_000), (2, 4_000), (3, 6_000)], codec=codec)
    assert data[ATTRIBUTES_AT + 1] & 0x07 == codec  # really compressed with that codec

    assert found(find_timestamp(data, 102)) == TimestampSample(102, 4_000, False)
    assert found(find_timestamp(data, 100)) == TimestampSample(100, 5_000, False)


@pytest.mark.parametrize("codec", [0, ZSTD], ids=["none", "zstd"])
def test_log_append_time_uses_the_batch_max_timestamp(codec: int) -> None:
    data = batch(
        100,
        [(0, 1), (1, 2), (2, 3)],
        codec=codec,
        attributes=LOG_APPEND_TIME,
        max_timestamp=1_700_000_000_000,
    )

    assert found(find_timestamp(data, 101)) == TimestampSample(101, 1_700_000_000_000, False)


def test_log_append_time_batch_with_cleaned_records_reports_the_next_surviving_offset() -> None:
    data = batch(
        100,
        [(0, 1), (4, 2)],
        attributes=LOG_APPEND_TIME,
        last_offset_delta=6,
        max_timestamp=42_000,
    )

    assert found(find_timestamp(data, 102)) == TimestampSample(104, 42_000, True)


def test_batches_ending_before_the_committed_offset_are_skipped() -> None:
    data = batch(0, [(0, 1_000), (1, 1_001)]) + batch(2, [(0, 2_000), (1, 2_001)])

    assert found(find_timestamp(data, 3)) == TimestampSample(3, 2_001, False)


def test_delete_horizon_base_timestamp_is_not_taken_for_a_record_time() -> None:
    # The cleaner stored the delete horizon (9_000) as base timestamp; record 0 is at +500.
    data = raw_batch(10, DELETE_HORIZON, 9_000, [(0, 500), (1, 700)])

    assert found(find_timestamp(data, 10)) == TimestampSample(10, 9_500, False)


# --- compaction gaps ------------------------------------------------------------------------


def test_record_removed_inside_a_batch_is_missing() -> None:
    data = batch(0, [(0, 1_000), (1, 1_001), (5, 1_005)], last_offset_delta=9)

    assert found(find_timestamp(data, 3)) == TimestampSample(5, 1_005, True)
    assert found(find_timestamp(data, 1)) == TimestampSample(1, 1_001, False)


def test_tail_of_a_batch_removed_continues_in_the_next_batch() -> None:
    data = batch(0, [(0, 1_000), (1, 1_001)], last_offset_delta=4) + batch(5, [(0, 2_000)])

    assert found(find_timestamp(data, 3)) == TimestampSample(5, 2_000, True)


def test_whole_batch_removed_between_batches_is_missing() -> None:
    data = batch(0, [(0, 1_000), (1, 1_001), (2, 1_002)]) + batch(6, [(0, 2_000)])

    assert found(find_timestamp(data, 4)) == TimestampSample(6, 2_000, True)


def test_empty_batch_left_by_the_cleaner_is_skipped_and_its_records_are_missing() -> None:
    data = empty_batch(3, 1) + batch(5, [(0, 2_000)])

    assert found(find_timestamp(data, 3)) == TimestampSample(5, 2_000, True)


# --- transactions ---------------------------------------------------------------------------


def test_committed_on_a_transaction_marker_reads_the_next_record_without_missing() -> None:
    data = (
        batch(0, [(0, 1_000), (1, 1_001)], attributes=TRANSACTIONAL, producer_id=7)
        + marker(2, 7)
        + batch(3, [(0, 3_000)], attributes=TRANSACTIONAL, producer_id=7)
    )

    assert found(find_timestamp(data, 2)) == TimestampSample(3, 3_000, False)
    assert found(find_timestamp(data, 2, aborted=[])) == TimestampSample(3, 3_000, False)


def test_aborted_transaction_is_skipped_under_read_committed() -> None:
    data = (
        batch(3, [(0, 1_000), (1, 1_001)], attributes=TRANSACTIONAL, producer_id=7)
        + marker(5, 7)
        + batch(6, [(0, 6_000)])
    )

    assert found(find_timestamp(data, 3, aborted=[(7, 3)])) == TimestampSample(6, 6_000, False)
    # read_uncommitted: a consumer reads the aborted records too, so they count.
    assert found(find_timestamp(data, 3, aborted=None)) == TimestampSample(3, 1_000, False)


def test_only_the_aborted_producer_is_skipped() -> None:
    data = (
        batch(3, [(0, 1_000)], attributes=TRANSACTIONAL, producer_id=7)
        + batch(4, [(0, 4_000)], attributes=TRANSACTIONAL, producer_id=8)
        + marker(5, 7)
        + marker(6, 8)
    )

    assert found(find_timestamp(data, 3, aborted=[(7, 3)])) == TimestampSample(4, 4_000, False)


def test_aborted_transaction_that_started_before_the_committed_offset_is_skipped() -> None:
    data = (
        batch(0, [(0, 1_000), (1, 1_001), (2, 1_002)], attributes=TRANSACTIONAL, producer_id=7)
        + batch(3, [(0, 3_000)], attributes=TRANSACTIONAL, producer_id=7)
        + marker(4, 7)
        + batch(5, [(0, 5_000)])
    )

    assert found(find_timestamp(data, 3, aborted=[(7, 0)])) == TimestampSample(5, 5_000, False)


def test_an_earlier_committed_transaction_of_the_same_producer_is_read() -> None:
    data = (
        batch(0, [(0, 1_000)], attributes=TRANSACTIONAL, producer_id=7)
        + marker(1, 7)
        + batch(2, [(0, 2_000)], attributes=TRANSACTIONAL, producer_id=7)
        + marker(3, 7)
    )

    assert found(find_timestamp(data, 0, aborted=[(7, 2)])) == TimestampSample(0, 1_000, False)


def test_only_markers_means_read_on_after_them() -> None:
    data = marker(10, 7) + marker(11, 8)

    assert find_timestamp(data, 10) == NoDataRecord(next_offset=12, gap_explained=True)


def test_a_gap_before_the_markers_is_not_explained() -> None:
    data = marker(12, 7)

    assert find_timestamp(data, 10) == NoDataRecord(next_offset=13, gap_explained=False)


# --- partial and broken input ---------------------------------------------------------------


def test_cut_off_batch_reports_its_size() -> None:
    data = batch(0, [(i, 1_000 + i) for i in range(20)])

    assert find_timestamp(data[:100], 5) == NeedMoreBytes(len(data), 5, True)


def test_cut_off_batch_after_a_complete_one_is_ignored() -> None:
    first = batch(0, [(0, 1_000), (1, 1_001)])
    second = batch(2, [(0, 2_000)])

    assert found(find_timestamp(first + second[:30], 1)) == TimestampSample(1, 1_001, False)


def test_marker_then_cut_off_batch_continues_after_the_marker() -> None:
    data = marker(5, 7) + batch(6, [(0, 6_000)])[:40]

    scan = find_timestamp(data, 5)

    assert isinstance(scan, NeedMoreBytes)
    assert scan.next_offset == 6
    assert scan.gap_explained


@pytest.mark.parametrize("size", [0, 1, 11])
def test_too_few_bytes_for_a_size(size: int) -> None:
    data = batch(0, [(0, 1_000)])

    assert find_timestamp(data[:size], 0) == NeedMoreBytes(None, 0, True)


def test_flipped_payload_byte_is_a_crc_error() -> None:
    data = bytearray(batch(0, [(0, 1_000), (1, 1_001)]))
    data[-5] ^= 0xFF

    scan = find_timestamp(bytes(data), 1)

    assert isinstance(scan, Unreadable)
    assert "CRC" in scan.error


def test_unknown_magic_is_unreadable() -> None:
    data = bytearray(batch(0, [(0, 1_000)]))
    data[16] = 7

    assert find_timestamp(bytes(data), 0) == Unreadable("unsupported record format (magic 7)")


def test_garbage_is_unreadable() -> None:
    garbage = bytes(range(256)) * 4

    assert isinstance(find_timestamp(garbage, 0), Unreadable)


@given(st.binary(max_size=400), st.integers(min_value=0, max_value=1_000))
def test_arbitrary_bytes_never_raise(data: bytes, committed: int) -> None:
    assert isinstance(
        find_timestamp(data, committed), Found | NeedMoreBytes | NoDataRecord | Unreadable
    )


@given(st.integers(min_value=0, max_value=60), st.integers(min_value=0, max_value=400))
def test_corrupted_batches_never_raise(position: int, value: int) -> None:
    data = bytearray(batch(0, [(0, 1_000), (1, 1_001)], codec=GZIP))
    data[position % len(data)] = value % 256

    assert isinstance(
        find_timestamp(bytes(data), 1), Found | NeedMoreBytes | NoDataRecord | Unreadable
    )


# --- legacy message formats -----------------------------------------------------------------


def legacy(magic: int, offset: int, timestamp: int) -> bytes:
    builder = LegacyRecordBatchBuilder(magic=magic, compression_type=0, batch_size=1 << 20)
    builder.append(0, timestamp=timestamp, key=None, value=VALUE)
    buf = bytearray(builder.build())
    struct.pack_into(">q", buf, 0, offset)  # the offset is not covered by the message CRC
    return bytes(buf)


def test_message_format_v1_timestamps_are_read() -> None:
    data = legacy(1, 4, 4_000) + legacy(1, 5, 5_000)

    assert found(find_timestamp(data, 5)) == TimestampSample(5, 5_000, False)


def test_message_format_v0_has_no_timestamps() -> None:
    scan = find_timestamp(legacy(0, 4, 4_000), 4)

    assert scan == Unreadable("message format v0 carries no timestamps")
