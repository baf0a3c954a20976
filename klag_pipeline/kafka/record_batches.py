"""Find the timestamp of the record at a committed offset in the bytes of one Fetch partition.

Pure: no I/O, no asyncio. aiokafka's record parser does decompression and the record walk; keys,
values and headers are never looked at beyond what that parser must step over, and nothing of
them is returned, logged or kept. See docs/time-lag.md for the rules implemented here.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.legacy_records import LegacyRecordBatch

from klag_pipeline.model import TimestampSample

# Every message format starts with base offset (int64) and length (int32): the first 12 bytes
# of a batch tell its size even when the rest of it was cut off.
_LOG_OVERHEAD = 12
_SIZE_PREFIX = struct.Struct(">qi")
_MAGIC_POSITION = 16
# Record batch v2 header (61 bytes): base offset, length, partition leader epoch, magic, crc,
# attributes, last offset delta, base timestamp, max timestamp, producer id, producer epoch,
# base sequence, record count.
_V2_HEADER = struct.Struct(">qiibIhiqqqhii")
# Smallest legal message of format v0: offset + size + crc + magic + attributes + key/value sizes.
_LEGACY_MIN_SIZE = _LOG_OVERHEAD + 14

_TIMESTAMP_TYPE_LOG_APPEND = 0x08
_TRANSACTIONAL = 0x10
_CONTROL = 0x20
# KIP-534: with this bit set the base timestamp holds the delete horizon, not a record's time.
_DELETE_HORIZON = 0x40


@dataclass(frozen=True, slots=True)
class Found:
    """The first data record at or after the committed offset."""

    sample: TimestampSample
    next_offset: int


@dataclass(frozen=True, slots=True)
class NeedMoreBytes:
    """No complete batch holds a data record at or after ``next_offset``: read again with more.

    ``batch_size`` is the full size in bytes of the batch that was cut off (None when not even
    its first 12 bytes arrived, e.g. the broker sent nothing). ``gap_explained`` tells whether
    the offsets between the committed offset and ``next_offset`` are all transaction markers or
    aborted records (so they do not make the committed record "missing").
    """

    batch_size: int | None
    next_offset: int
    gap_explained: bool


@dataclass(frozen=True, slots=True)
class NoDataRecord:
    """The complete batches hold no data record at or after the committed offset (e.g. only
    transaction markers): read on from ``next_offset``."""

    next_offset: int
    gap_explained: bool


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The bytes could not be parsed (corrupt, unsupported format or codec). ``error`` never
    contains payload bytes."""

    error: str


RecordScan = Found | NeedMoreBytes | NoDataRecord | Unreadable


class _Unsupported(Exception):
    """Raised inside this module for bytes we cannot take a timestamp from."""


@dataclass(frozen=True, slots=True)
class _CutOff:
    """A batch whose end is missing from the bytes; ``size`` None when not even 12 bytes came."""

    size: int | None


@dataclass(slots=True)
class _Batch:
    base_offset: int
    last_offset: int
    magic: int
    attributes: int
    max_timestamp: int
    base_timestamp: int
    producer_id: int
    record_count: int
    view: memoryview

    @property
    def is_control(self) -> bool:
        return self.magic >= 2 and bool(self.attributes & _CONTROL)

    @property
    def is_transactional(self) -> bool:
        return self.magic >= 2 and bool(self.attributes & _TRANSACTIONAL)


def find_timestamp(
    records: bytes | bytearray | memoryview,
    committed: int,
    *,
    aborted: Sequence[tuple[int, int]] | None = None,
) -> RecordScan:
    """Scan the record bytes of one Fetch partition for the record at ``committed``.

    ``aborted`` is the partition's ``aborted_transactions`` list of (producer id, first offset)
    from a read_committed Fetch response; given, records of aborted transactions are skipped like
    transaction markers. None (read_uncommitted) treats them as ordinary records, which is what
    a read_uncommitted consumer sees too.

    Never raises on malformed input: that is an :class:`Unreadable` result.
    """
    try:
        return _scan(memoryview(records), committed, aborted)
    except _Unsupported as exc:
        return Unreadable(str(exc))
    # The codecs (gzip, cramjam) and aiokafka's parser raise an open set of exception types on
    # garbage; the contract here is "a result, never an exception". Only the type name is kept:
    # a message could quote payload bytes.
    except Exception as exc:
        return Unreadable(f"corrupt record data ({type(exc).__name__})")


def _scan(
    view: memoryview, committed: int, aborted: Sequence[tuple[int, int]] | None
) -> RecordScan:
    # Offsets in [committed, explained) are transaction markers or aborted records: a first data
    # record beyond them is not "missing". position: where a follow-up read has to start.
    explained = committed
    position = committed
    pending_aborts = deque(sorted(aborted or (), key=lambda entry: entry[1]))
    aborting: set[int] = set()
    progressed = False
    for batch in _batches(view):
        if isinstance(batch, _CutOff):
            return NeedMoreBytes(batch.size, position, explained >= position)
        # Same bookkeeping as the Java consumer: a producer's transaction is aborted from its
        # first offset up to its (abort) marker.
        while pending_aborts and pending_aborts[0][1] <= batch.last_offset:
            aborting.add(pending_aborts.popleft()[0])
        skipped_as_noise = False
        if batch.is_control:
            aborting.discard(batch.producer_id)
            skipped_as_noise = True
        elif aborted is not None and batch.is_transactional and batch.producer_id in aborting:
            skipped_as_noise = True
        if batch.last_offset < committed:
            continue
        position = max(position, batch.last_offset + 1)
        progressed = True
        if skipped_as_noise:
            if batch.base_offset <= explained:
                explained = max(explained, batch.last_offset + 1)
            continue
        if batch.record_count == 0:
            # Left behind by the cleaner to keep producer state: its records were removed.
            continue
        sample = _sample_batch(batch, committed, explained)
        if sample is not None:
            return Found(sample, sample.offset + 1)
    if not progressed:
        return NeedMoreBytes(None, position, explained >= position)
    return NoDataRecord(position, explained >= position)


