"""The state of one offset's read across the sampler's passes: pure, no I/O, no asyncio.

Every offset asked for is a *job*. The sampler (:mod:`.timestamp_sampler`) reads in passes;
a pass reads each partition once, from the lowest ``read_from`` of its wanted jobs, and every
job of that partition is judged on those bytes. This module decides, for one job and one read,
what happens next; the sampler only sends requests, applies the cache effects a :class:`Step`
names and files the results::

                 +----------------------- next pass: read on ------------------------+
                 |   past markers  read_from := after them                  (a read) |
                 |   more bytes    read_from := the cut batch, size learned (a read) |
                 |   at the head   head := True, nothing came               (a read) |
                 |   starved       unchanged, budget spent on others        (a read) |
                 |   waits         unchanged, bytes did not reach it    (not a read) |
                 v                                                                   |
    sample() --> WANTED --admit()--> IN FLIGHT --advance()--+--> WANTED -------------+
                   |                     |                  +--> SAMPLED     record found
                   |                     |                  +--> END_OF_LOG  only markers
                   |                     |                  |                up to the end
                   |                     |                  +--> FAILED      request failed,
                   | reads == MAX_PASSES | partition not    |                error code,
                   | or batch known to   | read (no leader, |                unreadable, over
                   | be over the cap     | not answered)    |                the cap, nothing
                   v                     v                                   at the head
                 FAILED                FAILED

SAMPLED, END_OF_LOG and FAILED are terminal: a job reaches exactly one of them, once. Every
move back to WANTED but "waits" counts a read, and :func:`admit` fails a job that has had
:data:`MAX_PASSES` of them, so a job is settled within MAX_PASSES reads of its own. "Waits"
is free because the job is above its partition's lowest offset, and that lower job is using
up its own reads meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum

from klag_pipeline.kafka.errors import TOPIC_AUTHORIZATION_FAILED, error_name
from klag_pipeline.kafka.record_batches import (
    Found,
    NeedMoreBytes,
    NoDataRecord,
    RecordScan,
    Unreadable,
    find_timestamp,
)
from klag_pipeline.model import Failure, TimestampSample, TopicPartition

MAX_PASSES = 4
"""Reads per committed offset per call: the first read, a re-read with the learned batch size
(or at the head of a request), and continuations past transaction markers. Passes in which an
offset only waits for a lower one of its partition do not count."""

STAGE = "timestamps"


class State(Enum):
    """Where a job stands. IN FLIGHT is not stored: it is the time between :func:`admit` and
    :func:`advance` of one pass."""

    WANTED = "wanted"
    SAMPLED = "sampled"
    END_OF_LOG = "end of log"
    FAILED = "failed"


class Move(Enum):
    """The edge a :class:`Step` took, named as in the module diagram."""

    FOUND = "record found"
    CAUGHT_UP = "only markers up to the end of the log"
    PAST_MARKERS = "read on past markers"
    MORE_BYTES = "read again with the learned batch size"
    AT_HEAD = "read again at the head of a request"
    STARVED = "read again: the response's byte budget ran out first"
    WAITS = "wait for a read that reaches it"
    FAILED = "failed"


_MOVE_TARGET: Mapping[Move, State] = {
    Move.FOUND: State.SAMPLED,
    Move.CAUGHT_UP: State.END_OF_LOG,
    Move.FAILED: State.FAILED,
}


@dataclass(frozen=True, slots=True)
class Job:
    """One offset asked for, and where its next read starts."""

    tp: TopicPartition
    asked: int
    read_from: int
    # False once offsets between `asked` and `read_from` were skipped without being markers or
    # aborted records: then whatever is found is not the record at `asked`.
    gap_explained: bool = True
    head: bool = False
    reads: int = 0
    """Reads that started at ``read_from`` or before it for this job."""


@dataclass(frozen=True, slots=True)
class PartitionData:
    """One partition's part of a Fetch response."""

    error_code: int
    records: bytes
    aborted: tuple[tuple[int, int], ...]
    # The response used up its byte budget before this partition: empty says nothing about it.
    starved: bool
    # Where the log ends for this isolation level (high watermark, or last stable offset under
    # read_committed), as this response reports it; -1 when unknown.
    log_end: int = -1


Outcome = PartitionData | str
"""What one read of a partition gave: its data, or why there is none (the failure text)."""


@dataclass(frozen=True, slots=True)
class Step:
    """A job's move, and what the sampler must remember for later reads and calls."""

    move: Move
    result: Job | TimestampSample | Failure
    learned_size: int | None = None
    """The partition's batch size: the next read of it asks for at least that much."""
    oversized: tuple[int, int] | None = None
    """(offset, size): the batch at that offset is over the cap; it is not read again."""

    @property
    def state(self) -> State:
        return _MOVE_TARGET.get(self.move, State.WANTED)


def jobs_for(wanted: Mapping[TopicPartition, Iterable[int]]) -> list[Job]:
    """One WANTED job per distinct offset, in partition then offset order."""
    return [Job(tp, offset, offset) for tp in sorted(wanted) for offset in sorted(set(wanted[tp]))]


def admit(job: Job, known_oversized: int | None, cap: int) -> Failure | None:
    """At the start of a pass: the job's failure, or None when it goes in flight.

    ``known_oversized``: the size remembered for the batch at ``job.read_from``, if any.
    """
    if known_oversized is not None:
        return _oversized(job, known_oversized, cap)
    if job.reads >= MAX_PASSES:
        return failure(job, f"no timestamp after {MAX_PASSES} reads")
    return None


def read_offsets(runnable: Iterable[Job]) -> tuple[dict[TopicPartition, int], set[TopicPartition]]:
    """One read per partition per pass, from its lowest outstanding offset; and the partitions
    whose read must go at the head of a request (a job read there needs it)."""
    lowest: dict[TopicPartition, int] = {}
    jobs = list(runnable)
    for job in jobs:
        if job.read_from < lowest.get(job.tp, job.read_from + 1):
            lowest[job.tp] = job.read_from
    head_first = {job.tp for job in jobs if job.head and job.read_from == lowest[job.tp]}
    return lowest, head_first


def advance(job: Job, outcome: Outcome, *, read_at: int, cap: int, read_committed: bool) -> Step:
    """The job's move after its partition was read from ``read_at`` with ``outcome``."""
    if read_at != job.read_from:
        return _ride_along(job, outcome, cap=cap, read_committed=read_committed)
    step = _judge(job, outcome, cap=cap, read_committed=read_committed)
    if isinstance(step.result, Job):
        return replace(step, result=replace(step.result, reads=job.reads + 1))
    return step


def unread(job: Job, *, leaderless: bool) -> Failure:
    """A job whose partition got no outcome this pass."""
    return failure(job, "no leader known for the partition" if leaderless else "not read")


def failure(job: Job, error: str, *, code: int = 0) -> Failure:
    return Failure(
        stage=STAGE,
        target=f"{job.tp.topic}-{job.tp.partition}",
        error=f"offset {job.asked}: {error}",
        denied_topic=job.tp.topic if code == TOPIC_AUTHORIZATION_FAILED else None,
    )


def code_failure(code: int) -> str:
    """The failure text of a Kafka error code, named from Kafka's own table (aiokafka's stops
    near code 80 and calls the rest UNKNOWN). A code fails the offset for this cycle whether
    or not Kafka calls it retriable (``errors.is_retriable``): a retry within the call would
    most likely meet the same answer a pass later, and the next cycle reads it again anyway."""
    return f"{error_name(code)} (error code {code})"


def _failed(job: Job, outcome: Outcome) -> Step:
    """FAILED: the read failed (a message), or its partition answered an error code."""
    if isinstance(outcome, str):
        return Step(Move.FAILED, failure(job, outcome))
    return Step(
        Move.FAILED, failure(job, code_failure(outcome.error_code), code=outcome.error_code)
    )