def _batches(view: memoryview) -> Iterable[_Batch | _CutOff]:
    """The complete batches of ``view`` in order, then a :class:`_CutOff` if one was cut off."""
    pos = 0
    total = len(view)
    # Every batch consumes at least _LEGACY_MIN_SIZE bytes, so this loop is bounded by the input.
    while pos < total:
        if total - pos < _LOG_OVERHEAD:
            yield _CutOff(None)
            return
        _, length = _SIZE_PREFIX.unpack_from(view, pos)
        size = _LOG_OVERHEAD + length
        if size < _LEGACY_MIN_SIZE:
            raise _Unsupported(f"corrupt record data (batch length {length})")
        if total - pos > _MAGIC_POSITION and view[pos + _MAGIC_POSITION] not in (0, 1, 2):
            raise _Unsupported(f"unsupported record format (magic {view[pos + _MAGIC_POSITION]})")
        if pos + size > total:
            # Kafka cuts the last batch of a partition at the byte limit; normal, not an error.
            yield _CutOff(size)
            return
        yield _parse_header(view[pos : pos + size])
        pos += size


def _parse_header(view: memoryview) -> _Batch:
    magic = view[_MAGIC_POSITION]
    if magic == 2:
        if len(view) < _V2_HEADER.size:
            raise _Unsupported("corrupt record data (record batch shorter than its header)")
        (
            base_offset,
            _length,
            _epoch,
            _magic,
            _crc,
            attributes,
            last_delta,
            base_timestamp,
            max_timestamp,
            producer_id,
            _producer_epoch,
            _base_sequence,
            record_count,
        ) = _V2_HEADER.unpack_from(view)
        if last_delta < 0 or record_count < 0:
            raise _Unsupported("corrupt record data (negative record count)")
        return _Batch(
            base_offset=base_offset,
            last_offset=base_offset + last_delta,
            magic=magic,
            attributes=attributes,
            max_timestamp=max_timestamp,
            base_timestamp=base_timestamp,
            producer_id=producer_id,
            record_count=record_count,
            view=view,
        )
    if magic in (0, 1):
        # A legacy entry is one message (or one compressed wrapper whose offset is that of its
        # last inner message); its inner offsets are only known after decompression.
        (offset, _length) = _SIZE_PREFIX.unpack_from(view)
        return _Batch(
            base_offset=-1,
            last_offset=offset,
            magic=magic,
            attributes=0,
            max_timestamp=-1,
            base_timestamp=-1,
            producer_id=-1,
            record_count=1,
            view=view,
        )
    raise _Unsupported(f"unsupported record format (magic {magic})")


def _sample_batch(batch: _Batch, committed: int, explained: int) -> TimestampSample | None:
    """The sample from the first record at or after ``committed`` in ``batch``, if any."""
    if batch.magic < 2:
        return _sample_legacy(batch, committed, explained)
    parsed = DefaultRecordBatch(batch.view)
    if not parsed.validate_crc():
        raise _Unsupported(f"corrupt record batch at offset {batch.base_offset} (CRC mismatch)")
    log_append = bool(batch.attributes & _TIMESTAMP_TYPE_LOG_APPEND)
    # No record removed from the batch (count matches the offset span): the record at
    # max(committed, base) exists, and some timestamps are known from the header alone.
    dense = batch.record_count == batch.last_offset - batch.base_offset + 1
    if dense and log_append:
        offset = max(committed, batch.base_offset)
        return _sample(offset, batch.max_timestamp, missing=offset > explained)
    if dense and committed <= batch.base_offset and not batch.attributes & _DELETE_HORIZON:
        return _sample(batch.base_offset, batch.base_timestamp, batch.base_offset > explained)
    # Records come out one at a time: stop at the first one needed (record_count bounds it).
    for record in parsed:
        if record.offset >= committed:
            return _sample(record.offset, record.timestamp, record.offset > explained)
    return None


def _sample_legacy(batch: _Batch, committed: int, explained: int) -> TimestampSample | None:
    parsed = LegacyRecordBatch(batch.view, batch.magic)
    if not parsed.validate_crc():
        raise _Unsupported(f"corrupt message at offset {batch.last_offset} (CRC mismatch)")
    for record in parsed:
        if record.offset >= committed:
            if record.timestamp is None:
                raise _Unsupported("message format v0 carries no timestamps")
            return _sample(record.offset, record.timestamp, record.offset > explained)
    return None


def _sample(offset: int, timestamp_ms: int, missing: bool) -> TimestampSample:
    if timestamp_ms < 0:
        raise _Unsupported(f"record at offset {offset} has no timestamp")
    return TimestampSample(offset=offset, timestamp_ms=timestamp_ms, record_missing=missing)


__all__ = [
    "Found",
    "NeedMoreBytes",
    "NoDataRecord",
    "RecordScan",
    "Unreadable",
    "find_timestamp",
]