def _ride_along(job: Job, outcome: Outcome, *, cap: int, read_committed: bool) -> Step:
    """A job above the offset its partition was read from: the sample if the bytes hold its
    record in a complete batch, else the job unchanged for a later pass. A read that failed
    fails it too: another read of the partition this cycle would meet the same timeout or
    error, one pass after the other."""
    if isinstance(outcome, str) or outcome.error_code:
        return _failed(job, outcome)
    if len(outcome.records) > cap:
        return Step(Move.WAITS, job)
    scan = _scan(outcome, job.read_from, read_committed)
    if not isinstance(scan, Found):
        return _caught_up(job, scan, outcome) or Step(Move.WAITS, job)
    return Step(Move.FOUND, _found(job, scan))


def _judge(job: Job, outcome: Outcome, *, cap: int, read_committed: bool) -> Step:
    """A job read from its own ``read_from``; a WANTED result still has the old read count."""
    if isinstance(outcome, str) or outcome.error_code:
        return _failed(job, outcome)
    if len(outcome.records) > cap:
        # Only the head partition of a request can get more than it asked for: Kafka hands
        # it its whole first batch. The cap is a hard limit, so the bytes are not read.
        size = len(outcome.records)
        return Step(Move.FAILED, _oversized(job, size, cap), oversized=(job.read_from, size))
    scan = _scan(outcome, job.read_from, read_committed)
    if isinstance(scan, Found):
        return Step(Move.FOUND, _found(job, scan))
    if isinstance(scan, Unreadable):
        return Step(Move.FAILED, failure(job, scan.error))
    caught_up = _caught_up(job, scan, outcome)
    if caught_up is not None:
        return caught_up
    explained = job.gap_explained and scan.gap_explained
    if isinstance(scan, NoDataRecord):
        return Step(Move.PAST_MARKERS, Job(job.tp, job.asked, scan.next_offset, explained))
    if scan.batch_size is not None:
        if scan.batch_size > cap:
            return Step(
                Move.FAILED,
                _oversized(job, scan.batch_size, cap),
                oversized=(scan.next_offset, scan.batch_size),
            )
        return Step(
            Move.MORE_BYTES,
            Job(job.tp, job.asked, scan.next_offset, explained),
            learned_size=scan.batch_size,
        )
    if outcome.starved:
        return Step(Move.STARVED, job)
    if job.head:
        # The head partition gets its first batch whatever its size: nothing is there
        # (e.g. above the last stable offset under read_committed).
        return Step(Move.FAILED, failure(job, "no records returned"))
    return Step(Move.AT_HEAD, Job(job.tp, job.asked, scan.next_offset, explained, head=True))


def _scan(outcome: PartitionData, read_from: int, read_committed: bool) -> RecordScan:
    aborted = outcome.aborted if read_committed else None
    return find_timestamp(outcome.records, read_from, aborted=aborted)


def _found(job: Job, scan: Found) -> TimestampSample:
    return scan.sample if job.gap_explained else replace(scan.sample, record_missing=True)


def _caught_up(job: Job, scan: RecordScan, outcome: PartitionData) -> Step | None:
    """The end-of-log sample when nothing but transaction markers (and, under read_committed,
    aborted records) lies between the offset asked for and the end of the log: a transactional
    consumer that read everything commits the offset of the trailing marker, and it is caught up
    in time although ``high - committed`` is not 0. A gap that is not all markers (records the
    cleaner removed) is still the end of the log, flagged as a missing record."""
    if not isinstance(scan, NoDataRecord | NeedMoreBytes) or outcome.log_end < 0:
        return None
    if isinstance(scan, NeedMoreBytes) and scan.batch_size is not None:
        return None  # a batch was cut off: there is more to read
    if max(scan.next_offset, job.read_from) < outcome.log_end:
        return None
    explained = job.gap_explained and scan.gap_explained
    sample = TimestampSample(
        offset=outcome.log_end, timestamp_ms=0, record_missing=not explained, end_of_log=True
    )
    return Step(Move.CAUGHT_UP, sample)


def _oversized(job: Job, size: int, cap: int) -> Failure:
    return failure(job, f"batch larger than max_bytes_per_partition ({size} > {cap} bytes)")


__all__ = [
    "MAX_PASSES",
    "STAGE",
    "Job",
    "Move",
    "Outcome",
    "PartitionData",
    "State",
    "Step",
    "admit",
    "advance",
    "code_failure",
    "failure",
    "jobs_for",
    "read_offsets",
    "unread",
]
